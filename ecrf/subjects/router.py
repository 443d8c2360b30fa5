"""/api/v1/subjects: enrol, list and read subjects (ResearchSubject + Patient in the store)."""

from typing import Any

from fastapi import APIRouter, Depends, Request

from ecrf.audit.access import service as access
from ecrf.auth.actor import Actor
from ecrf.auth.dependencies import requires
from ecrf.common.pagination import Limit, Offset, page
from ecrf.crf.schedule import day_zero, visit_schedule
from ecrf.crf.locate import subject_instances
from ecrf.queries.models import unresolved_of_subject
from ecrf.responses import JSONBody
from ecrf.store.unit import read_only, writing
from ecrf.subjects import service
from ecrf.subjects.schemas import Enrolment

router = APIRouter(tags=["subjects"])


@router.post("/subjects", status_code=201)
def enrol(body: Enrolment, request: Request, actor: Actor = Depends(requires("subject.enrol"))) -> JSONBody:
    """Enrol a subject: a Patient with the site's MRN and a ResearchSubject (status candidate) with the same id.
    A duplicate MRN at the site is 409."""
    runtime = request.app.state.runtime
    with writing(runtime, actor) as store:
        subject = service.enrol(store, runtime.study, body.site, body.mrn, body.consent_date)
        view = service.describe(store, runtime.study, [subject])[0]
    _record_mrns(request, actor, "subject.enrol", [view])
    return JSONBody(view, status_code=201, headers={"Location": f"/api/v1/subjects/{subject.id}"})


@router.get("/subjects")
def list_subjects(
    request: Request,
    site: str | None = None,
    status: str | None = None,
    offset: Offset = 0,
    limit: Limit = None,
    actor: Actor = Depends(requires("subject.read")),
) -> dict[str, Any]:
    """Subjects the caller may see (own sites), filtered by site and ResearchSubject status, paginated."""
    runtime = request.app.state.runtime
    offset, limit = page(request, offset, limit)
    with read_only(runtime, actor) as store:
        total, subjects = service.list_subjects(
            store, runtime.study, site=site, status=status, offset=offset, limit=limit
        )
        items = service.describe(store, runtime.study, subjects)
    _record_mrns(request, actor, "subject.list", items)
    return {"items": items, "total": total, "offset": offset, "limit": limit}


@router.get("/subjects/{subject_id}")
def read_subject(subject_id: str, request: Request, actor: Actor = Depends(requires("subject.read"))) -> dict[str, Any]:
    """The subject with its visit schedule: windows from the surgery date and derived visit status."""
    runtime = request.app.state.runtime
    with read_only(runtime, actor) as store:
        subject = service.resolve(store, runtime.study, subject_id)
        view = service.describe(store, runtime.study, [subject])[0]
        zero = day_zero(store.session, runtime.study, subject.patient_id)
        view["day_zero"] = zero.isoformat() if zero else None
        view["visits"] = visit_schedule(
            runtime.study, zero, subject_instances(store, subject), runtime.study.today_at(subject.site)
        )
        view["open_queries"] = unresolved_of_subject(store.session, subject.id)
    _record_mrns(request, actor, "subject.read", [view])
    return view


def _record_mrns(request: Request, actor: Actor, interaction: str, views: list[dict[str, Any]]) -> None:
    """Subject views show the MRN to roles that may see identifiers: the access log says who saw whose."""
    access.shown(
        request, actor, interaction, access.MRN, [view["patient_id"] for view in views if view.get("mrn") is not None]
    )
