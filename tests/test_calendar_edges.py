"""Dates at the calendar's edges (issue 17, findings 2 and 9), both doors, both databases.

Every date, dateTime and instant written must lie within 0002-01-01..9998-12-31 in every time zone, so
that a per-subject de-identification shift (a year at most) can never leave the calendar: outside it a
write is 400 naming the element; a search with such a date is 400, never 500.
"""

import uuid

import orjson
import pytest
from sqlalchemy import text

from ecrf.export.bulk import deidentifier
from tests.conftest import running_server
from tests.fhir_builders import FHIR_JSON, bundle, lab, patient, post, urn
from tests.tamper_support import tampering
from tests.test_export_protocol import download, export, export_settings, load_subjects
from testkit.databases import fresh_database

EDGES = [
    "0001-01-01T00:00:00+14:00",
    "9999-12-31T23:59:59-14:00",
    "0001-01-01",
    "9999-12-31",
    "0001",
    "9999-12",
    "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59.999Z",
]


@pytest.mark.parametrize("when", EDGES)
def test_a_write_with_a_date_off_the_calendar_is_400_at_its_element(server, when):
    patient_url = urn()
    observation = lab(patient_url, "718-7", 13.1, "g/dL", when)
    with server.client("ehr", "S01") as http:
        response = http.post("/fhir", json=bundle([post(patient(), patient_url), post(observation)]), headers=FHIR_JSON)
        assert response.status_code == 400, response.text
        assert "Bundle.entry[1].resource.effectiveDateTime" in response.text
        assert "0002-01-01" in response.text
        person = patient()
        person["birthDate"] = when[:10] if len(when) >= 10 else when
        response = http.post("/fhir/Patient", json=person, headers=FHIR_JSON)
        assert response.status_code == 400, response.text
        assert "Patient.birthDate" in response.text


@pytest.mark.parametrize("when", ["0002-01-01", "9998-12-31T23:59:59+14:00", "0002-01-01T00:00:00-14:00"])
def test_the_calendar_inside_the_bounds_is_accepted(server, when):
    patient_url = urn()
    with server.client("ehr", "S01") as http:
        response = http.post(
            "/fhir",
            json=bundle([post(patient(), patient_url), post(lab(patient_url, "718-7", 13.1, "g/dL", when))]),
            headers=FHIR_JSON,
        )
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "query",
    [
        {"date": "9999-12-31"},
        {"date": "ap9999-12-31"},
        {"date": "gt9999-12-31"},
        {"date": "le0001-01-01"},
        {"date": "9999"},
        {"date": "eq0001"},
        {"date": "sa9999-12-31T23:59:59-14:00"},
        {"_lastUpdated": "gt9999-12-31"},
        {"_lastUpdated": "ap9999-12-31"},
        {"_lastUpdated": "lt0001-01-01T00:00:00+14:00"},
        {"date": "ge99999-01-01"},
        {"date": "2026-13-01"},
    ],
)
def test_a_search_with_a_date_off_the_calendar_is_400(server, query):
    with server.client("ehr", "S01") as http:
        response = http.get("/fhir/Observation", params=query)
    assert response.status_code == 400, response.text
    assert response.json()["resourceType"] == "OperationOutcome"


def test_searches_at_the_bounds_still_answer(server):
    with server.client("ehr", "S01") as http:
        for query in (
            {"date": "ge0002-01-01"},
            {"date": "le9998-12-31"},
            {"_lastUpdated": "lt9998-12-31"},
            {"date": "ap9998-12-31"},
        ):
            response = http.get("/fhir/Observation", params=query)
            assert response.status_code == 200, (query, response.text)


def test_the_other_door_refuses_a_date_off_the_calendar_too(server):
    """The store itself refuses (every door): a consent date of 0001-01-01 through /api/v1."""
    with server.client("investigator", "S01") as http:
        response = http.post(
            "/api/v1/subjects", json={"site": "S01", "mrn": uuid.uuid4().hex[:10], "consent_date": "0001-01-01"}
        )
    assert response.status_code == 400, response.text
    assert response.json()["errors"][0]["rule"] == "calendar"
    assert response.json()["errors"][0]["item"] == "ResearchSubject.period.start"
    assert "0001-01-01" in response.text


@pytest.fixture
def planted(database_url, tmp_path):
    """An export database with subjects, one of whose Observations is altered in place (as a tamperer or an
    older version of this server could have left it) to hold dates the de-identification cannot shift."""
    with fresh_database(database_url, tmp_path) as url, running_server(export_settings(url, tmp_path)) as server:
        subjects = load_subjects(server, 2, "S01")
        with tampering(server.runtime.engine) as connection:
            pk, resource_id, content = connection.execute(
                text(
                    "SELECT v.pk, v.resource_id, v.content FROM resource_head h JOIN resource_version v "
                    "ON v.pk = h.version_pk WHERE h.resource_type = 'Observation' AND h.patient_id = :patient "
                    "ORDER BY v.resource_id LIMIT 1"
                ),
                {"patient": subjects[0]["id"]},
            ).one()
            observation = orjson.loads(content)
            observation.pop("effectiveDateTime", None)
            observation["effectivePeriod"] = {"start": "0001-01-01", "end": "9999-12-31"}  # one overflows either way
            connection.execute(
                text("UPDATE resource_version SET content = :content WHERE pk = :pk"),
                {"content": orjson.dumps(observation).decode(), "pk": pk},
            )
        yield server, resource_id


def test_one_record_never_stops_an_export_for_everyone(planted):
    server, resource_id = planted
    deid = deidentifier(server.runtime)
    with server.client("data_manager") as http:
        identified = download(http, export(http, deidentify="false", _type="Observation"))
        everything = len(identified["Observation"])
    with server.client("sponsor") as http:
        manifest = export(http, _type="Observation")
        files = download(http, manifest)
        assert len(files["Observation"]) == everything - 1
        pseudonym = deid.pseudonym(resource_id)
        assert pseudonym not in {observation["id"] for observation in files["Observation"]}
        assert len(manifest["error"]) == 1 and manifest["error"][0]["type"] == "OperationOutcome"
        assert manifest["error"][0]["count"] == 1
        response = http.get(manifest["error"][0]["url"])
        assert response.status_code == 200
        outcomes = [orjson.loads(line) for line in response.content.splitlines()]
    assert len(outcomes) == 1 and outcomes[0]["resourceType"] == "OperationOutcome"
    diagnostics = outcomes[0]["issue"][0]["diagnostics"]
    assert f"Observation/{pseudonym}" in diagnostics and "shifted" in diagnostics
    assert resource_id not in diagnostics and "0001" not in diagnostics  # the source id and the value stay home
