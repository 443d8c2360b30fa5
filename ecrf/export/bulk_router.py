"""FHIR Bulk Data export (async pattern): kick-off, status polling, cancel, and authenticated downloads."""

import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import FileResponse, Response
from starlette.concurrency import run_in_threadpool

from ecrf.audit import service as audit
from ecrf.audit.access import service as access
from ecrf.auth.actor import Actor
from ecrf.auth import scopes
from ecrf.auth.dependencies import requires
from ecrf.db import reading, transaction
from ecrf.common.outcome import issue, operation_outcome
from ecrf.export import jobs
from ecrf.export import options as export_options
from ecrf.export.access import deidentify_for, may_read_job
from ecrf.export.bulk import deidentifier, discard
from ecrf.export.models import ExportJob
from ecrf.export.source import resource_types, study_patients
from ecrf.store.models import ResourceHead
from ecrf.export.worker import kicked_off, worker_lifespan
from ecrf.responses import FHIR_JSON, JSONBody, fhir_base
from ecrf.store.indexing import parse_moment
from ecrf.store.service import instant

router = APIRouter(tags=["export"], lifespan=worker_lifespan)
EXPORT = Depends(requires("export.deidentified"))
JOB = Depends(requires("export.job"))  # status, files and cancel: the job's owner (ecrf/export/access.py)
NDJSON = "application/fhir+ndjson"
OUTPUT_FORMATS = {None, NDJSON, "application/ndjson", "ndjson"}
TYPE_NAME = re.compile(r"^[A-Z][A-Za-z]{1,63}$")
MEDIA_TYPES = {
    ".xml": "application/xml",
    ".json": "application/json",
    ".ndjson": "application/x-ndjson",
    ".xpt": "application/octet-stream",
    ".zip": "application/zip",
    ".csv": "text/csv",
}  # CDISC export jobs' files (ecrf/cdisc)
DEIDENTIFY = Query(True, description="false: identified data (data_manager only; a sponsor gets 403)")


def _outcome(
    status: int,
    message: str,
    *,
    severity: str = "error",
    code: str = "processing",
    headers: dict[str, str] | None = None,
) -> JSONBody:
    return JSONBody(
        operation_outcome([issue(message, code=code, severity=severity)]),
        status_code=status,
        media_type=FHIR_JSON,
        headers=headers,
    )


KICK_OFF_SUMMARY = "Bulk Data export (Prefer: respond-async); POST takes the parameters as a Parameters body"
PARAMETERS_BODY = {
    "requestBody": {
        "required": False,
        "content": {
            "application/fhir+json": {"schema": {"type": "object", "description": "a FHIR Parameters resource"}}
        },
    }
}


def _kick_off_route(path: str):
    """GET and POST kick-off at one path (separate OpenAPI operations)."""

    def register(function):
        name = function.__name__
        router.get(path, summary=KICK_OFF_SUMMARY, operation_id=f"{name}_get")(function)
        router.post(path, summary=KICK_OFF_SUMMARY, operation_id=f"{name}_post", openapi_extra=PARAMETERS_BODY)(
            function
        )
        return function

    return register


@_kick_off_route("/$export")
def export_system(request: Request, deidentify: bool = DEIDENTIFY, actor: Actor = EXPORT):
    """System level; de-identified: the study's subjects only."""
    return _kick_off(request, actor, "system", None, deidentify)


@_kick_off_route("/Patient/$export")
def export_patients(request: Request, deidentify: bool = DEIDENTIFY, actor: Actor = EXPORT):
    """Patient level: every Patient of the study and their compartments (`patient` narrows it)."""
    return _kick_off(request, actor, "patient", request.app.state.runtime.study.id, deidentify)


@_kick_off_route("/Group/{group_id}/$export")
def export_group(request: Request, group_id: str, deidentify: bool = DEIDENTIFY, actor: Actor = EXPORT):
    """The study's subjects (the Group is the study id)."""
    if group_id != request.app.state.runtime.study.id:
        raise HTTPException(
            404, f"Group/{group_id} is not known; the study's subjects are Group/{request.app.state.runtime.study.id}"
        )
    return _kick_off(request, actor, "group", group_id, deidentify)


