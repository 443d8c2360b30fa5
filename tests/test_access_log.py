"""Access to identified data is itself audited: who saw which subject's identifiers, ids only, for admins."""

import time
from contextlib import contextmanager
import uuid
from datetime import UTC, datetime, timedelta

import orjson
from sqlalchemy import text

from tests.crf_support import enrol, save
from tests.fhir_builders import FHIR_JSON, MRN, patient

STUDY = "NCT04163237"
ASYNC = {"Prefer": "respond-async", "Accept": "application/fhir+json"}


def _sub(role: str) -> str:
    return f"{role}-{uuid.uuid4().hex[:8]}"


def events(server, **params) -> list[dict]:
    with server.client("admin") as admin:
        response = admin.get("/api/v1/access-log", params={"limit": 500, **params})
    assert response.status_code == 200, response.text
    return response.json()["items"]


def _named_patient(site: str = "S01") -> dict:
    return {
        **patient(site=site),
        "name": [{"family": "Quixotewright", "given": ["Rosalind"]}],
        "telecom": [{"system": "phone", "value": "+44 20 7946 0000"}],
    }


def test_reading_a_patient_through_fhir_names_the_reader_and_the_patient(server):
    with server.client("ehr", "S01") as http:
        created = http.post("/fhir/Patient", json=_named_patient(), headers=FHIR_JSON).json()
    reader = _sub("investigator")
    with server.client("investigator", "S01", sub=reader) as http:
        assert http.get(f"/fhir/Patient/{created['id']}").status_code == 200
        assert http.get(f"/fhir/Patient/{created['id']}/_history/1").status_code == 200
        assert http.get(f"/fhir/Patient/{created['id']}/_history").status_code == 200
    seen = events(server, sub=reader)
    assert [(e["interaction"], e["patient_id"], e["kind"]) for e in seen] == [
        ("read", created["id"], "patient"),
        ("vread", created["id"], "patient"),
        ("history", created["id"], "patient"),
    ]
    first = seen[0]
    assert first["who"] == {"sub": reader, "role": "investigator", "site": "S01"}
    assert first["route"] == f"GET /fhir/Patient/{created['id']}"
    at = datetime.fromisoformat(first["at"])
    assert at.utcoffset() == timedelta(0) and abs(datetime.now(UTC) - at) < timedelta(minutes=5)


def test_searching_patients_records_every_patient_in_the_results(server):
    with server.client("ehr", "S02") as http:
        people = [http.post("/fhir/Patient", json=patient(site="S02"), headers=FHIR_JSON).json() for _ in range(2)]
    reader = _sub("monitor")
    wanted = ",".join(person["id"] for person in people)
    identifier = people[0]["identifier"][0]
    with server.client("monitor", "S02", sub=reader) as http:
        assert http.get("/fhir/Patient", params={"_id": wanted}).json()["total"] == 2
        found = http.get("/fhir/Patient", params={"identifier": f"{identifier['system']}|{identifier['value']}"})
        assert found.json()["total"] == 1
        assert http.get("/fhir/Observation", params={"subject": people[0]["id"]}).status_code == 200
    seen = events(server, sub=reader)
    assert sorted(e["patient_id"] for e in seen) == sorted([people[0]["id"], people[0]["id"], people[1]["id"]])
    assert {e["interaction"] for e in seen} == {"search"} and {e["route"] for e in seen} == {"GET /fhir/Patient"}
    assert len({e["request_id"] for e in seen}) == 2  # one batch per response


def test_patients_in_a_batch_response_are_recorded(server):
    with server.client("ehr", "S01") as http:
        created = http.post("/fhir/Patient", json=patient(), headers=FHIR_JSON).json()
    reader = _sub("coordinator")
    body = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"request": {"method": "GET", "url": f"Patient/{created['id']}"}},
            {"request": {"method": "GET", "url": f"Patient?_id={created['id']}"}},
            {"request": {"method": "GET", "url": "Patient/does-not-exist"}},
        ],
    }
    with server.client("coordinator", "S01", sub=reader) as http:
        assert http.post("/fhir", json=body, headers=FHIR_JSON).status_code == 200
    seen = events(server, sub=reader)
    assert [(e["patient_id"], e["interaction"], e["route"]) for e in seen] == [(created["id"], "batch", "POST /fhir")]


def test_reading_a_subject_through_the_ecrf_door_records_the_mrn_being_shown(server):
    enroller = _sub("investigator")
    with server.client("investigator", "S01", sub=enroller) as http:
        subject = enrol(http, "S01")
    reader = _sub("coordinator")
    with server.client("coordinator", "S01", sub=reader) as http:
        assert http.get(f"/api/v1/subjects/{subject['id']}").json()["mrn"] == subject["mrn"]
        listed = http.get("/api/v1/subjects", params={"limit": 5}).json()["items"]
    assert [(e["interaction"], e["kind"]) for e in events(server, sub=enroller)] == [("subject.enrol", "mrn")]
    seen = events(server, sub=reader)
    assert (seen[0]["patient_id"], seen[0]["interaction"], seen[0]["route"]) == (
        subject["patient_id"],
        "subject.read",
        f"GET /api/v1/subjects/{subject['id']}",
    )
    assert sorted(e["patient_id"] for e in seen[1:]) == sorted(item["patient_id"] for item in listed)
    assert {e["interaction"] for e in seen[1:]} == {"subject.list"}
    mine = events(server, subject=subject["id"])
    assert {e["who"]["sub"] for e in mine} >= {enroller, reader}


