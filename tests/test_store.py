"""The versioned store on a real database: versions are appended, never rewritten; sites are scoped."""

import os
import subprocess
import sys
import uuid

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlmodel import select

from ecrf.audit.models import AuditEntry
from ecrf.auth.actor import Actor
from ecrf.common.errors import Gone, NotFound, VersionConflict
from ecrf.store.models import ItemFact, ResourceVersion, SearchToken
from ecrf.store.service import WriteContext
from ecrf.store.unit import read_only, writing
from tests.tamper_support import tampering

S01_EHR = Actor(sub="ehr-s01", roles=frozenset({"ehr"}), sites=frozenset({"S01"}))
S02_EHR = Actor(sub="ehr-s02", roles=frozenset({"ehr"}), sites=frozenset({"S02"}))
FHIR = WriteContext(source="fhir")


def _patient(mrn: str) -> dict:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:oid:2.16.840.1.113883.3.9999.1", "value": mrn}],
        "birthDate": "1970-05-01",
        "gender": "male",
    }


def _hemoglobin(patient_id: str, value: float, unit: str = "g/dL") -> dict:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "718-7"}]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "effectiveDateTime": "2026-10-01",
        "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit},
    }


def test_update_appends_a_version_and_keeps_the_old_one(server):
    with writing(server.runtime, S01_EHR) as store:
        patient = store.create(_patient(uuid.uuid4().hex), FHIR)
        first = store.create(_hemoglobin(patient.resource_id, 12.5), FHIR)
    with writing(server.runtime, S01_EHR) as store:
        second, created = store.update(
            "Observation",
            first.resource_id,
            _hemoglobin(patient.resource_id, 13.0),
            WriteContext(source="fhir", reason="lab corrected"),
            if_match=1,
        )
    assert not created and second.version_id == 2
    assert second.content["meta"]["versionId"] == "2"
    with read_only(server.runtime, S01_EHR) as store:
        assert store.read("Observation", first.resource_id).content["valueQuantity"]["value"] == 13.0
        assert store.vread("Observation", first.resource_id, 1).content["valueQuantity"]["value"] == 12.5
        assert [v.version_id for v in store.history("Observation", first.resource_id)] == [2, 1]
        facts = store.session.exec(select(ItemFact).where(ItemFact.resource_id == first.resource_id)).all()
    assert [(f.item_id, f.value_text, f.unit, f.version_id) for f in facts] == [("hemoglobin", "130.0", "g/L", 2)] or [
        (f.item_id, float(f.value_text), f.unit, f.version_id) for f in facts
    ] == [("hemoglobin", 130.0, "g/L", 2)]
    with read_only(server.runtime, S01_EHR) as store:
        entries = store.session.exec(
            select(AuditEntry).where(AuditEntry.resource == f"Observation/{first.resource_id}").order_by(AuditEntry.seq)
        ).all()
    assert [(e.action, e.item_id, e.reason) for e in entries] == [
        ("create", "hemoglobin", None),
        ("update", "hemoglobin", "lab corrected"),
    ]
    assert entries[1].old_value.startswith("125") and entries[1].new_value.startswith("130")


def test_stale_version_is_refused_and_nothing_changes(server):
    with writing(server.runtime, S01_EHR) as store:
        patient = store.create(_patient(uuid.uuid4().hex), FHIR)
        store.update("Patient", patient.resource_id, {**_patient("x"), "gender": "female"}, FHIR, if_match=1)
    with pytest.raises(VersionConflict):
        with writing(server.runtime, S01_EHR) as store:
            store.update("Patient", patient.resource_id, _patient("y"), FHIR, if_match=1)
    with read_only(server.runtime, S01_EHR) as store:
        current = store.read("Patient", patient.resource_id)
    assert current.version_id == 2 and current.content["gender"] == "female"


def test_delete_is_a_new_version_and_reads_say_gone(server):
    with writing(server.runtime, S01_EHR) as store:
        patient = store.create(_patient(uuid.uuid4().hex), FHIR)
        observation = store.create(_hemoglobin(patient.resource_id, 11.0), FHIR)
    with writing(server.runtime, S01_EHR) as store:
        store.delete("Observation", observation.resource_id, FHIR)
    with read_only(server.runtime, S01_EHR) as store:
        with pytest.raises(Gone):
            store.read("Observation", observation.resource_id)
        assert store.vread("Observation", observation.resource_id, 1).content["valueQuantity"]["value"] == 11.0
        rows = store.session.exec(
            select(ResourceVersion)
            .where(ResourceVersion.resource_id == observation.resource_id)
            .order_by(ResourceVersion.version_id)
        ).all()
        assert [(r.version_id, r.deleted) for r in rows] == [(1, False), (2, True)]
        assert not store.session.exec(select(ItemFact).where(ItemFact.resource_id == observation.resource_id)).all()
        assert not store.session.exec(
            select(SearchToken).where(SearchToken.resource_id == observation.resource_id)
        ).all()


