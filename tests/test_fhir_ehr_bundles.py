"""Whole EHR Bundles, minimum necessary, over real HTTP: every valid R4 resource is taken, the kept types are
stored, every other one is validated and held back (an information outcome naming it, nothing stored), and
references to what is held back are removed from the stored versions, each removal reported and audited.
Generated Synthea-shaped Bundles always run; the Synthea samples of ../shared in addition (`needs_shared`)."""

import json
import uuid
from pathlib import Path

import pytest
from sqlalchemy import text

from crf_support import day, enrol, path, save
from ehr_bundles import expected_retention, synthea_shaped
from ecrf.fhir.validation import WRITABLE_TYPES
from fhir_builders import FHIR_JSON, lab, patient, post, urn
from samples import needs_shared
from synthea_shaped import patient_bundle, resources_of
from tests.conftest import running_server

SAMPLES = Path(__file__).resolve().parent.parent.parent / "shared" / "fhir-samples" / "synthea"
PATIENT_FILES = (
    sorted(p for p in SAMPLES.glob("*.json") if not p.name.startswith(("hospital", "practitioner")))
    if SAMPLES.is_dir()
    else []
)
PROVIDER_FILES = sorted(SAMPLES.glob("*Information*.json")) if SAMPLES.is_dir() else []


@pytest.fixture(scope="module", params=["parsed whole", "streamed"])
def server(request, server):
    """Bundles parsed whole, and read entry by entry as large ones are (ECRF_STREAM_BUNDLE_BYTES=0)."""
    if request.param == "parsed whole":
        yield server
        return
    with running_server(server.settings.model_copy(update={"stream_bundle_bytes": 0})) as streaming:
        yield streaming


def _push(http, body):
    response = http.post("/fhir", content=json.dumps(body), headers=FHIR_JSON)
    assert response.status_code == 200, response.text[:2000]
    return response.json()


def _reported(reply) -> tuple[dict[int, str], set[tuple[int, str]], dict[int, list[str]]]:
    """What the answer says: held-back entries (index -> type, from their outcome), removed references
    (kept entry index, FHIRPath) and, per held-back entry, the removals of references to it."""
    held, removed, referring = {}, set(), {}
    for index, entry in enumerate(reply["entry"]):
        outcome = entry["response"].get("outcome")
        if outcome is None:
            continue
        issues = outcome["issue"]
        assert all(i["severity"] == "information" for i in issues), (index, issues)
        if "location" not in entry["response"]:  # held back: its first issue names the type
            lead = issues[0]
            assert entry["response"]["status"] == "200 OK" and lead["code"] == "informational"
            assert lead["expression"] == [f"Bundle.entry[{index}].resource"]
            held[index] = lead["diagnostics"].split(" is not retained")[0]
            assert "nothing of it was stored" in lead["diagnostics"]
            referring[index] = [i["expression"][0] for i in issues[1:]]
        else:
            removed |= {(index, i["expression"][0]) for i in issues}
    return held, removed, referring


def _check_exact(body, reply):
    expected_held, expected_removed = expected_retention(body, WRITABLE_TYPES)
    held, removed, referring = _reported(reply)
    assert held == expected_held
    assert removed == expected_removed
    statuses = [entry["response"]["status"] for entry in reply["entry"]]
    kept = [i for i in range(len(statuses)) if i not in expected_held]
    assert all(statuses[i].startswith(("201", "200")) and "location" in reply["entry"][i]["response"] for i in kept)
    urls = {entry.get("fullUrl"): index for index, entry in enumerate(body["entry"])}
    for index, paths in referring.items():  # each removal is also listed in the outcome of the entry it named
        names = body["entry"][index].get("fullUrl")
        expected = sorted(p for (i, p) in expected_removed if _reference_at(body, i, p) == names)
        assert sorted(paths) == expected, index
    assert urls  # fullUrls were there to resolve


def _reference_at(body, index, fhirpath):
    node = body
    for part in fhirpath.split(".")[1:-1]:
        name, _, rest = part.partition("[")
        node = node[name]
        if rest:
            node = node[int(rest.rstrip("]"))]
    return node["reference"]


def _stored(http, reply, index):
    location = reply["entry"][index]["response"]["location"].split("/_history/")[0]
    return http.get(f"/fhir/{location}").json()


