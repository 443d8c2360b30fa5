"""/api/v1 derived endpoints: one subject's RFS and OS (identified roles, site scoped, in the access log), and the
sponsor's de-identified `endpoints` dataset (an export job: `Prefer: respond-async`, then the Bulk Data status
and file routes)."""

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import Response

from ecrf.audit.access import service as access
from ecrf.auth.actor import Actor
from ecrf.auth.dependencies import requires
from ecrf.endpoints import service
from ecrf.export import jobs
from ecrf.export.bulk import deidentifier
from ecrf.export.worker import kicked_off
from ecrf.responses import JSONBody
from ecrf.store.unit import read_only

router = APIRouter(tags=["endpoints"])


@router.get(
    "/subjects/{subject_id}/endpoints",
    summary="The subject's derived endpoints (CRF-SPEC 8): recurrence-free and overall survival",
)
def subject_endpoints(
    subject_id: str, request: Request, actor: Actor = Depends(requires("endpoints.read"))
) -> dict[str, Any]:
    """As of the latest write that touched the subject (recomputed in every write's transaction, both doors).
    `rfs` and `os`: `event` (true: the event, false: censored), `days` from the randomisation date (day 0),
    `date`, `evidence` (the resource and version that decided it; the randomisation date when nothing did) and
    `conflicts` (two death dates that differ, a recurrence after death: the earliest date is used, a data query
    suggested). `open_items`: a fatal adverse event without an end of study `died` on or after its onset, data
    dated after the end-of-study date. A subject not randomised answers 200 with `randomised: false`, `rfs`
    and `os` null and the `reason`; an unknown subject, or one at a site the caller may not see, is 404."""
    runtime = request.app.state.runtime
    with read_only(runtime, actor) as store:
        view, patient_id = service.subject_view(store, runtime.study, runtime.endpoints, subject_id)
    access.shown(request, actor, "endpoints.read", access.PATIENT, [patient_id])
    return view


@router.get(
    "/exports/endpoints", summary="The de-identified endpoints dataset, CSV with a manifest (Prefer: respond-async)"
)
def export_endpoints(
    request: Request,
    site: str | None = Query(None, description="one site's subjects only"),
    actor: Actor = Depends(requires("export.deidentified")),
) -> Response:
    """One row per randomised subject: `subject` (the exports' pseudonym), `arm`, `stratum`, `rfs_days`,
    `rfs_event`, `os_days`, `os_event` (1 event, 0 censored); days only, no dates. Always de-identified.
    Answers 202 with `Content-Location`, the export job's status URL (`/fhir/$export-status/{id}`), whose
    manifest lists `endpoints.csv` (count, SHA-256) and `endpoints.manifest.json`."""
    runtime = request.app.state.runtime
    if "respond-async" not in request.headers.get("prefer", ""):
        raise HTTPException(400, "the endpoints export needs the header Prefer: respond-async")
    if runtime.endpoints is None:
        raise HTTPException(404, f"study {runtime.study.id} defines no derived endpoints")
    if site is not None and site not in {s.id for s in runtime.study.sites}:
        raise HTTPException(422, f"site {site} is not a site of study {runtime.study.id}")
    if site is not None and not actor.may_see_site(site):
        raise HTTPException(404, f"site {site} is not known")
    job = jobs.create(
        runtime.engine,
        actor,
        directory=runtime.settings.exports_path,
        deidentified=True,
        profile=deidentifier(runtime).profile.name,
        request_url=str(request.url),
        group_id=runtime.study.id,
        types=["endpoints"],
        since=None,
        kind="endpoints",
        params={"site": site} if site is not None else {},
    )
    location = kicked_off(request, job.id)
    return JSONBody(
        {"detail": f"export accepted; poll {location}", "status": location},
        status_code=202,
        headers={"Content-Location": location},
    )
