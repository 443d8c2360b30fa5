"""Bulk Data beyond the basics (issue 13): Patient-level export, POST kick-off at every level, deletions of
`_since` exports in the manifest's `deleted` array, `_typeFilter`, `_elements`, `patient`, lenient handling
with its OperationOutcome in the manifest's `error` array, and `_since` in the future."""

from datetime import UTC, datetime, timedelta

import orjson
import pytest

from tests.fhir_builders import FHIR_JSON, lab
from tests.test_export_protocol import ASYNC, STUDY, download, export, export_settings, load_subjects, wait_for_manifest
from testkit.databases import fresh_database
from tests.conftest import running_server

LEVELS = ["/fhir/$export", "/fhir/Patient/$export", f"/fhir/Group/{STUDY}/$export"]
HEMOGLOBIN = "718-7"


@pytest.fixture(scope="module")
def loaded(database_url, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("export-bulk")
    with fresh_database(database_url, tmp_path) as url, running_server(export_settings(url, tmp_path)) as server:
        load_subjects(server, 3, "S01")
        yield server


def post_kick_off(http, path: str, parameters: list[dict], prefer: str = "respond-async"):
    return http.post(
        path,
        json={"resourceType": "Parameters", "parameter": parameters},
        headers={**ASYNC, "Prefer": prefer, "Content-Type": "application/fhir+json"},
    )


def fetch(http, entry: dict) -> list[dict]:
    response = http.get(entry["url"])
    assert response.status_code == 200, response.text
    return [orjson.loads(line) for line in response.content.splitlines()]


def test_patient_level_export_is_the_study_patients_de_identified(loaded):
    with loaded.client("sponsor", sub="sponsor-patient") as http:
        files = download(http, export(http, "/fhir/Patient/$export"))
    assert len(files["Patient"]) == 3
    assert all(p["meta"]["security"][0]["code"] == "PSEUDED" and "identifier" not in p for p in files["Patient"])


@pytest.mark.parametrize("path", LEVELS)
def test_post_kick_off_takes_a_parameters_body_at_every_level(loaded, path):
    with loaded.client("sponsor", sub="sponsor-post") as http:
        response = post_kick_off(
            http,
            path,
            [
                {"name": "_type", "valueString": "Patient"},
                {"name": "_outputFormat", "valueString": "application/fhir+ndjson"},
            ],
        )
        assert response.status_code == 202, response.text
        manifest = wait_for_manifest(http, response.headers["Content-Location"])
    assert [entry["type"] for entry in manifest["output"]] == ["Patient"]
    assert manifest["error"] == [] and manifest["deleted"] == []


def test_since_exports_list_deletions_in_the_deleted_array(loaded):
    with loaded.client("data_manager", sub="dm-deleted") as http, loaded.client("investigator", "S01") as site:
        patients = download(http, export(http, "/fhir/$export", _type="Patient", deidentify="false"))["Patient"]
        created = site.post(
            "/fhir/Observation", json=lab(f"Patient/{patients[0]['id']}", HEMOGLOBIN, 12.5, "g/dL"), headers=FHIR_JSON
        )
        assert created.status_code == 201, created.text
        observation_id = created.json()["id"]
        mark = export(http, "/fhir/$export", _type="Patient")["transactionTime"]
        assert site.delete(f"/fhir/Observation/{observation_id}").status_code in (200, 204)
        identified = export(http, "/fhir/$export", _type="Observation", _since=mark, deidentify="false")
        pseudonymised = export(http, "/fhir/$export", _type="Observation", _since=mark)
        [entry] = identified["deleted"]
        [bundle] = fetch(http, entry)
        [pseudo_entry] = pseudonymised["deleted"]
        [pseudo_bundle] = fetch(http, pseudo_entry)
    assert entry["type"] == "Bundle" and bundle["type"] == "transaction"
    assert bundle["entry"] == [{"request": {"method": "DELETE", "url": f"Observation/{observation_id}"}}]
    [pseudo] = pseudo_bundle["entry"]
    assert pseudo["request"]["method"] == "DELETE" and pseudo["request"]["url"].startswith("Observation/")
    assert observation_id not in pseudo["request"]["url"]
    assert identified["output"] == []  # the deleted Observation is not exported as current data


def test_kick_off_needs_an_accept_header_and_downloads_need_the_scope(loaded):
    with loaded.client("sponsor") as http:
        assert http.get("/fhir/$export", headers={"Prefer": "respond-async", "Accept": ""}).status_code == 400
        assert (
            http.get("/fhir/$export", headers={"Prefer": "respond-async", "Accept": "application/json"}).status_code
            == 400
        )
        manifest = export(http, "/fhir/$export", _type="Patient")
    narrow = loaded.token("sponsor", scopes=["system/Observation.rs"])
    with loaded.client() as http:
        url = manifest["output"][0]["url"]
        assert http.get(url, headers={"Authorization": f"Bearer {narrow}"}).status_code in (403, 404)


def test_since_in_the_future_is_refused(loaded):
    future = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    with loaded.client("sponsor") as http:
        response = http.get("/fhir/$export", params={"_since": future}, headers=ASYNC)
    assert response.status_code == 400 and "future" in response.text


def test_type_filter_selects_by_any_supported_search(loaded):
    with loaded.client("data_manager", sub="dm-filter") as http:
        everything = download(http, export(http, "/fhir/$export", _type="Observation", deidentify="false"))[
            "Observation"
        ]
        filtered = export(
            http,
            "/fhir/$export",
            _type="Observation",
            deidentify="false",
            _typeFilter=f"Observation?code=http://loinc.org|{HEMOGLOBIN}",
        )
        kept = download(http, filtered).get("Observation", [])
    codes = lambda o: {c.get("code") for c in o["code"]["coding"]}  # noqa: E731
    expected = [o for o in everything if HEMOGLOBIN in codes(o)]
    assert kept and len(kept) == len(expected) < len(everything)
    assert all(HEMOGLOBIN in codes(o) for o in kept)


def test_type_filter_on_identifying_parameters_is_refused_for_de_identified_exports(loaded):
    with loaded.client("sponsor", sub="sponsor-filter") as http:
        for criteria in ("Patient?identifier=x", "Observation?date=ge2026-01-01", "Patient?_id=abc"):
            response = http.get("/fhir/$export", params={"_typeFilter": criteria}, headers=ASYNC)
            assert response.status_code == 400, criteria
        lenient = http.get(
            "/fhir/$export",
            params={"_type": "Patient", "_typeFilter": "Patient?identifier=x"},
            headers={**ASYNC, "Prefer": "respond-async, handling=lenient"},
        )
        assert lenient.status_code == 202
        manifest = wait_for_manifest(http, lenient.headers["Content-Location"])
        assert len(download(http, manifest)["Patient"]) == 3  # the filter was left out, not applied
        [error] = manifest["error"]
        [outcome] = fetch(http, error)
    assert error["type"] == "OperationOutcome" and outcome["resourceType"] == "OperationOutcome"
    assert "identifier" in outcome["issue"][0]["diagnostics"] and outcome["issue"][0]["severity"] == "warning"


def test_elements_keep_what_is_asked_and_tag_the_subset(loaded):
    with loaded.client("sponsor", sub="sponsor-elements") as http:
        files = download(http, export(http, "/fhir/Patient/$export", _type="Patient", _elements="Patient.gender"))
    for resource in files["Patient"]:
        assert set(resource) <= {"resourceType", "id", "meta", "gender"}
        assert {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"} in resource[
            "meta"
        ]["tag"]


@pytest.mark.parametrize("path", LEVELS[1:])
def test_patient_parameter_narrows_patient_and_group_exports(loaded, path):
    with loaded.client("sponsor", sub="sponsor-patients") as http:
        patients = download(http, export(http, "/fhir/Patient/$export", _type="Patient"))["Patient"]
        chosen = patients[1]["id"]  # the id the sponsor sees: a pseudonym
        response = post_kick_off(
            http, path, [{"name": "patient", "valueReference": {"reference": f"Patient/{chosen}"}}]
        )
        assert response.status_code == 202, response.text
        files = download(http, wait_for_manifest(http, response.headers["Content-Location"]))
        assert [p["id"] for p in files["Patient"]] == [chosen]
        assert all(o["subject"]["reference"] == f"Patient/{chosen}" for o in files.get("Observation", []))
        unknown = post_kick_off(http, path, [{"name": "patient", "valueReference": {"reference": "Patient/nobody"}}])
        assert unknown.status_code == 202  # as an unknown id in a search: nothing exported, the manifest says why
        manifest = wait_for_manifest(http, unknown.headers["Content-Location"])
        assert manifest["output"] == []
        [outcome] = fetch(http, manifest["error"][0])
        assert "Patient/nobody" in outcome["issue"][0]["diagnostics"]
        system = post_kick_off(
            http, "/fhir/$export", [{"name": "patient", "valueReference": {"reference": f"Patient/{chosen}"}}]
        )
        assert system.status_code == 400


def test_lenient_handling_reports_what_it_left_out(loaded):
    with loaded.client("sponsor", sub="sponsor-lenient") as http:
        strict = http.get("/fhir/$export", params={"includeAssociatedData": "_customSet"}, headers=ASYNC)
        assert strict.status_code == 400
        provenance = http.get(
            "/fhir/$export",
            params={"_type": "Patient", "includeAssociatedData": "LatestProvenanceResources"},
            headers=ASYNC,
        )
        assert provenance.status_code == 202  # accepted: no Provenance is kept, so none is associated (and said so)
        [[note]] = [
            o["issue"] for o in fetch(http, wait_for_manifest(http, provenance.headers["Content-Location"])["error"][0])
        ]
        assert "Provenance" in note["diagnostics"]
        response = post_kick_off(
            http,
            f"/fhir/Group/{STUDY}/$export",
            [{"name": "_type", "valueString": "Patient"}, {"name": "includeAssociatedData", "valueCode": "_customSet"}],
            prefer="respond-async, handling=lenient",
        )
        assert response.status_code == 202, response.text
        manifest = wait_for_manifest(http, response.headers["Content-Location"])
        [error] = manifest["error"]
        [outcome] = fetch(http, error)
    assert "includeAssociatedData=_customSet" in outcome["issue"][0]["diagnostics"]
    assert [entry["type"] for entry in manifest["output"]] == ["Patient"]


def test_capability_statement_names_the_bulk_operations(loaded):
    with loaded.client() as http:
        metadata = http.get("/fhir/metadata").json()
    assert "http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data" in metadata["instantiates"]
    system = {op["name"]: op["definition"] for op in metadata["rest"][0]["operation"]}
    assert system["export"] == "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export"
    by_type = {
        r["type"]: {op["name"]: op["definition"] for op in r.get("operation", [])}
        for r in metadata["rest"][0]["resource"]
    }
    assert by_type["Patient"]["patient-export"] == "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export"
    assert by_type["Group"]["group-export"] == "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export"