def _audit(server, action: str, since: int):
    with server.runtime.engine.connect() as connection:
        return connection.execute(
            text(
                "SELECT action, resource, reason FROM audit_entry WHERE action = :action AND seq > :since ORDER BY seq"
            ),
            {"action": action, "since": since},
        ).all()


def _last_seq(server) -> int:
    with server.runtime.engine.connect() as connection:
        return connection.execute(text("SELECT coalesce(max(seq), 0) FROM audit_entry")).scalar_one()


@pytest.mark.parametrize("kind", ["transaction", "batch"])
def test_a_synthea_shaped_bundle_goes_in_whole_keeping_the_study_types(server, kind):
    body = synthea_shaped(uuid.uuid4().hex[:12], ["2026-01-05", "2026-02-09"], kind=kind)
    since = _last_seq(server)
    with server.client("ehr", "S01", sub=f"shaped-{kind}") as http:
        reply = _push(http, body)
        _check_exact(body, reply)
        types = [entry["resource"]["resourceType"] for entry in body["entry"]]
        encounter = _stored(http, reply, types.index("Encounter"))
        report = _stored(http, reply, types.index("DiagnosticReport"))
        request = _stored(http, reply, types.index("MedicationRequest"))
        observation = _stored(http, reply, types.index("Observation"))
        assert "serviceProvider" not in encounter and "participant" not in encounter  # removed, nothing left empty
        assert report["performer"] == [{"display": "Dr. Shaped"}]  # the display stays, the reference goes
        assert "requester" not in request and request["medicationReference"]["reference"].startswith("Medication/")
        assert observation["encounter"]["reference"] == f"Encounter/{encounter['id']}"
        for resource_type in ("Claim", "ExplanationOfBenefit", "CareTeam", "Provenance", "ImagingStudy"):
            assert http.get(f"/fhir/{resource_type}").status_code == 404  # not a type of this server at all
    not_retained = [row.reason for row in _audit(server, "not-retained", since)]
    held = expected_retention(body, WRITABLE_TYPES)[0]
    assert len(not_retained) == (1 if kind == "transaction" else len(held))  # one per write: the whole, or each entry
    for resource_type in ("Claim", "ExplanationOfBenefit", "CareTeam", "Provenance", "ImagingStudy"):
        assert resource_type in " ".join(not_retained)
    removals = _audit(server, "references-removed", since)
    assert {row.resource for row in removals} == {
        entry["response"]["location"].split("/_history/")[0]
        for entry in reply["entry"]
        if "location" in entry["response"] and "outcome" in entry["response"]
    }
    assert any("serviceProvider" in row.reason and "Organization?identifier=" in row.reason for row in removals)


def test_an_enrolled_patients_labs_from_an_ehr_bundle_land_in_the_forms(server):
    with server.client("investigator", "S01") as http:
        subject = enrol(http)
        assert save(http, subject["id"], "surgery").status_code == 201  # day 0 of the visit windows
    body = synthea_shaped(subject["mrn"], [day(21), day(30)])
    with server.client("ehr", "S01") as http:
        reply = _push(http, body)
    assert reply["entry"][0]["response"]["location"].startswith(f"Patient/{subject['patient_id']}/")
    with server.client("monitor", "S01") as http:
        scr = http.get(path(subject["id"], "labs", "SCR")).json()
        m1 = http.get(path(subject["id"], "labs", "M1")).json()
    assert scr["items"]["hemoglobin"]["entered"] == {"value": 13.2, "unit": "g/dL"}
    assert scr["items"]["hemoglobin"]["source"] == "fhir" and scr["items"]["alt"]["value"] == 31
    assert m1["items"]["platelets"]["entered"] == {"value": 211, "unit": "10*3/uL"}


