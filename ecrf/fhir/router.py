"""FHIR R4 REST routes under /fhir: metadata, Bundles, create/read/vread/update/delete, history, search."""
import asyncio
import gc
import re
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool
from starlette.convertors import Convertor, register_url_convertor

from ecrf.audit.access import service as access
from ecrf.auth.actor import Actor
from ecrf.auth.dependencies import public, requires
from ecrf.db import Cancellable
from ecrf.fhir import bundle, search
from ecrf.fhir.authorise import require
from ecrf.fhir.capability import capability_statement
from ecrf.fhir.interactions import Result, searchset
from ecrf.fhir.media import if_match_version, outcome_response, read_json, respond, version_headers
from ecrf.fhir.outcome import FhirError
from ecrf.fhir.requests import request_entry
from ecrf.fhir.research_study import research_study
from ecrf.fhir.validation import WRITABLE_TYPES, model_of
from ecrf.store.errors import NotFound
from ecrf.store.service import instant
from ecrf.store.unit import read_only


class WritableType(Convertor):
    """Only the types this door keeps match, so other routers can serve other /fhir types."""

    regex = "(?:" + "|".join(WRITABLE_TYPES) + ")"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


class OtherType(Convertor):
    """A resource type name this door does not keep (Questionnaire is left to the eCRF door's router)."""

    regex = "(?!(?:" + "|".join((*WRITABLE_TYPES, "Questionnaire", "metadata")) + r")\b)[A-Z][A-Za-z]{1,63}"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("fhir_type", WritableType())
register_url_convertor("fhir_other_type", OtherType())

@asynccontextmanager
async def _warm(_app):
    """Load the R4B models before the first Bundle, then move everything loaded so far out of the
    garbage collector's reach: otherwise its periodic full passes over fhir.resources' hundreds of
    thousands of schema objects add about a third to the ingest time of a large Bundle."""
    for resource_type in (*WRITABLE_TYPES, "Bundle"):
        model_of(resource_type)
    gc.collect()
    gc.freeze()
    yield


router = APIRouter(tags=["fhir"], lifespan=_warm)
READ = Depends(requires("fhir.read"))
WRITE = Depends(requires("fhir.write"))


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/") + "/fhir"


def _runtime(request: Request):
    return request.app.state.runtime


def _shown(request: Request, actor: Actor, interaction: str, body: Any) -> Any:
    """Record the Patients (identifiers) a response is about to show, then let it go."""
    access.record_request(request, actor, interaction, access.PATIENT, access.patients_shown(body))
    return body


@router.get("/metadata", dependencies=[Depends(public)])
def metadata(request: Request):
    """The CapabilityStatement: types, interactions and search parameters this server supports."""
    runtime = _runtime(request)
    return respond(capability_statement(_base(request), runtime.study, runtime.settings, request.app))


@router.post("", summary="Transaction or batch Bundle")
@router.post("/", include_in_schema=False)
async def post_bundle(request: Request, actor: Actor = WRITE):
    """A transaction (all or nothing) or batch (each entry on its own) Bundle; answers the response Bundle."""
    try:
        body = await read_json(request)
        result = await run_in_threadpool(bundle.process, _runtime(request), actor, body, _base(request))
    except FhirError as error:
        return outcome_response(error)
    await run_in_threadpool(_shown, request, actor, result["type"].removesuffix("-response"), result)
    return respond(result)


@router.get("/ResearchStudy/{resource_id}")
def read_research_study(request: Request, resource_id: str, actor: Actor = READ):
    require(actor, "fhir.read", "ResearchStudy", "read")
    study = _runtime(request).study
    if resource_id != study.id:
        raise NotFound(f"ResearchStudy/{resource_id} is not known: this server runs {study.id}")
    return respond(research_study(study))


@router.post("/{resource_type:fhir_type}", summary="Create (conditional with If-None-Exist)")
async def create(request: Request, resource_type: str, actor: Actor = WRITE):
    criteria = request.headers.get("if-none-exist") or request.url.query or None
    return await _write(request, actor, "POST", resource_type, if_none_exist=criteria)


@router.put("/{resource_type:fhir_type}", summary="Conditional update (Type?identifier=system|value)")
async def conditional_update(request: Request, resource_type: str, actor: Actor = WRITE):
    if not request.url.query:
        return outcome_response(FhirError.one(400, "a conditional update needs search criteria, e.g. "
                                                   f"{resource_type}?identifier=system|value"))
    return await _write(request, actor, "PUT", f"{resource_type}?{request.url.query}")


@router.put("/{resource_type:fhir_type}/{resource_id}", summary="Update (If-Match for a version check)")
async def update(request: Request, resource_type: str, resource_id: str, actor: Actor = WRITE):
    return await _write(request, actor, "PUT", f"{resource_type}/{resource_id}")


@router.delete("/{resource_type:fhir_type}/{resource_id}", summary="Delete (a new, deleted version)")
async def delete(request: Request, resource_type: str, resource_id: str, actor: Actor = WRITE):
    return await _write(request, actor, "DELETE", f"{resource_type}/{resource_id}", has_body=False)


@router.delete("/{resource_type:fhir_type}", summary="Conditional delete (one match)")
async def conditional_delete(request: Request, resource_type: str, actor: Actor = WRITE):
    if not request.url.query:
        return outcome_response(FhirError.one(400, "a conditional delete needs search criteria"))
    return await _write(request, actor, "DELETE", f"{resource_type}?{request.url.query}", has_body=False)


