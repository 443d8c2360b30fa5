"""A save's checks gathered behind one call: the items (checks.py), the reason a signed-off form's change
needs, the visit window (schedule.py), the cross-form checks against the subject's facts (subject_checks.py)
and the items only the randomisation's allocation sets. Nothing is written when one of its errors stands."""

from dataclasses import dataclass
from datetime import date
from typing import Any

from ecrf.common.clock import latest_allowed_date
from ecrf.crf import lifecycle, subject_checks
from ecrf.crf.checks import CheckedEntry, Finding, check_items
from ecrf.crf.locate import Target
from ecrf.crf.models import FormInstance
from ecrf.crf.schedule import check_visit_date, day_zero
from ecrf.crf.values import owned_resources
from ecrf.services import Services
from ecrf.store.service import ClinicalStore
from fhir_mappings.from_fhir import resource_to_items


@dataclass
class CheckedSave:
    entry: CheckedEntry  # the values the mapping receives, their canonical form, completeness
    the_date: date  # what the form is dated by: its date item, else the visit date sent, else today
    deviation: str | None  # a visit out of its window, kept with the form
    reason: str | None
    errors: list[Finding]
    warnings: list[Finding]


def check_save(
    runtime: Services,
    store: ClinicalStore,
    target: Target,
    instance: FormInstance | None,
    items: dict[str, Any],
    visit_date: date | None,
    reason: str | None,
    allocated: bool,
) -> CheckedSave:
    study = runtime.study
    reason = (reason or "").strip() or None
    entry = check_items(target.form, items)
    errors = list(entry.errors) + _typed_allocation(runtime, target, items, allocated)
    errors += _held_by_the_ehr(runtime, store, target, instance, entry)
    if instance is not None and instance.status in lifecycle.REASON_NEEDED and not reason:
        errors.append(
            Finding("reason", "reason_required", f"the form is {instance.status}: a reason for the change is required")
        )
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
    found = subject_checks.check_entry(
        study, store.session, target.form, target.subject.patient_id, entry.canonical, the_date
    )  # cross-form checks (forms/subject_checks.yaml)
    deviation = subject_checks.with_deviations(deviation, found)
    return CheckedSave(
        entry,
        the_date,
        deviation,
        reason,
        errors + date_errors + found.errors,
        entry.warnings + date_warnings + found.warnings,
    )


def _held_by_the_ehr(
    runtime: Services, store: ClinicalStore, target: Target, instance: FormInstance | None, entry: CheckedEntry
) -> list[Finding]:
    """An entry that landed from an EHR resource it keeps beside the form's own (`ehr_entries`: a recurrence
    Condition) takes the items that resource gives as they are: the EHR's resource is never rewritten, so a
    different value would be a second, different fact of the same event (the endpoints would count both)."""
    errors = []
    held = owned_resources(instance)
    for ehr in target.form.ehr_entries:
        reference = held.get(ehr.slot)
        if reference is None:
            continue
        head = store.head(*reference.split("/", 1))
        if head is None or head.deleted:
            continue
        given = {
            value.item_id: value.value
            for value in resource_to_items(runtime.study, store.read(*reference.split("/", 1)).content)
            if value.form_id == target.form.id and value.error is None
        }
        for item_id in (*ehr.values, *ehr.dates):
            if item_id in given and entry.canonical.get(item_id) != given[item_id]:
                message = ehr.message.format(item=item_id, resource=reference, value=given[item_id])
                errors.append(Finding(item_id, "ehr_value", message))
    return errors


def _typed_allocation(runtime: Services, target: Target, items: dict[str, Any], allocated: bool) -> list[Finding]:
    scheme = runtime.randomisation
    if allocated or scheme is None or target.form.id != scheme.form:
        return []
    return [
        Finding(
            item_id,
            "derived",
            f"{item_id} is set by the system's allocation "
            f"(POST /api/v1/subjects/{target.subject.id}/randomise), never entered",
        )
        for item_id in sorted(scheme.derived_items)
        if items.get(item_id) not in (None, "")
    ]
