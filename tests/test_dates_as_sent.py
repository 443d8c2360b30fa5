"""EHR data keep the dates they were sent with (CRF-SPEC 3): a dateTime with an offset is placed, windowed
and ordered by its own calendar date, never by its date in UTC. The study's site is at +08:00."""

from datetime import UTC, date, datetime

import orjson
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, text

from ecrf.eligibility.engine import evaluate
from ecrf.eligibility.patient_data import load
from ecrf.store.migrate import alembic_config
from ecrf.store.unit import read_only
from tests.crf_support import day, enrol, path, save
from tests.eligibility_support import COORDINATOR, compose, criterion, quantity, store_patient
from tests.fhir_builders import FHIR_JSON, lab
from testkit.databases import fresh_database


def _push(server, resource):
    with server.client("coordinator", "S01") as http:  # the FHIR door: source fhir
        response = http.post(f"/fhir/{resource['resourceType']}", json=resource, headers=FHIR_JSON)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def test_a_result_sent_with_an_offset_is_placed_in_the_visit_of_its_own_date(server):
    with server.client("investigator", "S01") as http:
        subject = enrol(http)
        assert save(http, subject["id"], "surgery").status_code == 201
    patient = f"Patient/{subject['patient_id']}"
    # day 26 at 07:00 in China is day 25 in UTC: SCR (target 21) would win by UTC, M1 (target 30) by the date sent
    hemoglobin = _push(server, lab(patient, "718-7", 12.1, "g/dL", f"{day(26)}T07:00:00+08:00"))
    # day 0 at 20:00 at -05:00 is day 1 in UTC, outside every AFP window; by the date sent it is PREOP's last day
    afp = _push(server, lab(patient, "1834-1", 12, "ug/L", f"{day(0)}T20:00:00-05:00"))
    with server.client("monitor", "S01") as http:
        scr = http.get(path(subject["id"], "labs", "SCR")).json()
        m1 = http.get(path(subject["id"], "labs", "M1")).json()
        preop = http.get(path(subject["id"], "afp", "PREOP")).json()
        unscheduled = http.get(path(subject["id"], "afp", "UNS")).json()
    assert "hemoglobin" not in scr["items"]
    assert m1["items"]["hemoglobin"]["resource"] == f"Observation/{hemoglobin}"
    assert m1["items"]["hemoglobin"]["effective"] == day(26)
    assert preop["items"]["afp"]["resource"] == f"Observation/{afp}" and preop["items"]["afp"]["effective"] == day(0)
    assert unscheduled["results"] == []


def test_the_latest_result_is_the_one_with_the_latest_date_as_sent(server):
    """Sent from two time zones: the later date as sent wins, though its UTC instant is earlier."""
    with server.client("investigator", "S01") as http:
        subject = enrol(http)
        assert save(http, subject["id"], "surgery").status_code == 201
    patient = f"Patient/{subject['patient_id']}"
    later_date = _push(server, lab(patient, "718-7", 13.0, "g/dL", f"{day(22)}T07:00:00+08:00"))  # day 21 23:00Z
    _push(server, lab(patient, "718-7", 11.0, "g/dL", f"{day(21)}T20:00:00-05:00"))  # day 22 01:00Z
    with server.client("monitor", "S01") as http:
        scr = http.get(path(subject["id"], "labs", "SCR")).json()
    assert scr["items"]["hemoglobin"]["resource"] == f"Observation/{later_date}"
    assert [a["effective"] for a in scr["alternatives"]["hemoglobin"]] == [day(21)]


R = date(2025, 3, 1)


def test_before_randomisation_r_is_the_sites_date_once_its_data_carry_it(server):
    """At 23:30 UTC it is already the next morning in China: platelets sent at 07:00+08:00 that morning are
    not after R (the day of evaluation), so they are evidence; R never is a date that has begun nowhere."""
    patient = compose({"resources": {"platelets": quantity("777-3", 180, "10*9/L", "2025-03-02T07:00:00+08:00")}}, R)
    patient_id, _ = store_patient(server, patient["resources"], patient["forms"], R)
    with read_only(server.runtime, COORDINATOR) as store:
        data = load(store.session, server.runtime.study, [patient_id])[patient_id]
    late_evening = evaluate(server.runtime.study, data, datetime(2025, 3, 1, 23, 30, tzinfo=UTC))
    assert late_evening.reference_date == date(2025, 3, 2)
    platelets = criterion(late_evening, "I08_platelets")
    assert platelets["result"] == "met" and platelets["evidence"][0]["date"] == "2025-03-02"
    morning = evaluate(server.runtime.study, data, datetime(2025, 3, 1, 9, 0, tzinfo=UTC))  # 23:00 at +14:00
    assert morning.reference_date == R and criterion(morning, "I08_platelets")["result"] == "unknown"


def test_the_migration_fills_the_date_as_sent_of_existing_facts(database_url, tmp_path):
    with fresh_database(database_url, tmp_path) as url:
        engine = create_engine(url)
        try:
            config = alembic_config(engine)
            heads = ScriptDirectory.from_config(config).get_heads()
            for head in heads:
                if head != "0009_local_dates":
                    command.upgrade(config, head)
            rows = {
                "sent-with-offset": (
                    "Observation",
                    {"effectiveDateTime": "2026-11-12T07:00:00+08:00"},
                    datetime(2026, 11, 11, 23, 0, tzinfo=UTC),
                ),
                "condition-onset": (
                    "Condition",
                    {"onsetDateTime": "2026-11-12T01:00:00+09:00"},
                    datetime(2026, 11, 11, 16, 0, tzinfo=UTC),
                ),
                "unreadable-content": (
                    "Observation",
                    {"effectiveDateTime": "soon"},
                    datetime(2026, 11, 11, 23, 0, tzinfo=UTC),
                ),
                "timeless": ("Patient", {}, None),
            }
            with engine.begin() as connection:
                for resource_id, (resource_type, content, effective) in rows.items():
                    connection.execute(
                        text(
                            "INSERT INTO resource_version (resource_type, resource_id, version_id, last_updated, deleted,"
                            " patient_id, content, author_sub, author_role, source) VALUES (:type, :id, 1, :now, false,"
                            " 'p1', :content, 'tester', 'ehr', 'fhir')"
                        ),
                        {
                            "type": resource_type,
                            "id": resource_id,
                            "now": datetime.now(UTC),
                            "content": orjson.dumps(
                                {"resourceType": resource_type, "id": resource_id, **content}
                            ).decode(),
                        },
                    )
                    connection.execute(
                        text(
                            "INSERT INTO item_fact (resource_type, resource_id, version_id, patient_id, form_id, item_id,"
                            " value_text, effective, source) VALUES (:type, :id, 1, 'p1', 'f', 'i', 'x', :effective, 'fhir')"
                        ),
                        {"type": resource_type, "id": resource_id, "effective": effective},
                    )
            command.upgrade(config, "heads")
            with engine.connect() as connection:
                found = dict(connection.execute(text("SELECT resource_id, effective_date FROM item_fact")).all())
        finally:
            engine.dispose()
    found = {
        key: (value if isinstance(value, date) or value is None else date.fromisoformat(value))
        for key, value in found.items()
    }
    assert found == {
        "sent-with-offset": date(2026, 11, 12),
        "condition-onset": date(2026, 11, 12),
        "unreadable-content": date(2026, 11, 11),
        "timeless": None,
    }
