"""/api/v1 entries of log forms (adverse events, medication: not tied to a visit) and of repeating forms
(several at one visit): each entry has its own id, version (ETag) and lifecycle, and is withdrawn as
entered in error with a reason, never deleted. Registered before the visit-form routes, whose
`{visit_id}` would otherwise take `entries` for a visit."""

from typing import Any

from fastapi import APIRouter, Depends, Header, Request

from ecrf.auth.actor import Actor
from ecrf.auth.dependencies import requires
from ecrf.crf import describe, locate, service
from ecrf.crf.router import if_match_of, respond_view, shown_view
from ecrf.crf.schemas import FormEntry, Reason, Signature
from ecrf.responses import JSONBody
from ecrf.store.unit import read_only, writing

router = APIRouter(tags=["forms"])
LOG = "/subjects/{subject_id}/forms/{form_id}/entries"
VISIT = "/subjects/{subject_id}/forms/{form_id}/{visit_id}/entries"


def _list(request: Request, actor: Actor, subject_id: str, form_id: str, visit_id: str | None) -> list[dict[str, Any]]:
    runtime = request.app.state.runtime
    with read_only(runtime, actor) as store:
        views = describe.entries(store, runtime.study, subject_id, form_id, visit_id)
    return [shown_view(request, actor, "form.read", view) for view in views]


def _read(
    request: Request, actor: Actor, subject_id: str, form_id: str, entry_id: str, visit_id: str | None
) -> JSONBody:
    runtime = request.app.state.runtime
    with read_only(runtime, actor) as store:
        target, instance = locate.locate_entry(store, runtime.study, subject_id, form_id, entry_id, visit_id)
        view = describe.describe(store, runtime.study, target, instance)
    return respond_view(shown_view(request, actor, "form.read", view))


def _save(
    request: Request,
    actor: Actor,
    subject_id: str,
    form_id: str,
    entry_id: str | None,
    visit_id: str | None,
    body: FormEntry,
    if_match: str | None,
) -> JSONBody:
    runtime = request.app.state.runtime
    with writing(runtime, actor) as store:
        result = service.save_entry(
            runtime,
            store,
            subject_id,
            form_id,
            entry_id,
            visit_id,
            items=body.items,
            visit_date=body.visit_date,
            reason=body.reason,
            if_match=if_match_of(if_match),
        )
    view = shown_view(request, actor, "form.write", result.view)
    response = respond_view(view, 201 if result.created else 200)
    if result.created:
        base = f"{request.scope.get('root_path', '')}/api/v1/subjects/{view['subject_id']}/forms/{form_id}"
        response.headers["Location"] = f"{base}/entries/{view['id']}"
    return response


def _step(
    request: Request,
    actor: Actor,
    subject_id: str,
    form_id: str,
    entry_id: str,
    visit_id: str | None,
    name: str,
    if_match: str | None,
    meaning: str | None = None,
    reason: str | None = None,
) -> JSONBody:
    runtime = request.app.state.runtime
    with writing(runtime, actor) as store:
        if name == "withdraw":
            view = service.withdraw_entry(
                store,
                runtime.study,
                subject_id,
                form_id,
                entry_id,
                visit_id,
                reason=reason,
                if_match=if_match_of(if_match),
            )
        else:
            view = service.transition_entry(
                store,
                runtime.study,
                subject_id,
                form_id,
                entry_id,
                visit_id,
                name,
                meaning=meaning,
                reason=reason,
                if_match=if_match_of(if_match),
            )
    return respond_view(shown_view(request, actor, f"form.{name}", view))


# -- a log form's entries (and every entry of a repeating form, whatever its visit) -----------------


@router.get(LOG)
def list_entries(
    subject_id: str, form_id: str, request: Request, actor: Actor = Depends(requires("form.read"))
) -> list[dict[str, Any]]:
    """The subject's entries of a log or repeating form, oldest first, withdrawn ones included."""
    return _list(request, actor, subject_id, form_id, None)


@router.post(LOG, status_code=201)
def create_entry(
    subject_id: str, form_id: str, body: FormEntry, request: Request, actor: Actor = Depends(requires("form.write"))
) -> JSONBody:
    """Add an entry to a log form (201, `Location`, the entry with its `id`); hard checks refuse with 422."""
    return _save(request, actor, subject_id, form_id, None, None, body, None)


