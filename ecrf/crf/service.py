"""Form entry through the eCRF door: checks, FHIR resources in the store, workflow state, audit.

Clinical values are written only as FHIR resources (ids derived from subject, form, visit and slot,
so a re-save is a new version of the same resource); this module keeps the workflow state.
"""
import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import orjson
from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from ecrf.audit import service as audit
from ecrf.crf import lifecycle, subject_checks, suspects
from ecrf.crf.checks import Finding, check_items, is_enabled, latest_allowed_date
from ecrf.common.errors import Blocked, Conflict, EditCheckFailed, NotFound, VersionConflict
from ecrf.crf.models import FormInstance, FormResource
from ecrf.crf.schedule import check_visit_date, day_zero
from ecrf.crf.values import form_values, owned_resources
from ecrf.queries.counts import unresolved_of_form
from ecrf.responses import dumps
from ecrf.services import Services as Runtime  # the protocol; ecrf.runtime has the one running
from ecrf.safety import service as safety
from ecrf.store.models import ResourceHead
from ecrf.store.service import ClinicalStore, WriteContext
from ecrf.subjects.service import Subject, resolve
from fhir_mappings.definitions import FormDef, StudyDef, VisitDef
from fhir_mappings.mapping import form_to_resources

INSTANCE_RESOURCE = "FormInstance"
LOG_VISIT = "LOG"  # the visit key of a log form's entries (they belong to no visit)
WITHDRAWN = "entered_in_error"


def derived_id(*parts: str) -> str:
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Target:
    """A visit's own form (entry_id ''), or one entry of a log form (visit None) or of a repeating form."""
    subject: Subject
    form: FormDef
    visit: VisitDef | None
    entry_id: str = ""

    @property
    def visit_key(self) -> str:
        return self.visit.id if self.visit is not None else LOG_VISIT

    @property
    def _key(self) -> tuple[str, ...]:
        return (self.subject.id, self.form.id, self.visit_key) + (("entry", self.entry_id) if self.entry_id else ())

    @property
    def instance_id(self) -> str:
        return derived_id(*self._key)

    def resource_id(self, slot: str) -> str:
        return derived_id(*self._key, slot)


def locate(store: ClinicalStore, study: StudyDef, subject_id: str, form_id: str, visit_id: str, *, writing: bool) -> Target:
    subject = resolve(store, study, subject_id)
    try:
        form = study.form(form_id)
    except KeyError:
        raise NotFound(f"form {form_id} is not a form of study {study.id}") from None
    try:
        visit = study.visit(visit_id)
    except KeyError:
        raise NotFound(f"visit {visit_id} is not a visit of study {study.id}") from None
    if visit.id not in form.visits:
        message = (f"form {form.id} is a log form: its entries are under .../forms/{form.id}/entries"
                   if form.kind == "log" else
                   f"form {form.id} is not collected at visit {visit.id} (visits: {', '.join(form.visits)})")
        if writing:
            raise EditCheckFailed([{"item": "visit_id", "rule": "visit", "message": message}], message)
        raise NotFound(message)
    return Target(subject, form, visit)


def _form_with_entries(study: StudyDef, form_id: str) -> FormDef:
    try:
        form = study.form(form_id)
    except KeyError:
        raise NotFound(f"form {form_id} is not a form of study {study.id}") from None
    if not form.has_entries:
        raise NotFound(f"form {form_id} has no entries: it is saved once per visit, at "
                       f".../forms/{form_id}/<visit> ({', '.join(form.visits)})")
    return form


def new_entry(store: ClinicalStore, study: StudyDef, subject_id: str, form_id: str, visit_id: str | None) -> Target:
    """Where a new entry goes: a log form takes no visit, a repeating form the visit it is collected at."""
    form = _form_with_entries(study, form_id)
    if form.kind == "log":
        if visit_id is not None:
            raise NotFound(f"form {form_id} is a log form: its entries belong to no visit (.../forms/{form_id}/entries)")
        subject = resolve(store, study, subject_id)
        if form.max_entries is not None:
            _refuse_beyond_max_entries(store, subject, form)
        return Target(subject, form, None, secrets.token_hex(8))
    if visit_id is None:
        raise NotFound(f"form {form_id} repeats at a visit: add entries at .../forms/{form_id}/<visit>/entries "
                       f"({', '.join(form.visits)})")
    target = locate(store, study, subject_id, form_id, visit_id, writing=True)
    return Target(target.subject, form, target.visit, secrets.token_hex(8))


