"""Form entry through the eCRF door, each save in five steps: locate (locate.py) -> check (check.py) -> map
(the study's FHIR mapping) -> write, in one store call (write.py) -> describe (describe.py); the form
instance's state changes in lifecycle.py.

Clinical values are written only as FHIR resources (ids derived from subject, form, visit and slot, so a
re-save is a new version of the same resource); the form instance keeps the workflow state.
"""

from dataclasses import dataclass
from datetime import date
from typing import Any

from ecrf.common.errors import Conflict, EditCheckFailed
from ecrf.crf import lifecycle, suspects
from ecrf.crf.check import check_save
from ecrf.crf.checks import Finding
from ecrf.crf.describe import describe
from ecrf.crf.gate import assigns_arm, eligibility_gate
from ecrf.crf.locate import Target, form_instance, locate, locate_entry, new_entry
from ecrf.crf.models import WITHDRAWN, FormInstance
from ecrf.crf.write import write
from ecrf.services import Services
from ecrf.store.service import ClinicalStore
from study_model.definitions import StudyDef
from fhir_mappings.mapping import form_to_resources


@dataclass
class SaveResult:
    view: dict[str, Any]
    created: bool
    warnings: list[Finding]


def save_form(
    runtime: Services,
    store: ClinicalStore,
    subject_id: str,
    form_id: str,
    visit_id: str,
    *,
    items: dict[str, Any],
    visit_date: date | None,
    reason: str | None,
    if_match: int | None,
    allocated: bool = False,
) -> SaveResult:
    """Check and store a visit's form. Nothing is written when a hard check fails. The items the randomisation
    scheme derives (arm, date) are written only by the allocation (`allocated`), never typed (422 `derived`)."""
    target = locate(store, runtime.study, subject_id, form_id, visit_id, writing=True)
    return save_target(
        runtime,
        store,
        target,
        form_instance(store, target, for_update=True),
        items=items,
        visit_date=visit_date,
        reason=reason,
        if_match=if_match,
        allocated=allocated,
    )


def save_entry(
    runtime: Services,
    store: ClinicalStore,
    subject_id: str,
    form_id: str,
    entry_id: str | None,
    visit_id: str | None,
    *,
    items: dict[str, Any],
    visit_date: date | None,
    reason: str | None,
    if_match: int | None,
) -> SaveResult:
    """Create an entry (entry_id None) or save an existing one of a log or repeating form."""
    if entry_id is None:
        target, instance = new_entry(store, runtime.study, subject_id, form_id, visit_id), None
    else:
        target, instance = locate_entry(store, runtime.study, subject_id, form_id, entry_id, visit_id, for_update=True)
        if instance.status == WITHDRAWN:
            raise Conflict(f"entry {entry_id} of form {form_id} was withdrawn (entered in error); add a new entry")
    return save_target(
        runtime, store, target, instance, items=items, visit_date=visit_date, reason=reason, if_match=if_match
    )


def save_target(
    runtime: Services,
    store: ClinicalStore,
    target: Target,
    instance: FormInstance | None,
    *,
    items: dict[str, Any],
    visit_date: date | None,
    reason: str | None,
    if_match: int | None,
    allocated: bool = False,
) -> SaveResult:
    """Check and store one form or entry. Nothing is written when a hard check fails."""
    study = runtime.study
    lifecycle.refuse_edit(target, instance, if_match)
    checked = check_save(runtime, store, target, instance, items, visit_date, reason, allocated)
    if checked.errors:
        raise EditCheckFailed([finding.as_dict() for finding in checked.errors])
    mapped = form_to_resources(
        study,
        target.form.id,
        checked.entry.values,
        patient_ref=f"Patient/{target.subject.patient_id}",
        visit_date=checked.the_date,
    )
    suspects.link_suspects(
        study, store.session, target.form, target.subject.patient_id, mapped.resources, checked.the_date
    )  # an adverse event's suspect drugs: the subject's exposure resources
    owned = write(store, target, instance, mapped, checked.reason)
    # after the write, so eligibility sees the entered randomisation date as R; a refusal rolls it all back
    basis = eligibility_gate(runtime, store, target.subject) if assigns_arm(target.form) else None
    instance, created = lifecycle.saved(
        store,
        target,
        instance,
        owned,
        complete=checked.entry.complete,
        visit_date=checked.the_date,
        deviation=checked.deviation,
        reason=checked.reason,
        eligibility_basis=basis,
    )
    runtime.after_entry_save(store, instance, checked.entry.canonical)  # e.g. an SAE's reporting clock starts
    view = describe(store, study, target, instance)
    view["warnings"] = [finding.as_dict() for finding in checked.warnings]
    return SaveResult(view, created, checked.warnings)


def transition(
    store: ClinicalStore,
    study: StudyDef,
    subject_id: str,
    form_id: str,
    visit_id: str,
    name: str,
    *,
    meaning: str | None,
    reason: str | None,
    if_match: int | None,
) -> dict[str, Any]:
    """verify / sign / lock / unlock a visit's form."""
    target = locate(store, study, subject_id, form_id, visit_id, writing=False)
    instance = lifecycle.transition(
        store,
        study,
        target,
        form_instance(store, target, for_update=True),
        name,
        meaning=meaning,
        reason=reason,
        if_match=if_match,
    )
    return describe(store, study, target, instance)


def transition_entry(
    store: ClinicalStore,
    study: StudyDef,
    subject_id: str,
    form_id: str,
    entry_id: str,
    visit_id: str | None,
    name: str,
    *,
    meaning: str | None,
    reason: str | None,
    if_match: int | None,
) -> dict[str, Any]:
    """verify / sign / lock / unlock an entry."""
    target, instance = locate_entry(store, study, subject_id, form_id, entry_id, visit_id, for_update=True)
    instance = lifecycle.transition(
        store, study, target, instance, name, meaning=meaning, reason=reason, if_match=if_match
    )
    return describe(store, study, target, instance)


def withdraw_entry(
    store: ClinicalStore,
    study: StudyDef,
    subject_id: str,
    form_id: str,
    entry_id: str,
    visit_id: str | None,
    *,
    reason: str | None,
    if_match: int | None,
) -> dict[str, Any]:
    """Withdraw an entry as entered in error (lifecycle.withdraw)."""
    target, instance = locate_entry(store, study, subject_id, form_id, entry_id, visit_id, for_update=True)
    instance = lifecycle.withdraw(store, target, instance, reason=reason, if_match=if_match)
    return describe(store, study, target, instance)