@router.get(LOG + "/{entry_id}")
def read_entry(
    subject_id: str, form_id: str, entry_id: str, request: Request, actor: Actor = Depends(requires("form.read"))
) -> JSONBody:
    return _read(request, actor, subject_id, form_id, entry_id, None)


@router.put(LOG + "/{entry_id}")
def save_entry(
    subject_id: str,
    form_id: str,
    entry_id: str,
    body: FormEntry,
    request: Request,
    if_match: str | None = Header(None),
    actor: Actor = Depends(requires("form.write")),
) -> JSONBody:
    """Save an entry's complete content; a reason is required once it is complete; stale If-Match 412."""
    return _save(request, actor, subject_id, form_id, entry_id, None, body, if_match)


@router.post(LOG + "/{entry_id}/withdraw")
def withdraw_entry(
    subject_id: str,
    form_id: str,
    entry_id: str,
    body: Reason,
    request: Request,
    if_match: str | None = Header(None),
    actor: Actor = Depends(requires("form.write")),
) -> JSONBody:
    """Mark the entry entered in error (reason required); it is kept, with its history, never deleted."""
    return _step(request, actor, subject_id, form_id, entry_id, None, "withdraw", if_match, reason=body.reason)


@router.post(LOG + "/{entry_id}/verify")
def verify_entry(
    subject_id: str,
    form_id: str,
    entry_id: str,
    request: Request,
    body: Reason | None = None,
    if_match: str | None = Header(None),
    actor: Actor = Depends(requires("form.verify")),
) -> JSONBody:
    return _step(request, actor, subject_id, form_id, entry_id, None, "verify", if_match, reason=body and body.reason)


@router.post(LOG + "/{entry_id}/sign")
def sign_entry(
    subject_id: str,
    form_id: str,
    entry_id: str,
    body: Signature,
    request: Request,
    if_match: str | None = Header(None),
    actor: Actor = Depends(requires("form.sign")),
) -> JSONBody:
    return _step(request, actor, subject_id, form_id, entry_id, None, "sign", if_match, meaning=body.meaning)


@router.post(LOG + "/{entry_id}/lock")
def lock_entry(
    subject_id: str,
    form_id: str,
    entry_id: str,
    request: Request,
    body: Reason | None = None,
    if_match: str | None = Header(None),
    actor: Actor = Depends(requires("form.lock")),
) -> JSONBody:
    return _step(request, actor, subject_id, form_id, entry_id, None, "lock", if_match, reason=body and body.reason)


@router.post(LOG + "/{entry_id}/unlock")
def unlock_entry(
    subject_id: str,
    form_id: str,
    entry_id: str,
    body: Reason,
    request: Request,
    if_match: str | None = Header(None),
    actor: Actor = Depends(requires("form.lock")),
) -> JSONBody:
    return _step(request, actor, subject_id, form_id, entry_id, None, "unlock", if_match, reason=body.reason)


# -- a repeating form's entries at one visit ---------------------------------------------------


@router.get(VISIT)
def list_visit_entries(
    subject_id: str, form_id: str, visit_id: str, request: Request, actor: Actor = Depends(requires("form.read"))
) -> list[dict[str, Any]]:
    """The subject's entries of a repeating form at one visit (besides the visit's own form)."""
    return _list(request, actor, subject_id, form_id, visit_id)


@router.post(VISIT, status_code=201)
def create_visit_entry(
    subject_id: str,
    form_id: str,
    visit_id: str,
    body: FormEntry,
    request: Request,
    actor: Actor = Depends(requires("form.write")),
) -> JSONBody:
    """Add an entry of a repeating form at a visit (201, `Location`, the entry with its `id`)."""
    return _save(request, actor, subject_id, form_id, None, visit_id, body, None)


@router.get(VISIT + "/{entry_id}")
def read_visit_entry(
    subject_id: str,
    form_id: str,
    visit_id: str,
    entry_id: str,
    request: Request,
    actor: Actor = Depends(requires("form.read")),
) -> JSONBody:
    return _read(request, actor, subject_id, form_id, entry_id, visit_id)


@router.put(VISIT + "/{entry_id}")
def save_visit_entry(
    subject_id: str,
    form_id: str,
    visit_id: str,
    entry_id: str,
    body: FormEntry,
    request: Request,
    if_match: str | None = Header(None),
    actor: Actor = Depends(requires("form.write")),
) -> JSONBody:
    return _save(request, actor, subject_id, form_id, entry_id, visit_id, body, if_match)
