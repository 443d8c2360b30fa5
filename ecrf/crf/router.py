"""/api/v1 form definitions, form entry per subject and visit, and the form lifecycle."""

from typing import Any

from fastapi import APIRouter, Depends, Header, HTTPException, Request

from ecrf.audit.access import service as access
from ecrf.auth.actor import Actor
from ecrf.auth.dependencies import requires
from ecrf.crf import describe, service, unscheduled
from ecrf.crf.definitions import describe_form
from ecrf.crf.schemas import FormEntry, Reason, Signature
from ecrf.responses import JSONBody
from ecrf.common.errors import VersionConflict
from ecrf.common.etags import version_of_etag
from ecrf.store.unit import read_only, writing
from ecrf.subjects.service import resolve

router = APIRouter(tags=["forms"])
INSTANCE = "/subjects/{subject_id}/forms/{form_id}/{visit_id}"


def if_match_of(if_match: str | None) -> int | None:
    """If-Match: W/"3", "3" or 3; anything else can never match."""
    if if_match is None or if_match.strip() == "*":
        return None
    version = version_of_etag(if_match)
    if version is None:
        raise VersionConflict(f"If-Match {if_match!r} is not a version of this form")
    return version


def respond_view(view: dict[str, Any], status: int = 200) -> JSONBody:
    return JSONBody(view, status_code=status, headers={"ETag": f'W/"{view["version"]}"'})


@router.get("/forms", dependencies=[Depends(requires("study.read"))])
def list_forms(request: Request) -> list[dict[str, Any]]:
    """Every form: items, types, units (with exact factors), allowed values, ranges, visits."""
    study = request.app.state.runtime.study
    return [describe_form(study, form) for form in study.forms]


@router.get("/forms/{form_id}", dependencies=[Depends(requires("study.read"))])
def read_form_definition(form_id: str, request: Request) -> dict[str, Any]:
    study = request.app.state.runtime.study
    try:
        form = study.form(form_id)
    except KeyError:
        raise HTTPException(404, f"form {form_id} is not a form of study {study.id}") from None
    return describe_form(study, form)


@router.get(INSTANCE)
def read_form(
    subject_id: str, form_id: str, visit_id: str, request: Request, actor: Actor = Depends(requires("form.read"))
) -> JSONBody:
    """The form at a visit: values entered here (source form) and values that arrived through FHIR
    in the visit's window (source fhir), status, version (ETag) and who/when. Visit `UNS`: the form's
    unscheduled EHR results (outside every window), by date, read only."""
    runtime = request.app.state.runtime
    pseudo = unscheduled.is_unscheduled(runtime.study, visit_id)
    with read_only(runtime, actor) as store:
        if pseudo:
            view = unscheduled.read(store, runtime.study, subject_id, form_id)
        else:
            view = describe.read_form(store, runtime.study, subject_id, form_id, visit_id)
    view = shown_view(request, actor, "form.read", view)
    return JSONBody(view) if pseudo else respond_view(view)


@router.put(INSTANCE)
def save_form(
    subject_id: str,
    form_id: str,
    visit_id: str,
    body: FormEntry,
    request: Request,
    if_match: str | None = Header(None),
    actor: Actor = Depends(requires("form.write")),
) -> JSONBody:
    """Enter or change the form (its complete content). Hard edit checks refuse with 422 listing every
    failing item; soft checks are returned as `warnings`. A stale If-Match is 412; a locked form 409."""
    runtime = request.app.state.runtime
    with writing(runtime, actor) as store:
        if unscheduled.is_unscheduled(runtime.study, visit_id):
            resolve(store, runtime.study, subject_id)  # another site's subject stays a 404
            raise unscheduled.refuse_entry(form_id)
        result = service.save_form(
            runtime,
            store,
            subject_id,
            form_id,
            visit_id,
            items=body.items,
            visit_date=body.visit_date,
            reason=body.reason,
            if_match=if_match_of(if_match),
        )
    return respond_view(shown_view(request, actor, "form.write", result.view), 201 if result.created else 200)


def _transition(
    request: Request,
    actor: Actor,
    subject_id: str,
    form_id: str,
    visit_id: str,
    name: str,
    if_match: str | None,
    meaning: str | None = None,
    reason: str | None = None,
) -> JSONBody:
    runtime = request.app.state.runtime
    with writing(runtime, actor) as store:
        view = service.transition(
            store,
            runtime.study,
            subject_id,
            form_id,
            visit_id,
            name,
            meaning=meaning,
            reason=reason,
            if_match=if_match_of(if_match),
        )
    return respond_view(shown_view(request, actor, f"form.{name}", view))


def shown_view(request: Request, actor: Actor, interaction: str, view: dict[str, Any]) -> dict[str, Any]:
    """A form view showing an identifier-bearing item (the birth date) is recorded in the access log."""
    runtime = request.app.state.runtime
    if access.shows_identifiers(runtime.study, view):
        with read_only(runtime, actor) as store:
            patient_id = resolve(store, runtime.study, view["subject_id"]).patient_id
        access.shown(request, actor, interaction, access.BIRTH_DATE, [patient_id])
    return view


@router.post(INSTANCE + "/verify")
def verify(
    subject_id: str,
    form_id: str,
    visit_id: str,
    request: Request,
    body: Reason | None = None,
    if_match: str | None = Header(None),
    actor: Actor = Depends(requires("form.verify")),
) -> JSONBody:
    """Source data verification by a monitor: complete -> verified."""
    return _transition(request, actor, subject_id, form_id, visit_id, "verify", if_match, reason=body and body.reason)


@router.post(INSTANCE + "/sign")
def sign(
    subject_id: str,
    form_id: str,
    visit_id: str,
    body: Signature,
    request: Request,
    if_match: str | None = Header(None),
    actor: Actor = Depends(requires("form.sign")),
) -> JSONBody:
    """An investigator's e-signature: verified -> signed, with meaning, name (token sub), UTC time and
    the SHA-256 of the signed content."""
    return _transition(request, actor, subject_id, form_id, visit_id, "sign", if_match, meaning=body.meaning)


@router.post(INSTANCE + "/lock")
def lock(
    subject_id: str,
    form_id: str,
    visit_id: str,
    request: Request,
    body: Reason | None = None,
    if_match: str | None = Header(None),
    actor: Actor = Depends(requires("form.lock")),
) -> JSONBody:
    """A data manager locks a signed form: no edits until unlocked."""
    return _transition(request, actor, subject_id, form_id, visit_id, "lock", if_match, reason=body and body.reason)


@router.post(INSTANCE + "/unlock")
def unlock(
    subject_id: str,
    form_id: str,
    visit_id: str,
    body: Reason,
    request: Request,
    if_match: str | None = Header(None),
    actor: Actor = Depends(requires("form.lock")),
) -> JSONBody:
    """A data manager unlocks a form (reason required): locked -> signed."""
    return _transition(request, actor, subject_id, form_id, visit_id, "unlock", if_match, reason=body.reason)