@router.get("/{resource_type:fhir_type}", summary="Search")
async def search_type(request: Request, resource_type: str, actor: Actor = READ):
    """Its statements stop at ECRF_STATEMENT_TIMEOUT_MS (503), and as soon as the client goes away."""
    require(actor, "fhir.read", resource_type, "search")
    runtime = _runtime(request)
    settings = runtime.settings
    work = Cancellable(settings.statement_timeout_ms)
    try:
        query = search.parse(resource_type, list(request.query_params.multi_items()),
                             default_count=settings.page_size_default, max_count=settings.page_size_max)
        found = await unless_disconnected(request, work, run_in_threadpool(
            _search, runtime, actor, query, _base(request), work))
    except FhirError as error:
        return outcome_response(error)
    return respond(await run_in_threadpool(_shown, request, actor, "search", found))


def _search(runtime, actor: Actor, query, base: str, work: Cancellable) -> dict:
    with read_only(runtime, actor) as store, work.watching(store.session):
        return searchset(store, query, base)


DISCONNECT_POLL_SECONDS = 0.25


async def unless_disconnected(request: Request, work: Cancellable, call: Any) -> Any:
    """Await `call` (database work in a thread), cancelling its statement when the client disconnects."""
    task = asyncio.ensure_future(call)
    while True:
        done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_SECONDS)
        if done:
            return task.result()
        if await request.is_disconnected():
            work.cancel("disconnected")
            return await task  # ends at once with StatementCancelled; the thread is free again


@router.get("/{resource_type:fhir_type}/{resource_id}", summary="Read")
def read(request: Request, resource_type: str, resource_id: str, actor: Actor = READ):
    require(actor, "fhir.read", resource_type, "read")
    with read_only(_runtime(request), actor) as store:
        stored = store.read(resource_type, resource_id)
    return respond(_shown(request, actor, "read", stored.content), headers=version_headers(stored))


@router.get("/{resource_type:fhir_type}/{resource_id}/_history", summary="History of one resource")
def history(request: Request, resource_type: str, resource_id: str, actor: Actor = READ):
    require(actor, "fhir.read", resource_type, "history")
    base = _base(request)
    with read_only(_runtime(request), actor) as store:
        versions = store.history(resource_type, resource_id)
    entries = []
    for stored in versions:
        entry: dict[str, Any] = {"fullUrl": f"{base}/{stored.reference}"}
        if not stored.deleted:
            entry["resource"] = stored.content
        method = "DELETE" if stored.deleted else ("POST" if stored.version_id == 1 else "PUT")
        entry["request"] = {"method": method, "url": stored.reference if method != "POST" else resource_type}
        entry["response"] = {"status": "204 No Content" if stored.deleted else ("201 Created" if method == "POST" else "200 OK"),
                             "etag": stored.etag, "lastModified": instant(stored.last_updated)}
        entries.append(entry)
    history_bundle = {"resourceType": "Bundle", "type": "history", "total": len(entries), "entry": entries}
    return respond(_shown(request, actor, "history", history_bundle))


@router.get("/{resource_type:fhir_type}/{resource_id}/_history/{version_id}", summary="Read one version")
def vread(request: Request, resource_type: str, resource_id: str, version_id: str, actor: Actor = READ):
    require(actor, "fhir.read", resource_type, "vread")
    if not re.fullmatch(r"\d{1,9}", version_id):
        raise NotFound(f"{resource_type}/{resource_id} has no version {version_id!r}")
    with read_only(_runtime(request), actor) as store:
        stored = store.vread(resource_type, resource_id, int(version_id))
    return respond(_shown(request, actor, "vread", stored.content), headers=version_headers(stored))


async def _write(request: Request, actor: Actor, method: str, url: str, *, has_body: bool = True,
                 if_none_exist: str | None = None):
    """A REST write is a transaction of one entry, answered as REST (status, resource, headers)."""
    base = _base(request)
    try:
        body = await read_json(request) if has_body else None
        resource_type = url.split("?", 1)[0].split("/", 1)[0]
        entry, problems = request_entry(0, method, url, body, base, location=resource_type,
                                        resource_location=resource_type, if_none_exist=if_none_exist,
                                        if_match=if_match_version(request))
        if problems:
            raise FhirError(bundle.status_of(problems), problems)
        [result] = await run_in_threadpool(bundle.transaction, _runtime(request), actor, [entry], base)
    except FhirError as error:
        return outcome_response(error)
    if result.stored is not None and not result.stored.deleted:
        interaction = {"POST": "create", "PUT": "update"}[method]
        await run_in_threadpool(_shown, request, actor, interaction, result.stored.content)
    return _rest_response(result)


def _rest_response(result: Result):
    stored = result.stored
    if stored is None:
        return respond(None, 204)
    if stored.deleted:
        return respond(None, 204, headers={"ETag": stored.etag})
    return respond(stored.content, result.status, headers=version_headers(stored, location=result.status == 201))


@router.api_route("/{resource_type:fhir_other_type}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"],
                  include_in_schema=False)
@router.api_route("/{resource_type:fhir_other_type}/{rest:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"],
                  include_in_schema=False)
def unsupported_type(request: Request, resource_type: str, actor: Actor = READ):
    """Types this door does not keep get a precise refusal instead of a bare 404."""
    if resource_type == "ResearchStudy":
        message = f"ResearchStudy is read-only here: GET /fhir/ResearchStudy/{_runtime(request).study.id}"
        return outcome_response(FhirError.one(405, message, code="not-supported", location="ResearchStudy"))
    return outcome_response(FhirError.one(404, f"resource type {resource_type} is not supported here; supported: "
                                               f"{', '.join(WRITABLE_TYPES)}", code="not-supported",
                                          location=resource_type))
