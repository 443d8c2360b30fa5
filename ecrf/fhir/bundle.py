"""POST /fhir: transaction (all or nothing) and batch (each entry on its own) Bundles."""

from collections import Counter
from functools import partial
from typing import Any

from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError, OperationalError

from ecrf.auth.actor import Actor
from ecrf.db import is_outage
from ecrf.common.outcome import FhirError, issue, validation_issues
from ecrf.fhir.interactions import Engine, Entry, Result, in_fhir_order
from ecrf.fhir.requests import bundle_entry
from ecrf.fhir.validation import model_of, prepare
from ecrf.json_rules import Refusal
from ecrf.json_stream import StreamedObject
from ecrf.services import Services as Runtime  # the protocol; ecrf.runtime has the one running
from ecrf.common.errors import Conflict
from ecrf.store.service import WriteContext, instant
from ecrf.store.unit import writing

ATTEMPTS = 5
RETRYABLE = (Conflict, IntegrityError, OperationalError)
STRUCTURE_CODES = frozenset({"structure", "value", "required", "invalid", "code-invalid"})


def status_of(issues: list[dict[str, Any]]) -> int:
    """400 when the request is malformed, 422 when it is well formed but breaks a rule of this server."""
    return 400 if any(i.get("code") in STRUCTURE_CODES for i in issues) else 422


def shell_issues(body: Any, entries: int | None, max_entries: int) -> list[dict[str, Any]]:
    """Checks on the Bundle itself (`entries` of them, when not in the body), before any entry is validated."""
    if not isinstance(body, dict) or body.get("resourceType") != "Bundle":
        shown = body.get("resourceType") if isinstance(body, dict) else type(body).__name__
        raise FhirError.one(
            400,
            f"POST /fhir takes a Bundle of type transaction or batch, not {shown!r}",
            code="structure",
            location="Bundle",
        )
    if entries is None:
        if not isinstance(body.get("entry", []), list):
            raise FhirError.one(400, "Bundle.entry must be an array", code="structure", location="Bundle.entry")
        entries = len(body.get("entry", []))
    if entries > max_entries:
        raise FhirError.one(
            413,
            f"the Bundle has {entries} entries; the limit is {max_entries}",
            code="too-costly",
            location="Bundle.entry",
        )
    if body.get("type") not in ("transaction", "batch"):
        raise FhirError.one(
            422,
            f"Bundle.type {body.get('type')!r} is not processed here: send a transaction or a batch",
            code="not-supported",
            location="Bundle.type",
        )
    try:
        model_of("Bundle").model_validate({**body, "entry": []})
    except ValidationError as error:
        return validation_issues(error.errors(include_url=False, include_input=False), "Bundle")
    return []


def process(
    runtime: Runtime, actor: Actor, body: dict[str, Any] | StreamedObject, base_url: str, wanted: str | None = None
) -> dict[str, Any]:
    """A Bundle parsed whole, or streamed (its entries read one at a time and read again when written).
    `wanted`: the Prefer header's `return` (minimal, representation, OperationOutcome) for the written entries."""
    streamed = body if isinstance(body, StreamedObject) else None
    shell = body if streamed is None else streamed.shell
    problems = shell_issues(shell, None if streamed is None else len(streamed), runtime.settings.max_bundle_entries)
    parsed, unsupported, urls = _entries(body, base_url)
    if shell["type"] == "transaction":
        problems += [problem for _, entry_problems in parsed for problem in entry_problems]
        if problems:
            raise FhirError(status_of(problems), _summarised(problems, unsupported))
        return _response("transaction-response", transaction(runtime, actor, [e for e, _ in parsed], base_url), wanted)
    if problems:
        raise FhirError(status_of(problems), problems)
    return _response("batch-response", batch(runtime, actor, parsed, base_url, urls), wanted)


