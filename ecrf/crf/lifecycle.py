"""Form instance lifecycle: draft -> complete -> verified -> signed -> locked (and unlock); an entry may be
withdrawn (entered in error). Every change of a form instance's state is made here, recorded in the audit trail.

`complete`/`draft` follow from the data (all required items present or not) and any edit drops SDV and
signature (`changed`); the other steps are explicit acts of a role, each declared as an action of the access
policy (ecrf/auth/policy.py).
"""

import hashlib
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import orjson
from sqlalchemy.exc import IntegrityError

from ecrf.audit import service as audit
from ecrf.common.errors import Conflict, EditCheckFailed, VersionConflict
from ecrf.crf.describe import describe
from ecrf.crf.locate import Target
from ecrf.crf.models import WITHDRAWN, FormInstance
from ecrf.crf.write import write
from ecrf.queries.models import unresolved_of_form
from ecrf.store.service import ClinicalStore
from study_model.definitions import StudyDef

STATUSES = ("draft", "complete", "verified", "signed", "locked")
REASON_NEEDED = frozenset({"complete", "verified", "signed"})
INSTANCE_RESOURCE = "FormInstance"  # what the audit trail names a form instance


@dataclass(frozen=True)
class Transition:
    name: str
    source: str  # status the form must be in
    target: str
    needs_reason: bool = False


TRANSITIONS = {
    "verify": Transition("verify", "complete", "verified"),
    "sign": Transition("sign", "verified", "signed"),
    "lock": Transition("lock", "signed", "locked"),
    "unlock": Transition("unlock", "locked", "signed", needs_reason=True),
}


def changed(instance: Any, status: str, actor: Any, now: datetime) -> None:
    """A change of the form's data (or its withdrawal): the new status and version, who and when; SDV and
    signature no longer cover it."""
    instance.status = status
    instance.version += 1
    instance.updated_at, instance.updated_by, instance.updated_role = now, actor.sub, actor.role
    instance.verified_at = instance.verified_by = None
    instance.signed_at = instance.signed_by = instance.signature_meaning = instance.signature_hash = None


def status_after_edit(complete: bool) -> str:
    """Any edit drops SDV and signature: the form is complete or draft again."""
    return "complete" if complete else "draft"


def signed_content_hash(
    *,
    subject_id: str,
    form_id: str,
    visit_id: str,
    version: int,
    visit_date: str,
    items: dict[str, Any],
    meaning: str,
    name: str,
    at: datetime,
) -> str:
    """SHA-256 of what was signed: the form's values as stored, who signed, what it means, when."""
    payload = {
        "subject": subject_id,
        "form": form_id,
        "visit": visit_id,
        "version": version,
        "visit_date": visit_date,
        "items": items,
        "meaning": meaning,
        "name": name,
        "at": at.isoformat(timespec="microseconds"),
    }
    return hashlib.sha256(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).hexdigest()


def record(
    store: ClinicalStore,
    instance: FormInstance,
    action: str,
    old: str | None,
    new: str | None,
    reason: str | None,
    *,
    source: str = "form",
) -> None:
    """An audit entry of the form instance (its status, date, deviation, a step of its lifecycle)."""
    audit.append(
        store.session,
        store.actor,
        action,
        source=source,
        patient_id=instance.patient_id,
        form_id=instance.form_id,
        visit_id=instance.visit_id,
        old_value=old,
        new_value=new,
        reason=reason,
        resource=f"{INSTANCE_RESOURCE}/{instance.id}",
        resource_version=instance.version,
    )


def check_version(instance: FormInstance | None, if_match: int | None) -> None:
    current = instance.version if instance else 0
    if if_match is not None and if_match != current:
        raise VersionConflict(f"the form is at version {current}, not {if_match}: read it again")


def refuse_edit(target: Target, instance: FormInstance | None, if_match: int | None) -> None:
    """A save needs the version the caller read, and a form that is not locked."""
    check_version(instance, if_match)
    if instance is not None and instance.status == "locked":
        raise Conflict(f"{target.what} is locked; a data manager must unlock it first")


