"""CDISC exports under /api/v1 (issue 19's fixed contract): kick-off with `Prefer: respond-async` answers 202 with
`Content-Location`, the status URL of the export job (the Bulk Data status and file routes serve every export
job: 202 while running, then the manifest with `output: [{type, format?, url, count?}]`, files to their owner)."""

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import Response

from ecrf.auth.actor import Actor
from ecrf.auth.dependencies import requires
from ecrf.auth.policy import can
from ecrf.cdisc.mapping import load_mapping
from ecrf.export import jobs
from ecrf.export.access import deidentify_for
from ecrf.export.bulk import deidentifier
from ecrf.export.worker import kicked_off
from ecrf.responses import JSONBody

router = APIRouter(tags=["export"])
EXPORT = Depends(requires("export.deidentified"))
ODM = Depends(requires("export.job"))  # exporters, and an investigator for its own site's archive
DEIDENTIFY = Query(True, description="false: identified data (data_manager only; a sponsor gets 403)")
SITE = Query(
    None,
    description="one site's subjects only (a site's archive; an investigator: its own site, "
    "with deidentify=false and mode=archive)",
)
MODES = ("archive", "snapshot")


@router.get(
    "/exports/odm", summary="CDISC ODM 1.3.2 (Prefer: respond-async): the archive with audit trail, or a snapshot"
)
def export_odm(
    request: Request,
    mode: str = Query("archive", description="archive (Transactional, every version with its AuditRecord) or snapshot"),
    site: str | None = SITE,
    deidentify: bool = DEIDENTIFY,
    actor: Actor = ODM,
) -> Response:
    if mode not in MODES:
        raise HTTPException(400, f"mode {mode!r}: use archive or snapshot")
    if not can(actor, "export.deidentified"):  # an investigator: the identified archive of its own site only
        if site is None or deidentify or mode != "archive":
            raise HTTPException(
                403,
                f"role {actor.role} may export only its own site's archive: "
                "site=<its site>, deidentify=false, mode=archive",
            )
        return _kick_off(request, actor, "odm", {"mode": mode, "site": site}, deidentify, site_archive=True)
    return _kick_off(request, actor, "odm", {"mode": mode, "site": site}, deidentify)


@router.get(
    "/exports/sdtm",
    summary="SDTM datasets (Dataset-JSON 1.1, NDJSON, SAS XPT v5) and define.xml (Prefer: respond-async)",
)
def export_sdtm(
    request: Request, site: str | None = SITE, deidentify: bool = DEIDENTIFY, actor: Actor = EXPORT
) -> Response:
    runtime = request.app.state.runtime
    load_mapping(runtime.settings.study_dir, runtime.study)  # MappingError: 409, with what does not fit
    return _kick_off(request, actor, "sdtm", {"site": site}, deidentify)


def _kick_off(
    request: Request, actor: Actor, kind: str, params: dict, deidentify: bool, site_archive: bool = False
) -> Response:
    runtime = request.app.state.runtime
    if "respond-async" not in request.headers.get("prefer", ""):
        raise HTTPException(400, "a CDISC export needs the header Prefer: respond-async")
    site = params.get("site")
    if site is not None and site not in {s.id for s in runtime.study.sites}:
        raise HTTPException(422, f"site {site} is not a site of study {runtime.study.id}")
    if site is not None and not actor.may_see_site(site):
        raise HTTPException(404, f"site {site} is not known")
    deidentified = False if site_archive else deidentify_for(actor, deidentify)
    profile = deidentifier(runtime).profile.name if deidentified else None
    job = jobs.create(
        runtime.engine,
        actor,
        directory=runtime.settings.exports_path,
        deidentified=deidentified,
        profile=profile,
        request_url=str(request.url),
        group_id=runtime.study.id,
        types=[kind],
        since=None,
        kind=kind,
        params={key: value for key, value in params.items() if value is not None},
    )
    location = kicked_off(request, job.id)
    return JSONBody(
        {"detail": f"export accepted; poll {location}", "status": location},
        status_code=202,
        headers={"Content-Location": location},
    )
