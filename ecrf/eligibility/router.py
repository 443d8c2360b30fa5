"""/api/v1 eligibility: one subject's criteria, and the study's screening log."""

from typing import Any

from fastapi import APIRouter, Depends, Request

from ecrf.audit.access import service as access
from ecrf.auth.actor import Actor
from ecrf.auth.dependencies import requires
from ecrf.common.pagination import Limit, Offset, page
from ecrf.common.errors import EditCheckFailed
from ecrf.eligibility import service
from ecrf.randomisation.service import allocations_of, strata_counts
from ecrf.store.unit import read_only
from ecrf.subjects.service import resolve

router = APIRouter(tags=["eligibility"])


@router.get("/subjects/{subject_id}/eligibility")
def subject_eligibility(
    subject_id: str, request: Request, actor: Actor = Depends(requires("eligibility.read"))
) -> dict[str, Any]:
    """Every criterion met / not_met / unknown with its evidence (FHIR references, canonical values) and
    reason; overall eligible / ineligible / incomplete; `missing` names what would settle each unknown.
    Once randomised the result is frozen: `frozen`, `live_status` and `changed_since_randomisation` show
    whether later data would change it."""
    runtime = request.app.state.runtime
    with read_only(runtime, actor) as store:
        view = service.subject_view(store, runtime.study, subject_id)
        if access.shows_identifiers(runtime.study, view):  # the birth date, as age evidence
            patient_id = resolve(store, runtime.study, subject_id).patient_id
        else:
            patient_id = None
    access.shown(request, actor, "eligibility.read", access.BIRTH_DATE, [patient_id])
    return view


@router.get("/eligibility")
def screening_log(
    request: Request,
    site: str | None = None,
    status: str | None = None,
    offset: Offset = 0,
    limit: Limit = None,
    actor: Actor = Depends(requires("eligibility.read")),
) -> dict[str, Any]:
    """Subjects of the caller's sites with their eligibility status and the criteria that block them,
    as of the latest write (paginated; filter by site and status), each with its allocation once randomised;
    `randomised`: the system's allocations per site, stratum and arm (allocated subjects only)."""
    if status is not None and status not in service.STATUSES:
        raise EditCheckFailed(
            [
                {
                    "item": "status",
                    "rule": "allowed_values",
                    "message": f"status must be one of {', '.join(service.STATUSES)}",
                }
            ],
            "the query is not valid",
        )
    runtime = request.app.state.runtime
    offset, limit = page(request, offset, limit)
    with read_only(runtime, actor) as store:
        total, items = service.screening_log(store, site=site, status=status, offset=offset, limit=limit)
        allocated = allocations_of(store.session, runtime.study, [item["subject"] for item in items])
        items = [{**item, "allocation": allocated.get(item["subject"])} for item in items]
        randomised = strata_counts(store.session, runtime.study, store.actor.sites, site)
    return {"items": items, "total": total, "offset": offset, "limit": limit, "randomised": randomised}