def _refuse_beyond_max_entries(store: ClinicalStore, subject: Subject, form: FormDef) -> None:
    """A log form with `max_entries` (end_of_study: once per subject) takes no more live entries; a withdrawn
    (entered_in_error) one does not count. The subject's rows are locked so two adds at once take turns."""
    live = [instance.entry_id for instance in store.session.exec(
        select(FormInstance).where(FormInstance.subject_id == subject.id, FormInstance.form_id == form.id,
                                   FormInstance.entry_id != "").with_for_update()).all()
            if instance.status != WITHDRAWN]
    if len(live) >= form.max_entries:
        raise Conflict(f"form {form.id} takes at most {form.max_entries} entr{'y' if form.max_entries == 1 else 'ies'} "
                       f"per subject and subject {subject.id} has {', '.join(sorted(live))}: edit it, or withdraw "
                       f"it as entered in error first")


def _entry_instance(store: ClinicalStore, subject: Subject, form: FormDef, entry_id: str, *,
                    for_update: bool) -> FormInstance:
    query = select(FormInstance).where(FormInstance.subject_id == subject.id, FormInstance.form_id == form.id,
                                       FormInstance.entry_id == entry_id, FormInstance.entry_id != "")
    instance = store.session.exec(query.with_for_update() if for_update else query).one_or_none()
    if instance is None:
        raise NotFound(f"subject {subject.id} has no entry {entry_id} of form {form.id}")
    return instance


def locate_entry(store: ClinicalStore, study: StudyDef, subject_id: str, form_id: str, entry_id: str,
                 visit_id: str | None = None, *, for_update: bool = False) -> tuple[Target, FormInstance]:
    """An existing entry; with a visit (the repeating form's visit path) it must be an entry of that visit."""
    form = _form_with_entries(study, form_id)
    subject = resolve(store, study, subject_id)
    instance = _entry_instance(store, subject, form, entry_id, for_update=for_update)
    if visit_id is not None and instance.visit_id != visit_id:
        raise NotFound(f"entry {entry_id} of form {form_id} is not an entry of visit {visit_id}")
    visit = None if instance.visit_id == LOG_VISIT else study.visit(instance.visit_id)
    return Target(subject, form, visit, entry_id), instance


def entries(store: ClinicalStore, study: StudyDef, subject_id: str, form_id: str,
            visit_id: str | None = None) -> list[dict[str, Any]]:
    """A subject's entries of a form (of one visit, for a repeating form's visit path), oldest first;
    withdrawn ones included, with their status and reason."""
    form = _form_with_entries(study, form_id)
    if visit_id is not None:
        subject = locate(store, study, subject_id, form_id, visit_id, writing=False).subject
    else:
        subject = resolve(store, study, subject_id)
    query = select(FormInstance).where(FormInstance.subject_id == subject.id, FormInstance.form_id == form.id,
                                       FormInstance.entry_id != "")
    if visit_id is not None:
        query = query.where(FormInstance.visit_id == visit_id)
    found = store.session.exec(query.order_by(FormInstance.created_at, FormInstance.id)).all()
    return [describe(store, study, Target(subject, form, None if i.visit_id == LOG_VISIT else study.visit(i.visit_id),
                                          i.entry_id), i) for i in found]


def _instance(store: ClinicalStore, instance_id: str, *, for_update: bool) -> FormInstance | None:
    query = select(FormInstance).where(FormInstance.id == instance_id)
    return store.session.exec(query.with_for_update() if for_update else query).one_or_none()


def _check_version(instance: FormInstance | None, if_match: int | None) -> None:
    current = instance.version if instance else 0
    if if_match is not None and if_match != current:
        raise VersionConflict(f"the form is at version {current}, not {if_match}: read it again")


# -- eligibility hook --------------------------------------------------------------------------

