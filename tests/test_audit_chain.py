"""The audit chain under concurrent writers and rollbacks: one linear chain, entries only of what committed."""

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlmodel import select

from ecrf.audit import service as audit
from ecrf.audit.models import AuditEntry
from ecrf.auth.actor import Actor
from ecrf.db import reading
from ecrf.store.service import WriteContext
from ecrf.store.unit import writing

S01_EHR = Actor(sub="ehr-s01", roles=frozenset({"ehr"}), sites=frozenset({"S01"}))
FHIR = WriteContext(source="fhir")


def _patient() -> dict:
    return {
        "resourceType": "Patient",
        "gender": "female",
        "birthDate": "1970-05-01",
        "identifier": [{"system": "urn:oid:2.16.840.1.113883.3.9999.1", "value": uuid.uuid4().hex}],
    }


def _chain_problems(server) -> list:
    with reading(server.runtime.engine) as session:
        return [(b.seq, b.problem) for b in audit.verify(session)]


def _entries(server, marker: str) -> list[AuditEntry]:
    with reading(server.runtime.engine) as session:
        return list(session.exec(select(AuditEntry).where(AuditEntry.reason == marker).order_by(AuditEntry.seq)).all())


def test_concurrent_writers_extend_one_chain_each_commit_a_contiguous_run(server):
    marker = f"concurrent-{uuid.uuid4().hex}"

    def write(n: int) -> None:
        with writing(server.runtime, S01_EHR) as store:
            for _ in range(3):
                store.create(_patient(), WriteContext(source="fhir", reason=f"{marker}-{n}"))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(write, range(24)))
    assert _chain_problems(server) == []
    with reading(server.runtime.engine) as session:
        entries = session.exec(
            select(AuditEntry).where(AuditEntry.reason.like(f"{marker}-%")).order_by(AuditEntry.seq)
        ).all()
    per_patient = 2  # birth date and gender, as item-level entries
    assert len(entries) == 24 * 3 * per_patient
    for n in range(24):
        seqs = [e.seq for e in entries if e.reason == f"{marker}-{n}"]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "one transaction's entries are one run of the chain"


def test_a_rolled_back_write_leaves_no_entry(server):
    marker = f"rolled-back-{uuid.uuid4().hex}"
    with pytest.raises(RuntimeError):
        with writing(server.runtime, S01_EHR) as store:
            store.create(_patient(), WriteContext(source="fhir", reason=marker))
            raise RuntimeError("abandon the unit of work")
    with writing(server.runtime, S01_EHR) as store:
        store.create(_patient(), WriteContext(source="fhir", reason=f"{marker}-kept"))
    assert _entries(server, marker) == []
    assert {e.item_id for e in _entries(server, f"{marker}-kept")} == {"birth_date", "sex"}
    assert _chain_problems(server) == []


def test_a_rolled_back_savepoint_drops_its_entries_and_keeps_the_others(server):
    marker = f"savepoint-{uuid.uuid4().hex}"
    with writing(server.runtime, S01_EHR) as store:
        audit.append(store.session, store.actor, "test.before", source="system", reason=marker)
        savepoint = store.session.begin_nested()
        audit.append(store.session, store.actor, "test.dropped", source="system", reason=marker)
        savepoint.rollback()
        kept = store.session.begin_nested()
        audit.append(store.session, store.actor, "test.inner", source="system", reason=marker)
        kept.commit()
        audit.append(store.session, store.actor, "test.after", source="system", reason=marker)
    assert [e.action for e in _entries(server, marker)] == ["test.before", "test.inner", "test.after"]
    assert _chain_problems(server) == []


def test_an_open_transaction_does_not_hold_back_other_writers_on_postgresql(server):
    """The chain's head is locked only while a commit links its entries, not for the whole transaction."""
    if server.backend != "postgresql":
        pytest.skip("SQLite has one writer at a time by design")
    marker = f"open-{uuid.uuid4().hex}"
    other_done = threading.Event()

    def other_writer() -> None:
        with writing(server.runtime, S01_EHR) as store:
            store.create(_patient(), WriteContext(source="fhir", reason=f"{marker}-other"))
        other_done.set()

    with writing(server.runtime, S01_EHR) as store:
        store.create(_patient(), WriteContext(source="fhir", reason=f"{marker}-open"))
        thread = threading.Thread(target=other_writer)
        thread.start()
        finished_meanwhile = other_done.wait(10)
    thread.join(30)
    assert finished_meanwhile, "a writer waited for another transaction's commit"
    assert _entries(server, f"{marker}-other")[0].seq < _entries(server, f"{marker}-open")[0].seq
    assert _chain_problems(server) == []
