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
from ecrf.auth.policy import can
from ecrf.db import Cancellable
from ecrf.fhir import bundle, json_patch
from ecrf.search import engine as search
from ecrf.fhir.authorise import refusal, require
from ecrf.fhir.capability import capability_statement
from ecrf.fhir.history import history_query
from ecrf.fhir.interactions import Result, ignored_outcome, searchset
from urllib.parse import parse_qsl

from ecrf.fhir.media import (
    if_match_version,
    outcome_response,
    preferences,
    read_json,
    respond,
    strict_handling,
    version_headers,
)
from ecrf.common.outcome import FhirError
from ecrf.fhir.requests import request_entry
from ecrf.fhir.research_study import research_study
from ecrf.fhir.validation import WRITABLE_TYPES, model_of
from ecrf.common.errors import NotFound
from ecrf.responses import fhir_base
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


def _runtime(request: Request):
    return request.app.state.runtime


def _shown(request: Request, actor: Actor, interaction: str, body: Any) -> Any:
    """Record the Patients (identifiers) a response is about to show, then let it go."""
    access.shown(request, actor, interaction, access.PATIENT, access.patients_shown(body))
    return body


@router.get("/metadata", dependencies=[Depends(public)])
def metadata(request: Request):
    """The CapabilityStatement: types, interactions and search parameters this server supports."""
    runtime = _runtime(request)
    return respond(capability_statement(fhir_base(request), runtime.study, runtime.settings, request.app))


@router.post("", summary="Transaction or batch Bundle")
@router.post("/", include_in_schema=False)
async def post_bundle(request: Request, actor: Actor = WRITE):
    """A transaction (all or nothing) or batch (each entry on its own) Bundle; answers the response Bundle."""
    body = await read_json(request)
    wanted = preferences(request).get("return")
    result = await run_in_threadpool(
        bundle.process,
        _runtime(request),
        actor,
        body,
        fhir_base(request),
        wanted if wanted in ("minimal", "representation", "operationoutcome") else None,
    )
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
        return outcome_response(
            FhirError.one(
                400, f"a conditional update needs search criteria, e.g. {resource_type}?identifier=system|value"
            )
        )
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
    return await _search_answer(request, resource_type, actor, list(request.query_params.multi_items()))


@router.post("/{resource_type:fhir_type}/_search", summary="Search with the parameters in a form-encoded body")
async def search_type_post(request: Request, resource_type: str, actor: Actor = READ):
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        return outcome_response(
            FhirError.one(
                415,
                f"content type {content_type or 'none'!r} is not supported by "
                "_search: send application/x-www-form-urlencoded",
                code="not-supported",
            )
        )
    try:
        body = (await request.body()).decode("utf-8")
    except UnicodeDecodeError:
        return outcome_response(FhirError.one(400, "the search parameters are not UTF-8"))
    pairs = [*request.query_params.multi_items(), *parse_qsl(body, keep_blank_values=True)]
    return await _search_answer(request, resource_type, actor, pairs)


async def _search_answer(request: Request, resource_type: str, actor: Actor, pairs: list[tuple[str, str]]):
    require(actor, "fhir.read", resource_type, "search")
    runtime = _runtime(request)
    settings = runtime.settings
    work = Cancellable(settings.statement_timeout_ms)
    query = search.parse(
        resource_type,
        pairs,
        default_count=settings.page_size_default,
        max_count=settings.page_size_max,
        strict=strict_handling(request),
        study=runtime.study,
    )
    if query.demographic and not can(actor, "identifiers.read"):
        raise FhirError.one(
            403,
            f"searching Patients by {', '.join(search.DEMOGRAPHIC_PARAMS)} is for roles "
            f"that may read identifiers, not {actor.role}",
            code="forbidden",
        )
    found = await unless_disconnected(
        request, work, run_in_threadpool(_search, runtime, actor, query, fhir_base(request), work)
    )
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


@router.get("/_history", summary="History of every resource this client may see (system level)")
def system_history(request: Request, actor: Actor = READ):
    readable = [t for t in WRITABLE_TYPES if refusal(actor, "fhir.read", t, "r", f"history {t}") is None]
    if not readable:
        require(actor, "fhir.read", WRITABLE_TYPES[0], "history")  # raises the 403 with its reason
    return _history(request, actor, readable, None, "_history")


@router.get("/{resource_type:fhir_type}/_history", summary="History of every resource of one type")
def type_history(request: Request, resource_type: str, actor: Actor = READ):
    require(actor, "fhir.read", resource_type, "history")
    return _history(request, actor, [resource_type], None, f"{resource_type}/_history")