def _entries(
    body: dict[str, Any] | StreamedObject, base_url: str
) -> tuple[list[tuple[Entry | None, list]], Counter, dict[str, int]]:
    """Every entry read and validated, how many entries have each unsupported resource type, and the fullUrls
    (-> entry index). A streamed entry lets its resource go once validated: it is read again from the body
    when it is written."""
    streamed = body if isinstance(body, StreamedObject) else None
    parsed, unsupported, urls = [], Counter(), {}
    try:
        for index, raw in enumerate(body.get("entry", [])) if streamed is None else streamed.elements():
            if isinstance(raw, dict) and isinstance(raw.get("fullUrl"), str):
                urls.setdefault(raw["fullUrl"], index)
            parsed.append(_entry(streamed, raw, index, base_url, unsupported))
    except Refusal as refusal:  # a rule the guard checks on a body parsed whole, here as each entry is read
        raise FhirError.one(
            refusal.status, refusal.message, code=refusal.code, location=refusal.location(fhir=True)
        ) from None
    return parsed, unsupported, urls


def _entry(
    streamed: StreamedObject | None, raw: Any, index: int, base_url: str, unsupported: Counter
) -> tuple[Entry | None, list]:
    entry, problems = bundle_entry(raw, index, base_url)
    if any(problem.get("code") == "not-supported" and _is_resource(problem) for problem in problems):
        resource = raw.get("resource") if isinstance(raw, dict) else None
        unsupported[(resource if isinstance(resource, dict) else {}).get("resourceType") or "?"] += 1
    if streamed is not None and entry is not None and entry.resource is not None:
        entry.reload = partial(_resource_of, streamed, index)
        entry.may_search = streamed.holds(index, b"?")
        entry.release()
    return entry, problems


def _resource_of(streamed: StreamedObject, index: int) -> dict[str, Any]:
    resource = streamed.element(index)["resource"]
    prepare(resource)
    return resource


def engine_for(runtime: Runtime, store, base_url: str) -> Engine:
    settings = runtime.settings
    return Engine(
        store,
        base_url,
        runtime.study,
        WriteContext(source="fhir"),
        page_size=(settings.page_size_default, settings.page_size_max),
    )


def transaction(runtime: Runtime, actor: Actor, entries: list[Entry], base_url: str) -> list[Result]:
    """All entries in one unit of work; a lost race on a conditional key retries the whole of it."""
    for attempt in range(ATTEMPTS):
        engine = None
        try:
            with writing(runtime, actor) as store:
                engine = engine_for(runtime, store, base_url)
                results = engine.run(entries)
            return [results[entry.index] for entry in entries]
        except RETRYABLE as error:
            if is_outage(error):
                raise  # the database is away: 503 with Retry-After (ecrf/errors.py), not a lost race
            if attempt == ATTEMPTS - 1:
                raise FhirError.one(
                    409, "a concurrent request kept changing the same resources: send it again", code="transient"
                )
            if engine is not None:  # only before a retry: the stored content answered shares the rewritten references
                engine.undo_rewrites()
        finally:
            for entry in entries:
                entry.target_id, entry.matched = None, False
                entry.release()
    raise AssertionError("unreachable")


def batch(
    runtime: Runtime,
    actor: Actor,
    parsed: list[tuple[Entry | None, list]],
    base_url: str,
    urls: dict[str, int] | None = None,
) -> list[Result]:
    """Each entry in its own savepoint: a failing entry gets its OperationOutcome, the others commit. An entry
    referring to a refused one (or to a later one) is told so; held-back entries (types not kept) list the
    references to them removed from the entries that were stored."""
    urls = urls or {}
    by_index = {index: url for url, index in urls.items()}
    results: list[Result | None] = [None] * len(parsed)
    refused: dict[str, tuple[int, str]] = {}
    for index, (entry, problems) in enumerate(parsed):
        if entry is None:
            results[index] = Result(
                status_of(problems), outcome={"resourceType": "OperationOutcome", "issue": problems}
            )
            if index in by_index:
                refused[by_index[index]] = (index, _why(results[index]))
    runnable = in_fhir_order(e for e, _ in parsed if e is not None)
    held_back = [entry for entry in runnable if not entry.retained]
    with writing(runtime, actor) as store:
        engine = engine_for(runtime, store, base_url)
        engine.bundle_urls, engine.refused = urls, refused
        engine.retention.hold_back(held_back)
        for entry in runnable:
            results[entry.index] = result = _batch_entry(engine, entry)
            if result.status >= 300 and entry.full_url:
                refused[entry.full_url] = (entry.index, _why(result))
        stored = [entry for entry in runnable if entry.retained and results[entry.index].status < 300]
        results_of_held = engine.held_back_results(held_back, stored)
    for index, result in results_of_held.items():
        results[index] = result
    return results