def test_a_batch_entry_referring_to_a_refused_entry_says_so(server):
    person, encounter_url, later_url = urn(), urn(), urn()
    body = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            post(patient(), person),
            post(
                {
                    "resourceType": "Encounter",
                    "status": "not-a-status",
                    "class": {"code": "AMB"},
                    "subject": {"reference": person},
                },
                encounter_url,
            ),
            post({**lab(person, "718-7", 12.0, "g/dL"), "encounter": {"reference": encounter_url}}),
            post({**lab(person, "718-7", 12.1, "g/dL"), "encounter": {"reference": later_url}}),
            post(
                {
                    "resourceType": "Encounter",
                    "status": "finished",
                    "class": {"code": "AMB"},
                    "subject": {"reference": person},
                },
                later_url,
            ),
        ],
    }
    with server.client("ehr", "S01") as http:
        reply = _push(http, body)
    statuses = [entry["response"]["status"].split()[0] for entry in reply["entry"]]
    assert statuses == ["201", "400", "422", "422", "201"]
    refused = reply["entry"][2]["response"]["outcome"]["issue"][0]
    assert "Bundle.entry[1], which was refused (400:" in refused["diagnostics"]
    assert refused["expression"] == ["Bundle.entry[2].resource.encounter.reference"]
    later = reply["entry"][3]["response"]["outcome"]["issue"][0]["diagnostics"]
    assert "Bundle.entry[4], which a batch writes after this entry" in later


def test_a_transaction_with_an_invalid_resource_of_a_type_not_kept_fails_whole(server):
    body = synthea_shaped(uuid.uuid4().hex[:12], ["2026-01-05"])
    claim = next(i for i, e in enumerate(body["entry"]) if e["resource"]["resourceType"] == "Claim")
    body["entry"][claim]["resource"]["use"] = 7
    with server.client("ehr", "S01") as http:
        response = http.post("/fhir", json=body, headers=FHIR_JSON)
        searched = http.get(
            "/fhir/Patient", params={"identifier": "|".join(body["entry"][0]["resource"]["identifier"][1].values())}
        ).json()
    assert response.status_code == 400
    assert [i["expression"][0] for i in response.json()["issue"]] == [f"Bundle.entry[{claim}].resource.use"]
    assert searched["total"] == 0


def _cases(files: list[Path], generated: list[tuple[str, dict]]) -> list:
    """Generated Bundles always; the shared files in addition (`needs_shared`: skipped without ../shared, a
    failure in CI), one visible needs_shared case standing for them when the directory is not there."""
    cases = [pytest.param(("generated", body), id=f"generated-{name}") for name, body in generated]
    cases += [pytest.param(("shared", file), id=f"shared-{file.name}", marks=needs_shared) for file in files]
    if not files:
        cases.append(pytest.param(None, id="shared", marks=needs_shared))
    return cases


def _body(case) -> dict:
    kind, source = case
    return json.loads(source.read_text()) if kind == "shared" else json.loads(json.dumps(source))


def _provider_bundle(seed: int) -> dict:
    """Shaped like Synthea's hospitalInformation/practitionerInformation files: a batch of conditional
    creates of the Organization and Practitioner a patient's record refers to."""
    entries = []
    for resource in resources_of(patient_bundle(seed), None):
        if resource["resourceType"] in ("Organization", "Practitioner"):
            entries.append(
                {
                    "fullUrl": f"urn:uuid:{resource['id']}",
                    "resource": resource,
                    "request": {
                        "method": "POST",
                        "url": resource["resourceType"],
                        "ifNoneExist": f"_id={resource['id']}",
                    },
                }
            )
    return {"resourceType": "Bundle", "type": "batch", "entry": entries}


@pytest.mark.parametrize("case", _cases(PATIENT_FILES, [(f"seed{seed}", patient_bundle(seed)) for seed in (0, 1)]))
@pytest.mark.parametrize("kind", ["transaction", "batch"])
def test_every_synthea_sample_goes_in_in_one_push(server, kind, case):
    if server.settings.stream_bundle_bytes == 0 and kind == "batch":
        pytest.skip("streamed, the transaction run reads the samples entry by entry; the batch adds only time")
    body = _body(case)
    body["type"] = kind
    with server.client("ehr", "S01", sub=f"synthea-{kind}-{uuid.uuid4().hex[:8]}") as http:
        reply = _push(http, json.loads(json.dumps(body)))
    _check_exact(body, reply)


@pytest.mark.parametrize("case", _cases(PROVIDER_FILES, [("providers", _provider_bundle(2))]))
def test_the_synthea_provider_bundles_go_in_and_nothing_of_them_is_kept(server, case):
    body = _body(case)
    assert body["entry"]
    for kind in ("batch",) if server.settings.stream_bundle_bytes == 0 else ("batch", "transaction"):
        with server.client("ehr", "S01") as http:
            reply = _push(http, {**body, "type": kind})
        held, removed, _ = _reported(reply)
        assert held == {i: e["resource"]["resourceType"] for i, e in enumerate(body["entry"])} and not removed