def test_views_showing_the_birth_date_are_recorded(server):
    with server.client("investigator", "S01") as http:
        subject = enrol(http, "S01")
        assert save(http, subject["id"], "demographics").status_code == 201
        assert save(http, subject["id"], "labs").status_code == 201
    reader = _sub("monitor")
    with server.client("monitor", "S01", sub=reader) as http:
        assert http.get(f"/api/v1/subjects/{subject['id']}/forms/demographics/SCR").json()["items"]["birth_date"]
        assert http.get(f"/api/v1/subjects/{subject['id']}/forms/labs/SCR").status_code == 200  # no identifier
        assert http.get(f"/api/v1/subjects/{subject['id']}/eligibility").status_code == 200
        assert http.get(f"/api/v1/subjects/{subject['id']}/audit", params={"item": "birth_date"}).json()["items"]
        assert http.get(f"/api/v1/subjects/{subject['id']}/audit", params={"item": "platelets"}).json()["items"]
    seen = events(server, sub=reader)
    assert [(e["interaction"], e["kind"], e["patient_id"]) for e in seen] == [
        ("form.read", "birth_date", subject["patient_id"]),
        ("eligibility.read", "birth_date", subject["patient_id"]),
        ("audit.read", "birth_date", subject["patient_id"]),
    ]


def test_a_refused_or_missing_read_records_nothing(server):
    with server.client("investigator", "S01") as http:
        subject = enrol(http, "S01")
    outsider, sponsor = _sub("investigator"), _sub("sponsor")
    with server.client("investigator", "S02", sub=outsider) as http:
        assert http.get(f"/api/v1/subjects/{subject['id']}").status_code == 404
        assert http.get(f"/fhir/Patient/{subject['patient_id']}").status_code == 404
        assert http.get("/fhir/Patient", params={"_id": subject["patient_id"]}).json()["total"] == 0
    with server.client("sponsor", sub=sponsor) as http:
        assert http.get(f"/fhir/Patient/{subject['patient_id']}").status_code == 403
        assert http.get(f"/api/v1/subjects/{subject['id']}").status_code == 403
    assert events(server, sub=outsider) == [] and events(server, sub=sponsor) == []


def _export(http, **params) -> dict:
    response = http.get(f"/fhir/Group/{STUDY}/$export", params={"_type": "Patient", **params}, headers=ASYNC)
    assert response.status_code == 202, response.text
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status = http.get(response.headers["Content-Location"])
        if status.status_code == 200:
            return status.json()
        time.sleep(0.05)
    raise AssertionError("the export did not finish in time")


def test_deidentified_exports_leave_no_event_and_identified_ones_name_every_subject(server):
    with server.client("investigator", "S01") as http:
        subject = enrol(http, "S01")
        assert save(http, subject["id"], "demographics").status_code == 201
    sponsor, manager = _sub("sponsor"), _sub("data_manager")
    with server.client("sponsor", sub=sponsor) as http:
        assert http.get("/api/v1/exports/forms/demographics.csv").status_code == 200
        [patients] = _export(http)["output"]
        assert http.get(patients["url"]).status_code == 200
    assert events(server, sub=sponsor) == []
    with server.client("data_manager", sub=manager) as http:
        csv = http.get("/api/v1/exports/forms/demographics.csv", params={"deidentify": "false"})
        assert csv.status_code == 200 and subject["id"] in csv.text
        [patients] = _export(http, deidentify="false")["output"]
        file = http.get(patients["url"])
        assert file.status_code == 200
    exported = [orjson.loads(line)["id"] for line in file.content.splitlines()]
    seen = events(server, sub=manager)
    from_csv = [e for e in seen if e["interaction"] == "export.form_csv"]
    from_file = [e for e in seen if e["interaction"] == "export.bulk_file"]
    assert subject["patient_id"] in {e["patient_id"] for e in from_csv}
    assert sorted(e["patient_id"] for e in from_file) == sorted(exported) and subject["patient_id"] in exported
    assert {e["kind"] for e in seen} == {"identified_export"}