def _kick_off(request: Request, actor: Actor, level: str, group_id: str | None, deidentify: bool) -> Response:
    runtime = request.app.state.runtime
    prefer = request.headers.get("prefer", "")
    if "respond-async" not in prefer:
        raise HTTPException(400, "a Bulk Data export needs the header Prefer: respond-async")
    accepted = {part.split(";")[0].strip().lower() for part in request.headers.get("accept", "").split(",")}
    if not accepted & {FHIR_JSON, "*/*", "application/*"}:
        raise HTTPException(
            400,
            "a Bulk Data kick-off needs the header Accept: application/fhir+json "
            "(the format of its OperationOutcome; the only one supported)",
        )
    lenient = "handling=lenient" in prefer.replace(" ", "")
    body = getattr(request.state, "json_body", None) if request.method == "POST" else None
    params = export_options.parameters(request.url.query, body)
    type_param = export_options.single(params, "_type")
    since_param = export_options.single(params, "_since")
    output_format = export_options.single(params, "_outputFormat")
    if output_format not in OUTPUT_FORMATS:
        raise HTTPException(400, f"_outputFormat {output_format} is not supported; use {NDJSON}")
    deidentified = deidentify_for(actor, deidentify)
    profile = deidentifier(runtime).profile if deidentified else None
    if deidentified:
        group_id = runtime.study.id  # de-identified data are study data: the subjects' compartments, never more
    since = None
    if since_param is not None:
        since = parse_moment(since_param)
        if since is None or len(since_param) < 10:
            raise HTTPException(400, f"_since {since_param!r} is not a FHIR instant")
        if since > jobs.now():
            raise HTTPException(400, f"_since {since_param} is in the future")
    allowed = profile.resource_types if profile else None
    if type_param:
        types = sorted({name.strip() for name in type_param.split(",") if name.strip()})
        bad = [name for name in types if not TYPE_NAME.match(name)]
        refused = [name for name in types if allowed is not None and name not in allowed]
        if bad or refused or not types:
            raise HTTPException(
                400,
                f"_type: {', '.join(bad)} not resource types"
                if bad
                else f"_type: {', '.join(refused)} never leave de-identified (profile {profile.name})",
            )
    else:
        types = [name for name in resource_types(runtime.engine) if allowed is None or name in allowed]
    types = _within_scopes(actor, types, explicit=bool(type_param))
    patient_ids = _study_patient_ids(runtime, deidentified) if params.get("patient") else {}
    options = export_options.read(
        params,
        level=level,
        types=types,
        deidentified=deidentified,
        lenient=lenient,
        patient_ids=patient_ids,
        settings=runtime.settings,
    )
    job = jobs.create(
        runtime.engine,
        actor,
        directory=runtime.settings.exports_path,
        deidentified=deidentified,
        profile=profile.name if profile else None,
        request_url=str(request.url),
        group_id=group_id,
        types=types,
        since=since,
        options=options.as_json(),
    )
    location = kicked_off(request, job.id)
    return _outcome(
        202,
        f"export accepted; poll {location}",
        severity="information",
        code="informational",
        headers={"Content-Location": location},
    )


def _study_patient_ids(runtime, deidentified: bool) -> dict[str, str]:
    """The study's Patients by the id the caller sees (a pseudonym when de-identified) -> stored id."""
    from ecrf.db import reading
    from ecrf.export.source import study_patients

    with reading(runtime.engine) as session:
        stored = [pid for pid in session.connection().execute(study_patients(runtime.study.id)).scalars() if pid]
    if not deidentified:
        return {pid: pid for pid in stored}
    deid = deidentifier(runtime)
    return {deid.pseudonym(pid): pid for pid in stored}


def _within_scopes(actor: Actor, types: list[str], *, explicit: bool) -> list[str]:
    """The types the token's SMART scopes let it read (`rs`): an export asked for by type is refused whole
    when one is outside them; an export of everything exports what they cover."""
    lacking = [name for name in types if not scopes.allows(actor.scopes, name, "rs")]
    if lacking and (explicit or len(lacking) == len(types)):
        raise HTTPException(
            403,
            f"exporting {', '.join(lacking)} needs the SMART scope system/<type>.rs "
            "(or system/*.rs), which this token's scopes do not grant",
        )
    return [name for name in types if name not in lacking]


def _job_of(request: Request, actor: Actor, job_id: str) -> ExportJob:
    job = jobs.get(request.app.state.runtime.engine, job_id)
    if (
        job is None
        or job.status in (jobs.CANCELLED, jobs.EXPIRED)
        or not may_read_job(actor, job.owner_sub, job.deidentified, job.kind)
    ):
        raise HTTPException(404, f"export {job_id} is not known (or was cancelled or has expired)")
    return job


@router.get("/$export-status/{job_id}", summary="Poll an export: 202 with X-Progress while running, then the manifest")
def export_status(request: Request, job_id: str, actor: Actor = JOB):
    job = _job_of(request, actor, job_id)
    if job.status in jobs.ACTIVE:
        cursor = json.loads(job.cursor) if job.cursor else {}
        current = (cursor.get("current") or {}).get("type")
        done = len(cursor.get("done") or [])
        progress = (
            f"{job.status}: {job.exported} resources written, {done} of {len(json.loads(job.types))} types done"
            + (f", now {current}" if current else "")
        )
        return Response(status_code=202, headers={"X-Progress": progress[:200], "Retry-After": "1"})
    if job.status == jobs.FAILED:
        return _outcome(500, job.error or "the export failed", code="exception")
    return JSONBody(_manifest(request, job), headers={"Expires": _expires(request, job)})


