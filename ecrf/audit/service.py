"""Append to and verify the hash chain of audit entries.

Entries are collected in the session while a unit of work runs and chained just before it commits
(`before_commit`), in bulk inserts: the chain's head row is locked only for that last step, so
concurrent writers queue for a few statements instead of for their whole transactions, and every commit
adds one contiguous run to a single, gap-free chain. The entries are written in the writer's own
transaction: a rollback, or a rolled-back savepoint, takes its entries with it.
"""

import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import event, text
from sqlalchemy.orm import Session as AnySession
from sqlalchemy.orm import SessionTransaction
from sqlmodel import Session, select

from ecrf.auth.actor import Actor
from ecrf.audit.models import AuditEntry, AuditHead
from ecrf.common.bulk import insert_rows

GENESIS = "0" * 64
HASHED_FIELDS = (
    "seq",
    "at",
    "actor_sub",
    "actor_role",
    "actor_site",
    "action",
    "source",
    "patient_id",
    "form_id",
    "visit_id",
    "item_id",
    "old_value",
    "new_value",
    "reason",
    "resource",
    "resource_version",
    "prev_hash",
)
APPENDED_FIELDS = (
    "action",
    "source",
    "patient_id",
    "form_id",
    "visit_id",
    "item_id",
    "old_value",
    "new_value",
    "reason",
    "resource",
    "resource_version",
)
PENDING_FIELDS = ("at", "actor_sub", "actor_role", "actor_site", *APPENDED_FIELDS)
PENDING = "audit.pending"  # session.info: entries of this unit of work (tuples of PENDING_FIELDS), not yet chained
SAVEPOINTS = "audit.savepoints"  # session.info: savepoint -> number of entries pending when it began
CHAIN_CHUNK = 1000  # entries hashed and inserted at a time: bounds the rows held at once
# The hashed JSON has its keys sorted; a payload built in this order serializes so without sorting each one.
SORTED_HASHED_FIELDS = tuple(sorted(HASHED_FIELDS))


def entry_hash(entry: AuditEntry | Mapping[str, Any]) -> str:
    values = entry if isinstance(entry, Mapping) else {name: getattr(entry, name) for name in HASHED_FIELDS}
    return _hash(values, _timestamp(values["at"]))


def _hash(values: Mapping[str, Any], at: str) -> str:
    """entry_hash of values whose `at` is already formatted by _timestamp."""
    payload = {name: values[name] for name in SORTED_HASHED_FIELDS}
    payload["at"] = at
    return hashlib.sha256(orjson.dumps(payload)).hexdigest()


def _timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def append(
    session: Session,
    actor: Actor,
    action: str,
    *,
    source: str,
    patient_id: str | None = None,
    form_id: str | None = None,
    visit_id: str | None = None,
    item_id: str | None = None,
    old_value: str | None = None,
    new_value: str | None = None,
    reason: str | None = None,
    resource: str | None = None,
    resource_version: int | None = None,
    at: datetime | None = None,
) -> None:
    """Add one entry to the chain when this unit of work commits."""
    append_many(
        session,
        actor,
        [
            dict(
                action=action,
                source=source,
                patient_id=patient_id,
                form_id=form_id,
                visit_id=visit_id,
                item_id=item_id,
                old_value=old_value,
                new_value=new_value,
                reason=reason,
                resource=resource,
                resource_version=resource_version,
                at=at,
            )
        ],
    )


def append_many(session: Session, actor: Actor, entries: list[dict]) -> None:
    """Add several entries (keyword arguments of `append`), in this order, when this unit of work commits."""
    now = datetime.now(UTC)
    session.info.setdefault(PENDING, []).extend(
        (fields.get("at") or now, actor.sub, actor.role, actor.site, *[fields.get(name) for name in APPENDED_FIELDS])
        for fields in entries
    )


def _chain(session: Session, pending: list[tuple]) -> None:
    """Link the entries to the chain's tip under its row lock and insert them in bulk."""
    tip = select(AuditHead.last_seq, AuditHead.last_hash).where(AuditHead.id == 1).with_for_update()
    head = session.execute(tip).one_or_none()
    if head is None:  # the very first entry of this database
        session.execute(
            text(
                "INSERT INTO audit_head (id, last_seq, last_hash) VALUES (1, 0, :genesis) ON CONFLICT (id) DO NOTHING"
            ),
            {"genesis": GENESIS},
        )
        head = session.execute(tip).one()
    seq, prev_hash = head
    stamps: dict[datetime, str] = {}  # the entries of one unit of work share few instants
    for start in range(0, len(pending), CHAIN_CHUNK):
        rows = []
        for values in pending[start : start + CHAIN_CHUNK]:
            seq += 1
            row = dict(zip(PENDING_FIELDS, values), seq=seq, prev_hash=prev_hash)
            at = stamps.get(row["at"]) or stamps.setdefault(row["at"], _timestamp(row["at"]))
            row["hash"] = prev_hash = _hash(row, at)
            rows.append(row)
        insert_rows(session, AuditEntry.__table__, rows)
    head_row = AuditHead.__table__
    session.execute(head_row.update().where(head_row.c.id == 1).values(last_seq=seq, last_hash=prev_hash))


@event.listens_for(AnySession, "before_commit")
def _chain_pending(session: Session) -> None:
    if session.in_nested_transaction():
        return  # a savepoint: its entries are chained when the whole transaction commits
    pending = session.info.pop(PENDING, None)
    if pending:
        _chain(session, pending)


@event.listens_for(AnySession, "after_transaction_create")
def _remember_savepoint(session: Session, transaction: SessionTransaction) -> None:
    if transaction.nested:
        session.info.setdefault(SAVEPOINTS, {})[transaction] = len(session.info.get(PENDING, ()))


@event.listens_for(AnySession, "after_soft_rollback")
def _drop_rolled_back(session: Session, transaction: SessionTransaction) -> None:
    mark = session.info.get(SAVEPOINTS, {}).pop(transaction, None) if transaction.nested else None
    if mark is not None:
        del session.info.get(PENDING, [])[mark:]


@event.listens_for(AnySession, "after_transaction_end")
def _forget(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:  # committed (already chained), rolled back or closed
        session.info.pop(PENDING, None)
        session.info.pop(SAVEPOINTS, None)


@dataclass
class ChainBreak:
    seq: int
    problem: str


def verify(session: Session, batch: int = 5000) -> Iterator[ChainBreak]:
    """Walk the whole chain in order; yield every altered, missing or reordered entry."""
    expected_seq, prev_hash = 1, GENESIS
    last_seen = 0
    while True:
        rows = session.exec(
            select(AuditEntry).where(AuditEntry.seq > last_seen).order_by(AuditEntry.seq).limit(batch)
        ).all()
        if not rows:
            break
        for entry in rows:
            if entry.seq != expected_seq:
                yield ChainBreak(expected_seq, f"entries {expected_seq}..{entry.seq - 1} are missing")
            if entry.prev_hash != prev_hash:
                yield ChainBreak(entry.seq, "does not link to the previous entry")
            if entry_hash(entry) != entry.hash:
                yield ChainBreak(entry.seq, "content does not match its hash (altered)")
            prev_hash, expected_seq, last_seen = entry.hash, entry.seq + 1, entry.seq
        session.expunge_all()
    head = session.exec(select(AuditHead).where(AuditHead.id == 1)).one_or_none()
    if head is not None and (head.last_seq != last_seen or head.last_hash != prev_hash):
        yield ChainBreak(head.last_seq, "the chain's tip does not match its last entry (entries removed)")