def _why(result: Result) -> str:
    """A refused entry's reason, in a few words, for the entries that refer to it."""
    issues = (result.outcome or {}).get("issue") or [{}]
    text = issues[0].get("diagnostics", "")
    return f"{result.status}: {text[:200]}"


def _batch_entry(engine: Engine, entry: Entry) -> Result:
    for attempt in range(ATTEMPTS):
        saved = engine.checkpoint()
        savepoint = engine.store.session.begin_nested()
        try:
            result = engine.run([entry])[entry.index]
            savepoint.commit()
            return result
        except (FhirError, *RETRYABLE) as error:
            if is_outage(error):
                raise  # every entry would fail the same way: the whole batch is 503 with Retry-After
            savepoint.rollback()
            engine.restore(saved)
            entry.target_id, entry.matched = None, False
            entry.release()
            if isinstance(error, FhirError):
                return Result(error.status, outcome=error.outcome)
            if attempt == ATTEMPTS - 1:
                failure = FhirError.one(
                    409,
                    "a concurrent request kept changing this resource: send it again",
                    code="transient",
                    location=entry.location,
                )
                return Result(409, outcome=failure.outcome)
        finally:
            engine.forget_rewrites()
    raise AssertionError("unreachable")


def _summarised(problems: list[dict[str, Any]], unsupported: Counter) -> list[dict[str, Any]]:
    """Lead with one line naming the unsupported types, when that is why the transaction is refused."""
    if not unsupported:
        return problems
    listed = ", ".join(f"{name} ({count})" for name, count in sorted(unsupported.items()))
    lead = issue(
        f"the transaction was refused and nothing was stored: it contains resource types this server "
        f"does not accept: {listed}",
        code="not-supported",
        location="Bundle.entry",
    )
    return [lead, *problems]


def _is_resource(problem: dict[str, Any]) -> bool:
    location = (problem.get("expression") or [""])[0]
    return location.startswith("Bundle.entry[") and location.endswith("].resource")


def _response(kind: str, results: list[Result], wanted: str | None = None) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": [_response_entry(result, wanted) for result in results]}


def _response_entry(result: Result, wanted: str | None = None) -> dict[str, Any]:
    """One entry of the response; with Prefer: return=…, a written entry carries its resource as stored
    (representation), nothing more (minimal), or an OperationOutcome naming what was written."""
    response: dict[str, Any] = {"status": result.status_line}
    stored = result.stored
    if result.outcome is not None:
        response["outcome"] = result.outcome
        if stored is None:
            return {"response": response}
    entry: dict[str, Any] = {"response": response}
    if stored is not None:
        response["location"] = f"{stored.reference}/_history/{stored.version_id}"
        response["etag"] = stored.etag
        response["lastModified"] = instant(stored.last_updated)
    if result.resource is not None:  # a read or search entry: its answer, whatever the preference
        entry["resource"] = result.resource
    elif stored is not None and not stored.deleted and wanted == "representation":
        entry["resource"] = stored.content
    elif stored is not None and not stored.deleted and wanted == "operationoutcome":
        response.setdefault(
            "outcome",
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
        )
    elif stored is not None and result.status == 200 and not stored.deleted and wanted is None:
        entry["resource"] = stored.content
    return entry