def assigns_arm(form: FormDef) -> bool:
    return any(item.fhir.kind == "research_subject" and item.fhir.path == "assignedArm" for item in form.items)


def eligibility_gate(runtime: Runtime, store: ClinicalStore, subject: Subject) -> str | None:
    """THE hook point for eligibility before a randomisation is saved.

    `runtime.eligibility`, once the eligibility module provides it, is called as
    `runtime.eligibility(store, patient_id)` and returns {"overall": "eligible"|"ineligible"|"incomplete",
    "criteria": [{"id", "kind", "outcome", "reason"}, ...]}. Anything but eligible refuses the save (409,
    listing the blocking criteria); the result is kept with the form as the basis of the randomisation.
    Until it exists the arm is entered as is (CRF-SPEC 3.9).
    """
    evaluate = getattr(runtime, "eligibility", None)
    if evaluate is None:
        return None
    result = evaluate(store, subject.patient_id)
    if result.get("overall") != "eligible":
        blocking = [
            {"item": c["id"], "rule": c.get("outcome", "unknown"), "message": c.get("reason") or c["id"]}
            for c in result.get("criteria", [])
            if (c.get("kind") == "inclusion" and c.get("outcome") != "met")
            or (c.get("kind") == "exclusion" and c.get("outcome") != "not_met")
        ]
        raise Blocked(f"randomisation needs eligibility 'eligible', the subject is {result.get('overall')}", blocking)
    return orjson.dumps(result, default=str).decode()


def _typed_allocation(runtime: Runtime, target: Target, items: dict[str, Any], allocated: bool) -> list[Finding]:
    scheme = getattr(runtime, "randomisation", None)
    if allocated or scheme is None or target.form.id != scheme.form:
        return []
    return [Finding(item_id, "derived", f"{item_id} is set by the system's allocation "
                                       f"(POST /api/v1/subjects/{target.subject.id}/randomise), never entered")
            for item_id in sorted(scheme.derived_items) if items.get(item_id) not in (None, "")]


# -- reading -----------------------------------------------------------------------------------

def _who(by: str | None, at: datetime | None) -> dict[str, Any] | None:
    return {"by": by, "at": at.isoformat()} if by and at else None


def describe(store: ClinicalStore, study: StudyDef, target: Target, instance: FormInstance | None) -> dict[str, Any]:
    zero = day_zero(store.session, study, target.subject.patient_id)
    items, alternatives = form_values(store.session, study, target.form, target.visit_key,
                                      target.subject.patient_id, instance, zero)
    missing = missing_items(target.form, items) if not (instance and instance.status == WITHDRAWN) else []
    open_queries, open_queries_by_item = unresolved_of_form(store.session, target.subject.id, target.form.id,
                                                            target.visit_key)
    view: dict[str, Any] = {
        "subject_id": target.subject.id,
        "form_id": target.form.id,
        "visit_id": target.visit.id if target.visit is not None else None,
        "status": instance.status if instance else "not_started",
        "version": instance.version if instance else 0,
        "visit_date": instance.visit_date.isoformat() if instance else None,
        "deviation": instance.deviation if instance else None,
        "items": items,
        "alternatives": alternatives,
        "missing": missing,
        "created": _who(instance.created_by, instance.created_at) if instance else None,
        "updated": ({**_who(instance.updated_by, instance.updated_at), "role": instance.updated_role}
                    if instance else None),
        "verified": _who(instance.verified_by, instance.verified_at) if instance else None,
        "signature": ({"meaning": instance.signature_meaning, "name": instance.signed_by,
                       "at": instance.signed_at.isoformat(), "hash": instance.signature_hash}
                      if instance and instance.signed_at else None),
        "locked": _who(instance.locked_by, instance.locked_at) if instance else None,
        "open_queries": open_queries,  # not yet closed (open or answered)
        "open_queries_by_item": open_queries_by_item,
    }
    if instance and instance.eligibility_basis:
        view["eligibility_basis"] = orjson.loads(instance.eligibility_basis)
    if target.entry_id:
        view = {"id": target.entry_id, **view, "withdrawn_reason": instance.withdrawn_reason if instance else None,
                "source": instance.source if instance else "form"}  # fhir: landed from an EHR's push
    return view