def _manifest(request: Request, job: ExportJob) -> dict[str, Any]:
    base = fhir_base(request)
    sections: dict[str, list[dict[str, Any]]] = {"output": [], "deleted": [], "error": []}
    for entry in json.loads(job.output or "[]"):  # error: resources not exported, lenient kick-off notes
        sections[jobs.section_of(entry)].append(
            {
                "type": entry["type"],
                **({"format": entry["format"]} if "format" in entry else {}),
                "url": f"{base}/$export-file/{job.id}/{entry['file']}",
                **{key: entry[key] for key in ("count", "sha256", "audit_chain_head", "values") if key in entry},
            }
        )
    profile = None
    if job.deidentified:
        runtime = request.app.state.runtime
        applied = deidentifier(runtime).profile
        profile = {
            "profile": job.profile,
            "title": applied.title if applied.name == job.profile else None,
            "pseudonyms": "HMAC-SHA256 with the study secret, stable across exports",
            "dates": "shifted by a secret per-subject offset (intervals preserved)",
        }
    return {
        "transactionTime": instant(job.transaction_time),
        "request": job.request_url,
        "requiresAccessToken": True,
        "output": sections["output"],
        "deleted": sections["deleted"],
        "error": sections["error"],
        "extension": {"deidentification": profile, "deidentified": job.deidentified},
    }


def _expires(request: Request, job: ExportJob) -> str:
    hours = request.app.state.runtime.settings.export_retention_hours
    moment = (job.finished_at or jobs.now()) + timedelta(hours=hours)
    return moment.strftime("%a, %d %b %Y %H:%M:%S GMT")


@router.delete("/$export-status/{job_id}", summary="Cancel an export (or delete its files)", status_code=202)
def export_cancel(request: Request, job_id: str, actor: Actor = JOB):
    job = _job_of(request, actor, job_id)
    if not jobs.cancel(request.app.state.runtime.engine, job.id):
        raise HTTPException(404, f"export {job_id} is already finished with")
    discard(job.directory)  # the worker discards again if it was writing
    return _outcome(202, f"export {job_id} cancelled", severity="information", code="informational")


@router.get(
    "/$export-file/{job_id}/{file_name}", summary="Download one NDJSON file of a finished export (its owner only)"
)
async def export_file(request: Request, job_id: str, file_name: str, actor: Actor = JOB):
    job = await run_in_threadpool(_job_of, request, actor, job_id)
    entries = {entry["file"]: entry for entry in json.loads(job.output or "[]")} if job.status == jobs.COMPLETED else {}
    entry = entries.get(file_name)
    path = Path(job.directory) / file_name
    if entry is None or not path.is_file():
        raise HTTPException(404, f"export {job_id} has no file {file_name}")
    if entry.get("section", "output") == "output" and not scopes.allows(actor.scopes, entry["type"], "rs"):
        raise HTTPException(
            403,
            f"downloading {entry['type']} needs the SMART scope system/{entry['type']}.rs "
            "(or system/*.rs), which this token's scopes do not grant",
        )
    await run_in_threadpool(_audit_download, request, actor, job, entry)
    if not job.deidentified and job.kind == "bulk" and entry["type"] == "Patient":
        await run_in_threadpool(_identifiers_shown, request, actor, path)
    elif not job.deidentified and job.kind != "bulk":  # an identified CDISC file: every subject of the job
        await run_in_threadpool(_job_subjects_shown, request, actor, job)
    return FileResponse(path, media_type=MEDIA_TYPES.get(path.suffix, NDJSON) if job.kind != "bulk" else NDJSON)


def _identifiers_shown(request: Request, actor: Actor, path: Path) -> None:
    """An identified Patient file carries every identifier: the access log names each Patient in it."""
    with path.open("rb") as lines:
        patient_ids = [orjson.loads(line).get("id") for line in lines if line.strip()]
    access.shown(request, actor, "export.bulk_file", access.IDENTIFIED_EXPORT, patient_ids)


def _job_subjects_shown(request: Request, actor: Actor, job: ExportJob) -> None:
    site = json.loads(job.params or "{}").get("site")
    sites = jobs.owner(job).sites
    head = ResourceHead.__table__.c
    query = study_patients(job.group_id or request.app.state.runtime.study.id)
    if site is not None:
        query = query.where(head.site == site)
    if sites is not None:
        query = query.where(head.site.in_(sorted(sites)))
    with reading(request.app.state.runtime.engine) as session:
        patient_ids = list(session.execute(query).scalars())
    access.shown(request, actor, f"export.{job.kind}_file", access.IDENTIFIED_EXPORT, patient_ids)


def _audit_download(request: Request, actor: Actor, job: ExportJob, entry: dict[str, Any]) -> None:
    with transaction(request.app.state.runtime.engine) as session:
        audit.append(
            session,
            actor,
            "export.download",
            source="export",
            resource=f"export/{job.id}",
            reason=job.profile,
            new_value=json.dumps(
                {"file": entry["file"], "count": entry.get("count"), "deidentified": job.deidentified}, sort_keys=True
            ),
        )