@contextmanager
def access_log_refusing(server):
    """The database itself refuses every insert into the access log (a trigger), until the block ends."""
    if server.backend == "postgresql":
        create = [
            "CREATE FUNCTION refuse_access_test() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'the access log refuses this row'; END $$",
            "CREATE TRIGGER refuse_access_test BEFORE INSERT ON access_event "
            "FOR EACH ROW EXECUTE FUNCTION refuse_access_test()",
        ]
        drop = ["DROP TRIGGER refuse_access_test ON access_event", "DROP FUNCTION refuse_access_test()"]
    else:
        create = [
            "CREATE TRIGGER refuse_access_test BEFORE INSERT ON access_event "
            "BEGIN SELECT RAISE(ABORT, 'the access log refuses this row'); END"
        ]
        drop = ["DROP TRIGGER refuse_access_test"]
    with server.runtime.engine.begin() as connection:
        for statement in create:
            connection.execute(text(statement))
    try:
        yield
    finally:
        with server.runtime.engine.begin() as connection:
            for statement in drop:
                connection.execute(text(statement))


def test_identified_exports_whose_access_rows_cannot_be_written_are_not_sent(server):
    """The streamed CSV and an export file say what they show; the response hook records it before the
    first byte leaves, and when it cannot, nothing of the identified data leaves."""
    with server.client("investigator", "S01") as http:
        subject = enrol(http, "S01")
        assert save(http, subject["id"], "demographics").status_code == 201
    manager = _sub("data_manager")
    with server.client("data_manager", sub=manager) as http:
        [patients] = _export(http, deidentify="false")["output"]
        with access_log_refusing(server):
            csv = http.get("/api/v1/exports/forms/demographics.csv", params={"deidentify": "false"})
            file = http.get(patients["url"])
        assert csv.status_code == 500 and subject["id"] not in csv.text
        assert file.status_code == 500 and subject["patient_id"] not in file.text
        with server.runtime.engine.connect() as connection:  # the CSV's export is audited as it ended, at once
            audited = (
                connection.execute(
                    text(
                        "SELECT new_value FROM audit_entry WHERE actor_sub = :sub AND action = 'export' "
                        "AND form_id = 'demographics'"
                    ),
                    {"sub": manager},
                )
                .scalars()
                .all()
            )
        assert [orjson.loads(value)["complete"] for value in audited] == [False]
        assert http.get(patients["url"]).status_code == 200  # the log writes again: the file leaves, recorded
    seen = events(server, sub=manager)  # the CSV and the refused download left nothing; the last one its rows
    assert {e["interaction"] for e in seen} == {"export.bulk_file"}
    assert subject["patient_id"] in {e["patient_id"] for e in seen}


def test_no_event_holds_an_mrn_or_a_name(server):
    person = _named_patient()
    mrn = person["identifier"][0]["value"]
    with server.client("ehr", "S01") as http:
        created = http.post("/fhir/Patient", json=person, headers=FHIR_JSON).json()
        assert http.get("/fhir/Patient", params={"identifier": f"{MRN['S01']}|{mrn}"}).json()["total"] == 1
        assert (
            http.put(
                f"/fhir/Patient?identifier={MRN['S01']}|{mrn}", json={**person, "gender": "male"}, headers=FHIR_JSON
            ).status_code
            == 200
        )
        assert http.get(f"/fhir/Patient/{created['id']}").status_code == 200
    with server.client("investigator", "S01") as http:
        enrolled = http.post("/api/v1/subjects", json={"site": "S01", "mrn": mrn, "consent_date": "2026-01-05"})
        assert enrolled.status_code == 201, enrolled.text
    seen = events(server, subject=created["id"])
    assert {e["interaction"] for e in seen} >= {"create", "search", "update", "read", "subject.enrol"}
    text = orjson.dumps(seen).decode()
    for secret in (mrn, "Quixotewright", "Rosalind", "7946", "1961-03-04"):
        assert secret not in text


def test_only_an_admin_reviews_the_log_with_filters_and_pages(server):
    with server.client("ehr", "S01") as http:
        created = http.post("/fhir/Patient", json=patient(), headers=FHIR_JSON).json()
    reader = _sub("monitor")
    before = datetime.now(UTC)
    with server.client("monitor", "S01", sub=reader) as http:
        for _ in range(3):
            assert http.get(f"/fhir/Patient/{created['id']}").status_code == 200
    after = datetime.now(UTC)
    for role, sites in (
        ("investigator", ("S01",)),
        ("coordinator", ("S01",)),
        ("monitor", ()),
        ("data_manager", ()),
        ("sponsor", ()),
        ("ehr", ("S01",)),
    ):
        with server.client(role, *sites) as http:
            assert http.get("/api/v1/access-log").status_code == 403, role
    with server.client("admin") as admin:
        page = admin.get("/api/v1/access-log", params={"sub": reader, "limit": 2, "offset": 1}).json()
        assert page["total"] == 3 and len(page["items"]) == 2 and page["offset"] == 1
        assert admin.get("/api/v1/access-log", params={"sub": reader, "subject": "someone-else"}).json()["total"] == 0
        window = {"sub": reader, "since": before.isoformat(), "until": after.isoformat()}
        assert admin.get("/api/v1/access-log", params=window).json()["total"] == 3
        naive = {"sub": reader, "since": after.replace(tzinfo=None).isoformat()}
        assert admin.get("/api/v1/access-log", params=naive).json()["total"] == 0
        assert admin.get("/api/v1/access-log", params={"limit": 0}).status_code == 422