def saved(
    store: ClinicalStore,
    target: Target,
    instance: FormInstance | None,
    owned: dict[str, str],
    *,
    complete: bool,
    visit_date: date,
    deviation: str | None,
    reason: str | None,
    eligibility_basis: str | None,
) -> tuple[FormInstance, bool]:
    """The form instance after a save of its data (created by the first): complete or draft, a new version,
    SDV and signature dropped, the date and deviation checked; (instance, created)."""
    now, actor = datetime.now(UTC), store.actor
    created = instance is None
    if created:
        instance = FormInstance(
            id=target.instance_id,
            subject_id=target.subject.id,
            patient_id=target.subject.patient_id,
            site=target.subject.site,
            form_id=target.form.id,
            visit_id=target.visit_key,
            entry_id=target.entry_id,
            status="draft",
            version=0,
            visit_date=visit_date,
            resources="{}",
            created_at=now,
            created_by=actor.sub,
            updated_at=now,
            updated_by=actor.sub,
            updated_role=actor.role,
        )
    old_status, old_date, old_deviation = (
        (None if created else instance.status),
        instance.visit_date,
        instance.deviation,
    )
    changed(instance, status_after_edit(complete), actor, now)
    instance.visit_date, instance.deviation = visit_date, deviation
    instance.resources = orjson.dumps(owned).decode()
    if eligibility_basis is not None:
        instance.eligibility_basis = eligibility_basis
    store.session.add(instance)
    try:
        store.session.flush()
    except IntegrityError as error:  # a concurrent first save of the same form won the unique key
        raise Conflict(f"{target.what} was saved concurrently: read it again") from error
    if old_status != instance.status:
        record(store, instance, "form.status", old_status, instance.status, reason)
    if not created and old_date != visit_date:
        record(store, instance, "form.visit_date", old_date.isoformat(), visit_date.isoformat(), reason)
    if deviation and deviation != old_deviation:
        record(store, instance, "form.deviation", old_deviation, deviation, reason)
    return instance, created


def transition(
    store: ClinicalStore,
    study: StudyDef,
    target: Target,
    instance: FormInstance | None,
    name: str,
    *,
    meaning: str | None,
    reason: str | None,
    if_match: int | None,
) -> FormInstance:
    """verify / sign / lock / unlock one form instance, recorded in the audit trail."""
    step = TRANSITIONS[name]
    if instance is None:
        raise Conflict(f"{target.what} has not been entered; it cannot be {step.target}")
    check_version(instance, if_match)
    if instance.status != step.source:
        raise Conflict(f"{target.what} is {instance.status}; {name} needs it {step.source}")
    if name == "lock":
        unresolved, _ = unresolved_of_form(store.session, target.subject.id, target.form.id, target.visit_key)
        if unresolved:
            raise Conflict(
                f"{target.what} has {unresolved} unresolved "
                f"quer{'y' if unresolved == 1 else 'ies'} (open or answered): close before locking"
            )
    reason, meaning = (reason or "").strip() or None, (meaning or "").strip() or None
    problems = []
    if step.needs_reason and not reason:
        problems.append({"item": "reason", "rule": "reason_required", "message": f"{name} needs a reason"})
    if name == "sign" and not meaning:
        problems.append(
            {
                "item": "meaning",
                "rule": "required",
                "message": "a signature needs its meaning, e.g. 'I approve the data of this form'",
            }
        )
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
        signed = {
            item_id: {"value": entry.get("exact", entry.get("value")), "unit": entry.get("unit")}
            for item_id, entry in values.items()
            if entry["source"] == "form" or target.entry_id
        }
        instance.signed_at, instance.signed_by, instance.signature_meaning = now, actor.sub, meaning
        instance.signature_hash = signed_content_hash(
            subject_id=target.subject.id,
            form_id=target.form.id,
            visit_id=target.visit_key,
            version=instance.version,
            visit_date=instance.visit_date.isoformat(),
            items=signed,
            meaning=meaning,
            name=actor.sub,
            at=now,
        )
    elif name == "lock":
        instance.locked_at, instance.locked_by = now, actor.sub
    elif name == "unlock":
        instance.locked_at = instance.locked_by = None
    store.session.add(instance)
    store.session.flush()
    detail = f"{step.target}: {meaning}" if name == "sign" else step.target
    record(store, instance, f"form.{name}", old_status, detail, reason)
    return instance


def withdraw(
    store: ClinicalStore, target: Target, instance: FormInstance, *, reason: str | None, if_match: int | None
) -> FormInstance:
    """Mark an entry entered in error: never deleted; its FHIR resources are deleted in the store (their
    versions stay in the history), the entry keeps its id, its reason and its audit trail."""
    check_version(instance, if_match)
    if instance.status == "locked":
        raise Conflict(f"{target.what} is locked; a data manager must unlock it first")
    if instance.status == WITHDRAWN:
        raise Conflict(f"{target.what} is already withdrawn")
    reason = (reason or "").strip() or None
    if not reason:
        raise EditCheckFailed(
            [{"item": "reason", "rule": "reason_required", "message": "withdrawing an entry needs a reason"}],
            "withdrawal refused",
        )
    write(store, target, instance, None, reason)
    now, actor, old_status = datetime.now(UTC), store.actor, instance.status
    changed(instance, WITHDRAWN, actor, now)
    instance.withdrawn_reason, instance.resources = reason, "{}"
    store.session.add(instance)
    store.session.flush()
    record(store, instance, "form.withdraw", old_status, WITHDRAWN, reason)
    return instance