def _history(request: Request, actor: Actor, resource_types: list[str], resource_id: str | None, path: str):
    """A history Bundle, newest first, paged like a search: _count, _offset, _since (an instant), _at."""
    runtime = _runtime(request)
    settings = runtime.settings
    base = fhir_base(request)
    query = history_query(
        list(request.query_params.multi_items()),
        default_count=settings.page_size_default,
        max_count=settings.page_size_max,
        strict=strict_handling(request),
        types=tuple(resource_types) if path == "_history" else (),
    )
    if query.types is not None:
        resource_types = query.types
    with read_only(runtime, actor) as store:
        versions, total = store.history_page(
            resource_types, resource_id, since=query.since, at=query.at, count=query.count, offset=query.offset
        )
    entries = []
    for stored in versions:
        entry: dict[str, Any] = {"fullUrl": f"{base}/{stored.reference}"}
        if not stored.deleted:
            entry["resource"] = stored.content
        method = "DELETE" if stored.deleted else ("POST" if stored.version_id == 1 else "PUT")
        entry["request"] = {"method": method, "url": stored.reference if method != "POST" else stored.resource_type}
        entry["response"] = {
            "status": "204 No Content" if stored.deleted else ("201 Created" if method == "POST" else "200 OK"),
            "etag": stored.etag,
            "lastModified": instant(stored.last_updated),
        }
        entries.append(entry)
    links = [{"relation": "self", "url": query.link(base, path, query.offset)}]
    if query.count and query.offset + len(versions) < total:
        links.append({"relation": "next", "url": query.link(base, path, query.offset + query.count)})
    if query.offset > 0 and query.count:
        links.append({"relation": "previous", "url": query.link(base, path, max(0, query.offset - query.count))})
    history_bundle = {"resourceType": "Bundle", "type": "history", "total": total, "link": links, "entry": entries}
    if query.ignored:
        history_bundle["entry"].append({"resource": ignored_outcome(query.ignored)})
    return respond(_shown(request, actor, "history", history_bundle))


@router.get("/{resource_type:fhir_type}/{resource_id}", summary="Read")
def read(request: Request, resource_type: str, resource_id: str, actor: Actor = READ):
    require(actor, "fhir.read", resource_type, "read")
    with read_only(_runtime(request), actor) as store:
        stored = store.read(resource_type, resource_id)
    return respond(_shown(request, actor, "read", stored.content), headers=version_headers(stored))


@router.get("/{resource_type:fhir_type}/{resource_id}/_history", summary="History of one resource")
def history(request: Request, resource_type: str, resource_id: str, actor: Actor = READ):
    require(actor, "fhir.read", resource_type, "history")
    return _history(request, actor, [resource_type], resource_id, f"{resource_type}/{resource_id}/_history")


@router.get("/{resource_type:fhir_type}/{resource_id}/_history/{version_id}", summary="Read one version")
def vread(request: Request, resource_type: str, resource_id: str, version_id: str, actor: Actor = READ):
    require(actor, "fhir.read", resource_type, "vread")
    if not re.fullmatch(r"\d{1,9}", version_id):
        raise NotFound(f"{resource_type}/{resource_id} has no version {version_id!r}")
    with read_only(_runtime(request), actor) as store:
        stored = store.vread(resource_type, resource_id, int(version_id))
    return respond(_shown(request, actor, "vread", stored.content), headers=version_headers(stored))


async def _write(
    request: Request,
    actor: Actor,
    method: str,
    url: str,
    *,
    has_body: bool = True,
    if_none_exist: str | None = None,
    body: Any = None,
    if_match: int | None = None,
    patching: bool = False,
):
    """A REST write is a transaction of one entry, answered as REST (status, resource, headers)."""
    base = fhir_base(request)
    if body is None:
        body = await read_json(request) if has_body else None
        if_match = if_match_version(request)
    resource_type = url.split("?", 1)[0].split("/", 1)[0]
    entry, problems = request_entry(
        0,
        method,
        url,
        body,
        base,
        location=resource_type,
        resource_location=resource_type,
        if_none_exist=if_none_exist,
        if_match=if_match,
    )
    if problems:
        raise FhirError(bundle.status_of(problems), problems)
    [result] = await run_in_threadpool(bundle.transaction, _runtime(request), actor, [entry], base)
    wanted = preferences(request).get("return", "representation")
    if result.stored is not None and not result.stored.deleted and wanted == "representation":
        interaction = {"POST": "create", "PUT": "update"}[method]
        await run_in_threadpool(_shown, request, actor, interaction if not patching else "patch", result.stored.content)
    return _rest_response(result, wanted)