def test_another_sites_data_does_not_exist_for_a_scoped_actor(server):
    with writing(server.runtime, S01_EHR) as store:
        patient = store.create(_patient(uuid.uuid4().hex), FHIR)
        observation = store.create(_hemoglobin(patient.resource_id, 14.0), FHIR)
    assert observation.site == "S01"
    with read_only(server.runtime, S02_EHR) as store:
        for resource_type, resource_id in [("Patient", patient.resource_id), ("Observation", observation.resource_id)]:
            with pytest.raises(NotFound):
                store.read(resource_type, resource_id)
    with pytest.raises(NotFound):
        with writing(server.runtime, S02_EHR) as store:
            store.update("Patient", patient.resource_id, _patient("stolen"), FHIR)
    with read_only(server.runtime, S01_EHR) as store:
        assert store.read("Patient", patient.resource_id).version_id == 1


def test_search_tokens_are_indexed_for_identifiers_and_codes(server):
    mrn = uuid.uuid4().hex
    with writing(server.runtime, S01_EHR) as store:
        patient = store.create(_patient(mrn), FHIR)
        observation = store.create(_hemoglobin(patient.resource_id, 9.0), FHIR)
    with read_only(server.runtime, S01_EHR) as store:
        tokens = store.session.exec(
            select(SearchToken).where(SearchToken.resource_id.in_([patient.resource_id, observation.resource_id]))
        ).all()
    pairs = {(t.param, t.system, t.code, t.value) for t in tokens}
    assert ("identifier", "urn:oid:2.16.840.1.113883.3.9999.1", mrn, None) in pairs
    assert ("code", "http://loinc.org", "718-7", None) in pairs
    assert ("subject", None, None, f"Patient/{patient.resource_id}") in pairs


def test_audit_verify_detects_a_tampered_row(server, tmp_path):
    with writing(server.runtime, S01_EHR) as store:
        store.create(_patient(uuid.uuid4().hex), FHIR)
    env = {**os.environ, "ECRF_DATABASE_URL": server.settings.database_url}
    verify = [sys.executable, "-m", "ecrf.cli", "audit", "verify"]
    intact = subprocess.run(verify, env=env, capture_output=True, text=True)
    assert intact.returncode == 0, intact.stderr
    with tampering(server.runtime.engine) as connection:
        seq, old = connection.execute(text("SELECT seq, new_value FROM audit_entry ORDER BY seq DESC LIMIT 1")).one()
        connection.execute(text("UPDATE audit_entry SET new_value = :v WHERE seq = :s"), {"v": "forged", "s": seq})
    try:
        broken = subprocess.run(verify, env=env, capture_output=True, text=True)
        assert broken.returncode == 1
        assert f"entry {seq}" in broken.stderr and "altered" in broken.stderr
    finally:
        with tampering(server.runtime.engine) as connection:
            connection.execute(text("UPDATE audit_entry SET new_value = :v WHERE seq = :s"), {"v": old, "s": seq})
    assert subprocess.run(verify, env=env, capture_output=True).returncode == 0


def test_audit_verify_detects_a_deleted_row(server):
    with writing(server.runtime, S01_EHR) as store:
        store.create(_patient(uuid.uuid4().hex), FHIR)
        store.create(_patient(uuid.uuid4().hex), FHIR)
    env = {**os.environ, "ECRF_DATABASE_URL": server.settings.database_url}
    with tampering(server.runtime.engine) as connection:
        seq = connection.execute(text("SELECT max(seq) - 1 FROM audit_entry")).scalar_one()
        row = connection.execute(AuditEntry.__table__.select().where(AuditEntry.seq == seq)).mappings().one()
        connection.execute(text("DELETE FROM audit_entry WHERE seq = :s"), {"s": seq})
    try:
        broken = subprocess.run(
            [sys.executable, "-m", "ecrf.cli", "audit", "verify"], env=env, capture_output=True, text=True
        )
        assert broken.returncode == 1 and "missing" in broken.stderr
    finally:
        with tampering(server.runtime.engine) as connection:
            connection.execute(AuditEntry.__table__.insert(), [dict(row)])


@pytest.mark.parametrize("table, key", [("resource_version", "pk"), ("audit_entry", "seq"), ("access_event", "id")])
def test_versions_audit_entries_and_access_events_cannot_be_changed_or_removed(server, table, key):
    """The database itself refuses UPDATE, DELETE (and on PostgreSQL TRUNCATE) on the append-only tables."""
    with writing(server.runtime, S01_EHR) as store:
        patient = store.create(_patient(uuid.uuid4().hex), FHIR)
    with server.client("coordinator", "S01") as http:
        assert http.get(f"/fhir/Patient/{patient.resource_id}").status_code == 200  # an identified read is logged
    last = f"(SELECT max({key}) FROM {table})"
    statements = [f"UPDATE {table} SET {key} = {key} WHERE {key} = {last}", f"DELETE FROM {table} WHERE {key} = {last}"]
    if server.backend == "postgresql":
        statements.append(f"TRUNCATE {table}")
    with server.runtime.engine.connect() as connection:
        before = connection.execute(text(f"SELECT count(*), max({key}) FROM {table}")).one()
    assert before[0] > 0
    for statement in statements:
        with pytest.raises(DBAPIError, match="append-only"), server.runtime.engine.begin() as connection:
            connection.execute(text(statement))
    with server.runtime.engine.connect() as connection:
        assert connection.execute(text(f"SELECT count(*), max({key}) FROM {table}")).one() == before
