"""GET /api/v1/subjects/{id}/audit: the subject's audit trail, oldest first, with its hash chain."""

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends, Request
from sqlalchemy import func
from sqlmodel import select

from ecrf.audit.access import service as access
from ecrf.audit.models import AuditEntry
from ecrf.auth.actor import Actor
from ecrf.auth.dependencies import requires
from ecrf.common.pagination import Limit, Offset, page
from ecrf.store.unit import read_only
from ecrf.subjects.service import resolve

router = APIRouter(tags=["audit"])


def _entry(entry: AuditEntry, subject_id: str) -> dict[str, Any]:
    return {
        "seq": entry.seq,
        "at": entry.at.isoformat(),
        "who": {"sub": entry.actor_sub, "role": entry.actor_role, "site": entry.actor_site},
        "action": entry.action,
        "source": entry.source,
        "subject_id": subject_id,
        "patient_id": entry.patient_id,
        "form_id": entry.form_id,
        "visit_id": entry.visit_id,
        "item_id": entry.item_id,
        "old_value": entry.old_value,
        "new_value": entry.new_value,
        "reason": entry.reason,
        "resource": entry.resource,
        "resource_version": entry.resource_version,
        "prev_hash": entry.prev_hash,
        "hash": entry.hash,
    }


def _utc(moment: datetime) -> datetime:
    """A filter value without an offset (`2026-01-01`, `2026-01-01T08:00`) is read as UTC."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


@router.get("/subjects/{subject_id}/audit")
def subject_audit(
    subject_id: str,
    request: Request,
    form: str | None = None,
    visit: str | None = None,
    item: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    offset: Offset = 0,
    limit: Limit = None,
    actor: Actor = Depends(requires("audit.read")),
) -> dict[str, Any]:
    """Every audited change of the subject (both doors): who, when, what, old and new value, reason,
    source and resource version; filter by form, visit, item and time (`since`, `until`, inclusive)."""
    runtime = request.app.state.runtime
    offset, limit = page(request, offset, limit)
    with read_only(runtime, actor) as store:
        subject = resolve(store, runtime.study, subject_id)
        query = select(AuditEntry).where(AuditEntry.patient_id == subject.patient_id)
        for column, value in ((AuditEntry.form_id, form), (AuditEntry.visit_id, visit), (AuditEntry.item_id, item)):
            if value:
                query = query.where(column == value)
        if since:
            query = query.where(AuditEntry.at >= _utc(since))
        if until:
            query = query.where(AuditEntry.at <= _utc(until))
        total = store.session.exec(select(func.count()).select_from(query.subquery())).one()
        entries = store.session.exec(query.order_by(AuditEntry.seq).offset(offset).limit(limit)).all()
        items = [_entry(entry, subject.id) for entry in entries]
    if access.shows_identifiers(runtime.study, items):  # old or new values of the birth date
        access.shown(request, actor, "audit.read", access.BIRTH_DATE, [subject.patient_id])
    return {"items": items, "total": total, "offset": offset, "limit": limit}