def _rest_response(result: Result, wanted: str = "representation"):
    """The answer of a REST write; Prefer: return=minimal (no body), OperationOutcome, or representation."""
    stored = result.stored
    if stored is None:
        return respond(None, 204)
    if stored.deleted:
        return respond(None, 204, headers={"ETag": stored.etag})
    headers = version_headers(stored, location=result.status == 201)
    if wanted == "minimal":
        return respond(None, result.status, headers=headers)
    if wanted == "operationoutcome":
        return respond(
            {
                "resourceType": "OperationOutcome",
                "issue": [
                    {
                        "severity": "information",
                        "code": "informational",
                        "diagnostics": f"{result.status_line}: {stored.reference} version {stored.version_id}",
                    }
                ],
            },
            result.status,
            headers=headers,
        )
    return respond(stored.content, result.status, headers=headers)


@router.patch("/{resource_type:fhir_type}/{resource_id}", summary="JSON Patch (If-Match for a version check)")
async def patch(request: Request, resource_type: str, resource_id: str, actor: Actor = WRITE):
    return await _patch(request, actor, resource_type, resource_id, None)


@router.patch("/{resource_type:fhir_type}", summary="Conditional JSON Patch (one match)")
async def conditional_patch(request: Request, resource_type: str, actor: Actor = WRITE):
    if not request.url.query:
        return outcome_response(
            FhirError.one(
                400, f"a conditional patch needs search criteria, e.g. {resource_type}?identifier=system|value"
            )
        )
    return await _patch(request, actor, resource_type, None, request.url.query)


async def _patch(request: Request, actor: Actor, resource_type: str, resource_id: str | None, criteria: str | None):
    """JSON Patch: the current version patched, then written as an update of that version (a PUT with its
    If-Match), so lifecycle, scope and version rules are those of PUT; without the client's If-Match a
    concurrent change is met by patching the new version."""
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type != "application/json-patch+json":
        return outcome_response(
            FhirError.one(
                415,
                f"content type {content_type or 'none'!r} is not supported by PATCH: send application/json-patch+json",
                code="not-supported",
            )
        )
    try:
        operations = request.state.json_body
    except AttributeError:
        operations = None
    if_match = if_match_version(request)
    if not isinstance(operations, list):
        raise FhirError.one(400, "a JSON Patch is an array of operations")
    for attempt in range(3):
        current = await run_in_threadpool(_patch_target, request, actor, resource_type, resource_id, criteria)
        if if_match is not None and current.version_id != if_match:
            raise FhirError.one(
                412,
                f"{current.reference} is at version {current.version_id}, not {if_match}: read it again",
                code="conflict",
            )
        patched = json_patch.patched(current.content, operations, resource_type)
        response = await _write(
            request, actor, "PUT", current.reference, body=patched, if_match=current.version_id, patching=True
        )
        if response.status_code != 412 or if_match is not None or attempt == 2:
            return response
    raise AssertionError("unreachable")


def _patch_target(request: Request, actor: Actor, resource_type: str, resource_id: str | None, criteria: str | None):
    with read_only(_runtime(request), actor) as store:
        if resource_id is None:
            found = search.matching_ids(store, resource_type, criteria, limit=2)
            if not found:
                raise FhirError.one(404, f"{resource_type}?{criteria} matches no resource", code="not-found")
            if len(found) > 1:
                raise FhirError.one(
                    412, f"{resource_type}?{criteria} matches more than one resource", code="multiple-matches"
                )
            resource_id = found[0]
        return store.read(resource_type, resource_id)


@router.api_route(
    "/{resource_type:fhir_other_type}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"], include_in_schema=False
)
@router.api_route(
    "/{resource_type:fhir_other_type}/{rest:path}",
    methods=["GET", "POST", "PUT", "DELETE", "PATCH"],
    include_in_schema=False,
)
def unsupported_type(request: Request, resource_type: str, actor: Actor = READ):
    """Types this door does not keep get a precise refusal instead of a bare 404."""
    if resource_type == "ResearchStudy":
        message = f"ResearchStudy is read-only here: GET /fhir/ResearchStudy/{_runtime(request).study.id}"
        return outcome_response(FhirError.one(405, message, code="not-supported", location="ResearchStudy"))
    return outcome_response(
        FhirError.one(
            404,
            f"resource type {resource_type} is not supported here; supported: {', '.join(WRITABLE_TYPES)}",
            code="not-supported",
            location=resource_type,
        )
    )
