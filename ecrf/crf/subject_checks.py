"""Cross-form checks (forms/subject_checks.yaml): one entry against facts of its subject, both doors.

The facts (`subject.<name>`) are the latest values of study items, read from the item facts of the store (any
door); the checks are conditions in the language of form checks over the entry's canonical values, the facts
and `entry.date`. The eCRF door returns the findings with the save (hard: 422); a finding of a check with
`deviation` flags the entry as a protocol deviation. The FHIR door is never refused by them: an entry that
lands from an EHR push gets the deviation flag only (`deviation_of_landed`).
"""

from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any

import orjson
from sqlmodel import Session, select

from ecrf.crf.checks import Finding
from ecrf.store.models import ItemFact
from study_model.definitions import (
    ENTRY_DATE,
    SUBJECT_PREFIX,
    FormDef,
    ItemDef,
    StudyDef,
    SubjectCheck,
    condition_items,
)
from study_model.derivation import violated


@dataclass
class SubjectFindings:
    errors: list[Finding] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)
    deviations: list[str] = field(default_factory=list)


def _value(item: ItemDef, fact: ItemFact) -> Any:
    """A stored fact as the canonical value the form checks compare (dates as dates)."""
    text = fact.value_text
    if item.type == "date":
        try:
            return date.fromisoformat(text[:10])
        except (TypeError, ValueError):
            return None
    if item.type == "integer":
        return int(Decimal(text))
    if item.type == "boolean":
        return text == "true"
    if item.type == "codes":
        return orjson.loads(text)
    if item.type in ("decimal", "quantity"):
        return Decimal(text)
    return text


def subject_facts(study: StudyDef, session: Session, patient_id: str, names: set[str] | None = None) -> dict[str, Any]:
    """`subject.<name>` -> the latest readable value of the fact's item for the patient (absent: no value);
    only the facts `names` (`subject.<name>`) when given."""
    found: dict[str, Any] = {}
    for name, fact in study.subject_facts.items():
        if names is not None and f"{SUBJECT_PREFIX}{name}" not in names:
            continue
        form, item = study.item(fact.item)
        row = session.exec(
            select(ItemFact)
            .where(
                ItemFact.patient_id == patient_id,
                ItemFact.form_id == form.id,
                ItemFact.item_id == item.id,
                ItemFact.error.is_(None),
                ItemFact.value_text.is_not(None),
            )
            .order_by(ItemFact.pk.desc())
        ).first()
        value = _value(item, row) if row is not None else None
        if value is not None:
            found[f"{SUBJECT_PREFIX}{name}"] = value
    return found


def _named(form: FormDef, check: SubjectCheck) -> str:
    if check.item == ENTRY_DATE:
        return form.date_item or "visit_date"
    return check.item


def check_entry(
    study: StudyDef, session: Session, form: FormDef, patient_id: str, canonical: dict[str, Any], entry_date: date
) -> SubjectFindings:
    """The findings of the cross-form checks of `form` for an entry of these canonical values and date."""
    result = SubjectFindings()
    checks = [check for check in study.subject_checks if check.applies_to(form.id)]
    if not checks:
        return result
    named = {name for check in checks for name in condition_items(check.when)}
    facts = subject_facts(study, session, patient_id, named)
    for name, fact in study.subject_facts.items():  # the entry being saved is the fact's source (end_of_study)
        fact_form, item = study.item(fact.item)
        if fact_form.id == form.id:
            facts.pop(f"{SUBJECT_PREFIX}{name}", None)
            if canonical.get(item.id) is not None:
                facts[f"{SUBJECT_PREFIX}{name}"] = canonical[item.id]
    values = {**canonical, **facts, ENTRY_DATE: entry_date}
    for check in checks:
        if not violated(form, check.when, values):
            continue
        finding = Finding(_named(form, check), check.rule, check.message)
        (result.errors if check.severity == "hard" else result.warnings).append(finding)
        if check.deviation:
            result.deviations.append(check.message)
    return result


def with_deviations(deviation: str | None, findings: SubjectFindings) -> str | None:
    """The entry's deviation text: the visit window's (if any) and those of the cross-form checks."""
    return "; ".join(text for text in (deviation, *findings.deviations) if text) or None


def canonical_of_view(form: FormDef, items: dict[str, Any]) -> dict[str, Any]:
    """Canonical values from a form view's items (dates back to dates): an entry that landed from an EHR."""
    values: dict[str, Any] = {}
    for item in form.items:
        value = (items.get(item.id) or {}).get("value")
        if value is None or (items.get(item.id) or {}).get("error"):
            continue
        if item.type == "date":
            try:
                value = date.fromisoformat(str(value)[:10])
            except ValueError:
                continue
        values[item.id] = value
    return values


def deviation_of_landed(
    study: StudyDef, session: Session, form: FormDef, patient_id: str, items: dict[str, Any], entry_date: date
) -> str | None:
    """The deviation of an entry that landed from an EHR push: never a refusal, hard findings included."""
    return with_deviations(
        None, check_entry(study, session, form, patient_id, canonical_of_view(form, items), entry_date)
    )
