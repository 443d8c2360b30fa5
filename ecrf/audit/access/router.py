"""GET /api/v1/access-log: who saw which subject's identifiers, for review by an admin."""

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from sqlalchemy import func
from sqlmodel import select

from ecrf.audit.access.models import AccessEvent
from ecrf.auth.actor import Actor
from ecrf.auth.dependencies import requires
from ecrf.common.pagination import Limit, Offset, page
from ecrf.common.errors import NotFound
from ecrf.store.unit import read_only
from ecrf.subjects.service import resolve

router = APIRouter(tags=["audit"])


def _utc(moment: datetime) -> datetime:
    """A time without an offset is read as UTC, the log's own zone; one beyond the calendar in UTC is its end."""
    if moment.utcoffset() is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        return (datetime.min if moment.year == datetime.min.year else datetime.max).replace(tzinfo=UTC)


def _event(event: AccessEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "at": event.at.isoformat(),
        "request_id": event.request_id,
        "who": {"sub": event.actor_sub, "role": event.actor_role, "site": event.actor_site},
        "patient_id": event.patient_id,
        "route": event.route,
        "interaction": event.interaction,
        "kind": event.kind,
    }


@router.get("/access-log")
def access_log(
    request: Request,
    subject: str | None = Query(None, max_length=64, description="a subject id or a Patient id"),
    sub: str | None = Query(None, max_length=200, description="the reader's token sub"),
    since: datetime | None = None,
    until: datetime | None = None,
    offset: Offset = 0,
    limit: Limit = None,
    actor: Actor = Depends(requires("access_log.read")),
) -> dict[str, Any]:
    """Every response that showed a subject's identifiers (FHIR Patient resources, MRNs, birth dates,
    identified exports): who (sub, role, site), when (UTC), which Patient, through which route and
    interaction, and what kind of identifier. Oldest first, so pages stay put while the log grows;
    `since` and `until` are inclusive."""
    runtime = request.app.state.runtime
    offset, limit = page(request, offset, limit)
    with read_only(runtime, actor) as store:
        query = select(AccessEvent)
        if subject:
            patients = {subject}
            try:
                patients.add(resolve(store, runtime.study, subject).patient_id)
            except NotFound:
                pass  # not a subject id: a Patient id
            query = query.where(AccessEvent.patient_id.in_(sorted(patients)))
        if sub:
            query = query.where(AccessEvent.actor_sub == sub)
        if since:
            query = query.where(AccessEvent.at >= _utc(since))
        if until:
            query = query.where(AccessEvent.at <= _utc(until))
        total = store.session.exec(select(func.count()).select_from(query.subquery())).one()
        events = store.session.exec(query.order_by(AccessEvent.id).offset(offset).limit(limit)).all()
        items = [_event(event) for event in events]
    return {"items": items, "total": total, "offset": offset, "limit": limit}
