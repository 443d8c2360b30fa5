"""Append to and verify the hash chain of audit entries."""
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson
from sqlmodel import Session, select

from ecrf.auth.actor import Actor
from ecrf.audit.models import AuditEntry, AuditHead
from ecrf.store.bulk import insert_rows

GENESIS = "0" * 64
HASHED_FIELDS = (
    "seq", "at", "actor_sub", "actor_role", "actor_site", "action", "source", "patient_id", "form_id",
    "visit_id", "item_id", "old_value", "new_value", "reason", "resource", "resource_version", "prev_hash",
)


def entry_hash(entry: AuditEntry) -> str:
    payload = {name: getattr(entry, name) for name in HASHED_FIELDS}
    payload["at"] = _timestamp(entry.at)
    return hashlib.sha256(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).hexdigest()


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
) -> AuditEntry:
    """Append one entry; the head row lock serialises appenders so the chain stays linear."""
    head = session.exec(select(AuditHead).where(AuditHead.id == 1).with_for_update()).one_or_none()
    if head is None:
        head = AuditHead(id=1, last_seq=0, last_hash=GENESIS)
        session.add(head)
    entry = AuditEntry(
        seq=head.last_seq + 1,
        at=at or datetime.now(UTC),
        actor_sub=actor.sub,
        actor_role=actor.role,
        actor_site=actor.site,
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
        prev_hash=head.last_hash,
        hash="",
    )
    entry.hash = entry_hash(entry)
    head.last_seq = entry.seq
    head.last_hash = entry.hash
    session.add(entry)
    session.add(head)
    return entry


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


def append_many(session: Session, actor: Actor, entries: list[dict]) -> None:
    """Append several entries (keyword arguments of `append`) under one head lock, in one bulk insert."""
    if not entries:
        return
    head = session.exec(select(AuditHead).where(AuditHead.id == 1).with_for_update()).one_or_none()
    if head is None:
        head = AuditHead(id=1, last_seq=0, last_hash=GENESIS)
        session.add(head)
    now = datetime.now(UTC)
    rows = []
    seq, prev_hash = head.last_seq, head.last_hash
    for fields in entries:
        seq += 1
        row = {"seq": seq, "at": fields.get("at") or now, "actor_sub": actor.sub, "actor_role": actor.role,
               "actor_site": actor.site, "prev_hash": prev_hash,
               **{name: fields.get(name) for name in _APPENDED_FIELDS}}
        payload = {name: row[name] for name in HASHED_FIELDS}
        payload["at"] = _timestamp(row["at"])
        row["hash"] = prev_hash = hashlib.sha256(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).hexdigest()
        rows.append(row)
    insert_rows(session, AuditEntry.__table__, rows)
    head.last_seq, head.last_hash = seq, prev_hash
    session.add(head)


_APPENDED_FIELDS = ("action", "source", "patient_id", "form_id", "visit_id", "item_id", "old_value", "new_value",
                    "reason", "resource", "resource_version")