def missing_items(form: FormDef, items: dict[str, Any]) -> list[str]:
    """Required items (enabled by the values shown) that the form view has no value for."""
    shown = {item_id: entry.get("value") for item_id, entry in items.items()}
    return [item.id for item in form.items
            if item.required and item.derived is None and item.id not in items and is_enabled(item, shown)]


def read_form(store: ClinicalStore, study: StudyDef, subject_id: str, form_id: str, visit_id: str) -> dict[str, Any]:
    target = locate(store, study, subject_id, form_id, visit_id, writing=False)
    return describe(store, study, target, _instance(store, target.instance_id, for_update=False))


def subject_instances(store: ClinicalStore, subject: Subject) -> list[FormInstance]:
    """The subject's visit forms (entries of log and repeating forms have a lifecycle of their own)."""
    return list(store.session.exec(select(FormInstance).where(FormInstance.subject_id == subject.id,
                                                              FormInstance.entry_id == "")).all())


# -- writing -----------------------------------------------------------------------------------

def _same(existing: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether `new` (which may hold the mapping's exact Decimals and dates) is stored as `existing` reads back."""
    strip = {"meta", "id", "resourceType"}
    new = orjson.loads(dumps(new))
    return {k: v for k, v in existing.items() if k not in strip} == {k: v for k, v in new.items() if k not in strip}


def _merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in patch.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def _slot_resource_id(target: Target, previous: dict[str, str], slot: str, resource_type: str) -> str:
    """The id a slot's resource is written under: the one it already has (an entry that landed from an EHR
    keeps the EHR's resource, so an edit through the form is a new version of it), else derived."""
    reference = previous.get(slot)
    if reference and reference.split("/", 1)[0] == resource_type:
        return reference.split("/", 1)[1]
    return target.resource_id(slot)


def _write_resources(store: ClinicalStore, target: Target, mapped: Any, previous: dict[str, str],
                     context: WriteContext) -> dict[str, str]:
    owned: dict[str, str] = {}
    wanted = {_slot_resource_id(target, previous, slot, resource["resourceType"]): (slot, resource)
              for slot, resource in mapped.resources}
    heads = store.session.exec(select(ResourceHead).where(ResourceHead.resource_id.in_(list(wanted)))).all()
    current = {stored.resource_id: stored.content
               for stored in store.current(h for h in heads if not h.deleted and store.actor.may_see_site(h.site))}
    for resource_id, (slot, resource) in wanted.items():
        resource_type = resource["resourceType"]
        owned[slot] = f"{resource_type}/{resource_id}"
        if "identifier" in current.get(resource_id, {}) and "identifier" not in resource:
            # the form maps no identifiers: the EHR's (of an entry that landed from it) stay on its new version
            resource = {**resource, "identifier": current[resource_id]["identifier"]}
        if resource_id in current and _same(current[resource_id], resource):
            continue  # unchanged: no new version, no audit noise
        store.update(resource_type, resource_id, resource, context)
    for slot, reference in previous.items():
        if owned.get(slot) != reference:  # gone, or of another type now (exposure: the drug changed)
            resource_type, resource_id = reference.split("/", 1)
            store.delete(resource_type, resource_id, context)
    patient_id = target.subject.patient_id
    for resource_type, resource_id, patch in (("Patient", patient_id, mapped.patient_patch),
                                              ("ResearchSubject", target.subject.id, mapped.research_subject_patch)):
        if not patch:
            continue
        current = store.read(resource_type, resource_id).content
        merged = _merge(current, patch)
        if not _same(current, merged):
            store.update(resource_type, resource_id, merged, context)
    return owned


def _index_owned(store: ClinicalStore, instance_id: str, before: dict[str, str], after: dict[str, str]) -> None:
    """Keep form_resource (resource -> owning instance) in step with the instance's resources."""
    for reference in set(before.values()) - set(after.values()):
        row = store.session.get(FormResource, tuple(reference.split("/", 1)))
        if row is not None:
            store.session.delete(row)
    for reference in sorted(set(after.values()) - set(before.values())):
        resource_type, resource_id = reference.split("/", 1)
        store.session.add(FormResource(resource_type=resource_type, resource_id=resource_id, instance_id=instance_id))


def _audit_form(store: ClinicalStore, target: Target, instance: FormInstance, action: str,
                old: str | None, new: str | None, reason: str | None) -> None:
    audit.append(store.session, store.actor, action, source="form", patient_id=target.subject.patient_id,
                 form_id=target.form.id, visit_id=target.visit_key, old_value=old, new_value=new, reason=reason,
                 resource=f"{INSTANCE_RESOURCE}/{instance.id}", resource_version=instance.version)


@dataclass
class SaveResult:
    view: dict[str, Any]
    created: bool
    warnings: list[Finding]


def save_form(runtime: Runtime, store: ClinicalStore, subject_id: str, form_id: str, visit_id: str, *,
              items: dict[str, Any], visit_date: date | None, reason: str | None, if_match: int | None,
              allocated: bool = False) -> SaveResult:
    """Check and store a visit's form. Nothing is written when a hard check fails. The items the randomisation
    scheme derives (arm, date) are written only by the allocation (`allocated`), never typed (422 `derived`)."""
    target = locate(store, runtime.study, subject_id, form_id, visit_id, writing=True)
    return save_target(runtime, store, target, _instance(store, target.instance_id, for_update=True), items=items,
                       visit_date=visit_date, reason=reason, if_match=if_match, allocated=allocated)


def save_entry(runtime: Runtime, store: ClinicalStore, subject_id: str, form_id: str, entry_id: str | None,
               visit_id: str | None, *, items: dict[str, Any], visit_date: date | None, reason: str | None,
               if_match: int | None) -> SaveResult:
    """Create an entry (entry_id None) or save an existing one of a log or repeating form."""
    if entry_id is None:
        target, instance = new_entry(store, runtime.study, subject_id, form_id, visit_id), None
    else:
        target, instance = locate_entry(store, runtime.study, subject_id, form_id, entry_id, visit_id, for_update=True)
        if instance.status == WITHDRAWN:
            raise Conflict(f"entry {entry_id} of form {form_id} was withdrawn (entered in error); add a new entry")
    return save_target(runtime, store, target, instance, items=items, visit_date=visit_date, reason=reason,
                       if_match=if_match)


def _what(target: Target) -> str:
    if target.entry_id:
        return f"entry {target.entry_id} of form {target.form.id}"
    return f"form {target.form.id} at {target.visit_key}"


def save_target(runtime: Runtime, store: ClinicalStore, target: Target, instance: FormInstance | None, *,
                items: dict[str, Any], visit_date: date | None, reason: str | None, if_match: int | None,
                allocated: bool = False) -> SaveResult:
    """Check and store one form or entry. Nothing is written when a hard check fails."""
    study = runtime.study
    _check_version(instance, if_match)
    if instance is not None and instance.status == "locked":
        raise Conflict(f"{_what(target)} is locked; a data manager must unlock it first")
    reason = (reason or "").strip() or None
    entry = check_items(target.form, items)
    errors = list(entry.errors) + _typed_allocation(runtime, target, items, allocated)
    if instance is not None and instance.status in lifecycle.REASON_NEEDED and not reason:
        errors.append(Finding("reason", "reason_required",
                              f"the form is {instance.status}: a reason for the change is required"))
    if target.form.date_item and target.form.date_item in entry.canonical:
        the_date = entry.canonical[target.form.date_item]
    else:
        the_date = visit_date or min(study.today_at(target.subject.site), latest_allowed_date())
    zero = entry.canonical.get(study.day_zero_item) if study.day_zero_item else None
    zero = zero or day_zero(store.session, study, target.subject.patient_id)
    if target.visit is not None:
        date_errors, date_warnings, deviation = check_visit_date(study, target.visit, the_date, zero)
    else:  # a log entry is dated by its own items, not by a visit window
        date_errors, date_warnings, deviation = [], [], None
    found = subject_checks.check_entry(study, store.session, target.form, target.subject.patient_id, entry.canonical,
                                       the_date)  # cross-form checks (forms/subject_checks.yaml)
    errors, date_warnings = errors + date_errors + found.errors, date_warnings + found.warnings
    deviation = subject_checks.with_deviations(deviation, found)
    if errors:
        raise EditCheckFailed([finding.as_dict() for finding in errors])
    context = WriteContext(source="form", reason=reason, form_id=target.form.id, visit_id=target.visit_key)
    mapped = form_to_resources(study, target.form.id, entry.values,
                               patient_ref=f"Patient/{target.subject.patient_id}", visit_date=the_date)
    suspects.link_suspects(study, store.session, target.form, target.subject.patient_id, mapped.resources, the_date)
    previous = owned_resources(instance)
    owned = _write_resources(store, target, mapped, previous, context)
    # after the write, so eligibility sees the entered randomisation date as R; a refusal rolls it all back
    basis = eligibility_gate(runtime, store, target.subject) if assigns_arm(target.form) else None

    now, actor = datetime.now(UTC), store.actor
    created = instance is None
    if created:
        instance = FormInstance(
            id=target.instance_id, subject_id=target.subject.id, patient_id=target.subject.patient_id,
            site=target.subject.site, form_id=target.form.id, visit_id=target.visit_key, entry_id=target.entry_id,
            status="draft", version=0,
            visit_date=the_date, resources="{}", created_at=now, created_by=actor.sub, updated_at=now,
            updated_by=actor.sub, updated_role=actor.role)
    old_status, old_date, old_deviation = (None if created else instance.status), instance.visit_date, instance.deviation
    instance.status = lifecycle.status_after_edit(entry.complete)
    instance.version += 1
    instance.visit_date, instance.deviation = the_date, deviation
    instance.resources = orjson.dumps(owned).decode()
    instance.updated_at, instance.updated_by, instance.updated_role = now, actor.sub, actor.role
    instance.verified_at = instance.verified_by = None
    instance.signed_at = instance.signed_by = instance.signature_meaning = instance.signature_hash = None
    if basis is not None:
        instance.eligibility_basis = basis
    store.session.add(instance)
    _index_owned(store, instance.id, previous, owned)
    try:
        store.session.flush()
    except IntegrityError as error:  # a concurrent first save of the same form won the unique key
        raise Conflict(f"{_what(target)} was saved concurrently: read it again") from error
    if old_status != instance.status:
        _audit_form(store, target, instance, "form.status", old_status, instance.status, reason)
    if not created and old_date != the_date:
        _audit_form(store, target, instance, "form.visit_date", old_date.isoformat(), the_date.isoformat(), reason)
    if deviation and deviation != old_deviation:
        _audit_form(store, target, instance, "form.deviation", old_deviation, deviation, reason)
    if runtime.safety is not None:  # a serious adverse event starts its reporting clock in this transaction
        safety.after_entry_save(runtime.safety, store, instance, entry.canonical, runtime.now())
    view = describe(store, study, target, instance)
    view["warnings"] = [finding.as_dict() for finding in entry.warnings + date_warnings]
    return SaveResult(view, created, entry.warnings + date_warnings)


def transition(store: ClinicalStore, study: StudyDef, subject_id: str, form_id: str, visit_id: str, name: str, *,
               meaning: str | None, reason: str | None, if_match: int | None) -> dict[str, Any]:
    """verify / sign / lock / unlock one form instance, recorded in the audit trail."""
    target = locate(store, study, subject_id, form_id, visit_id, writing=False)
    return transition_target(store, study, target, _instance(store, target.instance_id, for_update=True), name,
                             meaning=meaning, reason=reason, if_match=if_match)


def transition_entry(store: ClinicalStore, study: StudyDef, subject_id: str, form_id: str, entry_id: str,
                     visit_id: str | None, name: str, *, meaning: str | None, reason: str | None,
                     if_match: int | None) -> dict[str, Any]:
    target, instance = locate_entry(store, study, subject_id, form_id, entry_id, visit_id, for_update=True)
    return transition_target(store, study, target, instance, name, meaning=meaning, reason=reason, if_match=if_match)


def transition_target(store: ClinicalStore, study: StudyDef, target: Target, instance: FormInstance | None,
                      name: str, *, meaning: str | None, reason: str | None, if_match: int | None) -> dict[str, Any]:
    step = lifecycle.TRANSITIONS[name]
    if instance is None:
        raise Conflict(f"{_what(target)} has not been entered; it cannot be {step.target}")
    _check_version(instance, if_match)
    if instance.status != step.source:
        raise Conflict(f"{_what(target)} is {instance.status}; {name} needs it {step.source}")
    if name == "lock":
        unresolved, _ = unresolved_of_form(store.session, target.subject.id, target.form.id, target.visit_key)
        if unresolved:
            raise Conflict(f"{_what(target)} has {unresolved} unresolved "
                           f"quer{'y' if unresolved == 1 else 'ies'} (open or answered): close before locking")
    reason, meaning = (reason or "").strip() or None, (meaning or "").strip() or None
    problems = []
    if step.needs_reason and not reason:
        problems.append({"item": "reason", "rule": "reason_required", "message": f"{name} needs a reason"})
    if name == "sign" and not meaning:
        problems.append({"item": "meaning", "rule": "required",
                         "message": "a signature needs its meaning, e.g. 'I approve the data of this form'"})
    if problems:
        raise EditCheckFailed(problems, f"{name} refused")
    now, actor, old_status = datetime.now(UTC), store.actor, instance.status
    instance.status = step.target
    instance.version += 1
    instance.updated_at, instance.updated_by, instance.updated_role = now, actor.sub, actor.role
    if name == "verify":
        instance.verified_at, instance.verified_by = now, actor.sub
    elif name == "sign":
        values = describe(store, study, target, instance)["items"]
        signed = {item_id: {"value": entry.get("exact", entry.get("value")), "unit": entry.get("unit")}
                  for item_id, entry in values.items() if entry["source"] == "form" or target.entry_id}
        instance.signed_at, instance.signed_by, instance.signature_meaning = now, actor.sub, meaning
        instance.signature_hash = lifecycle.signed_content_hash(
            subject_id=target.subject.id, form_id=target.form.id, visit_id=target.visit_key, version=instance.version,
            visit_date=instance.visit_date.isoformat(), items=signed, meaning=meaning, name=actor.sub, at=now)
    elif name == "lock":
        instance.locked_at, instance.locked_by = now, actor.sub
    elif name == "unlock":
        instance.locked_at = instance.locked_by = None
    store.session.add(instance)
    store.session.flush()
    detail = f"{step.target}: {meaning}" if name == "sign" else step.target
    _audit_form(store, target, instance, f"form.{name}", old_status, detail, reason)
    return describe(store, study, target, instance)


def withdraw_entry(store: ClinicalStore, study: StudyDef, subject_id: str, form_id: str, entry_id: str,
                   visit_id: str | None, *, reason: str | None, if_match: int | None) -> dict[str, Any]:
    """Mark an entry entered in error: never deleted; its FHIR resources are deleted in the store (their
    versions stay in the history), the entry keeps its id, its reason and its audit trail."""
    target, instance = locate_entry(store, study, subject_id, form_id, entry_id, visit_id, for_update=True)
    _check_version(instance, if_match)
    if instance.status == "locked":
        raise Conflict(f"{_what(target)} is locked; a data manager must unlock it first")
    if instance.status == WITHDRAWN:
        raise Conflict(f"{_what(target)} is already withdrawn")
    reason = (reason or "").strip() or None
    if not reason:
        raise EditCheckFailed([{"item": "reason", "rule": "reason_required",
                                "message": "withdrawing an entry needs a reason"}], "withdrawal refused")
    context = WriteContext(source="form", reason=reason, form_id=target.form.id, visit_id=target.visit_key)
    previous = owned_resources(instance)
    for reference in previous.values():
        resource_type, resource_id = reference.split("/", 1)
        store.delete(resource_type, resource_id, context)
    _index_owned(store, instance.id, previous, {})
    now, actor, old_status = datetime.now(UTC), store.actor, instance.status
    lifecycle.changed(instance, WITHDRAWN, actor, now)
    instance.withdrawn_reason, instance.resources = reason, "{}"
    store.session.add(instance)
    store.session.flush()
    _audit_form(store, target, instance, "form.withdraw", old_status, WITHDRAWN, reason)
    return describe(store, study, target, instance)
