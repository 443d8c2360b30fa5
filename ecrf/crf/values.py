"""What a form instance shows: item facts written by the instance (source form) and facts that
arrived through FHIR for the subject and fall in the visit's window (source fhir); EHR facts in none of
the form's windows are its unscheduled results. Dates are the dates as sent, never converted to UTC."""

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import func
from sqlmodel import Session, select

from ecrf.crf.models import FormInstance
from ecrf.crf.schedule import EVERY_VISIT, place
from ecrf.store.indexing import sent_date
from ecrf.store.models import ItemFact, ResourceVersion
from study_model.definitions import FormDef, ItemDef, StudyDef

SUBJECT_LEVEL_KINDS = frozenset({"patient", "research_subject"})  # not time-bound: shown at every visit of the form


@dataclass(frozen=True)
class ShownFact:
    fact: ItemFact
    source: str
    author: str
    own: bool = False  # written by the form instance being shown


def owned_resources(instance: FormInstance | None) -> dict[str, str]:
    return orjson.loads(instance.resources) if instance is not None else {}


def item_value(item: ItemDef, fact: ItemFact) -> Any:
    """The canonical value of a fact as JSON: numbers, booleans, ISO dates, codes."""
    if fact.error or fact.value_text is None:
        return None
    if item.type == "boolean":
        return fact.value_text == "true"
    if item.type == "integer":
        return int(Decimal(fact.value_text))
    if item.type in ("decimal", "quantity"):
        return float(Decimal(fact.value_text))
    if item.type == "codes":
        return orjson.loads(fact.value_text)
    return fact.value_text


def _entry(item: ItemDef, shown: ShownFact) -> dict[str, Any]:
    fact = shown.fact
    entry: dict[str, Any] = {"value": item_value(item, fact)}
    if item.unit is not None:
        entry["unit"] = fact.unit or item.unit
        if item.type in ("decimal", "quantity") and fact.value_text is not None and not fact.error:
            entry["exact"] = fact.value_text
        if fact.original_value is not None:
            entry["entered"] = {"value": _number_or_text(fact.original_value), "unit": fact.original_unit or item.unit}
    if fact.uln is not None:
        entry["uln"] = fact.uln
    if fact.error:
        entry["error"] = fact.error
        entry["entered"] = {"value": fact.original_value, "unit": fact.original_unit}
    entry["source"] = shown.source
    entry["resource"] = f"{fact.resource_type}/{fact.resource_id}"
    entry["resource_version"] = fact.version_id
    day = fact_date(fact)
    if day is not None:
        entry["effective"] = day.isoformat()
    return entry


def _number_or_text(text: str) -> Any:
    try:
        number = Decimal(text)
    except ArithmeticError:
        return text
    return int(number) if number == number.to_integral_value() and "." not in text else float(number)


def _facts(session: Session, patient_id: str, form_id: str) -> list[ShownFact]:
    rows = session.exec(
        select(ItemFact, ResourceVersion.source, ResourceVersion.author_sub)
        .join(
            ResourceVersion,
            (ResourceVersion.resource_type == ItemFact.resource_type)
            & (ResourceVersion.resource_id == ItemFact.resource_id)
            & (ResourceVersion.version_id == func.coalesce(ItemFact.set_in_version, ItemFact.version_id)),
        )
        .where(ItemFact.patient_id == patient_id, ItemFact.form_id == form_id)
        .order_by(ItemFact.pk)
    ).all()
    return [ShownFact(fact, source, author) for fact, source, author in rows]


def form_values(
    session: Session,
    study: StudyDef,
    form: FormDef,
    visit_id: str,
    patient_id: str,
    instance: FormInstance | None,
    zero: date | None,
) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """(items, alternatives): one value per item (this instance's own value first, else the latest
    placed FHIR value), plus every other value placed at this visit."""
    chosen: dict[str, list[ShownFact]] = {}
    entry = instance is not None and bool(instance.entry_id)
    for item, shown, placed in _placed(session, study, form, patient_id, instance, zero):
        if shown.own if entry else placed in (visit_id, EVERY_VISIT):  # an entry shows only what it holds
            chosen.setdefault(item.id, []).append(shown)
    return _pick(form, chosen)


def unscheduled_values(
    session: Session, study: StudyDef, form: FormDef, patient_id: str, zero: date | None
) -> list[dict[str, Any]]:
    """EHR results of the form that fall in none of its visit windows (or arrive before day 0 is known),
    grouped by the date they were sent with, oldest first (undated last): [{date, study_day, items,
    alternatives}], items and alternatives as in a form view."""
    by_date: dict[date | None, dict[str, list[ShownFact]]] = {}
    for item, shown, placed in _placed(session, study, form, patient_id, None, zero):
        if placed is None:
            by_date.setdefault(fact_date(shown.fact), {}).setdefault(item.id, []).append(shown)
    results = []
    for day in sorted(by_date, key=lambda d: (d is None, d or date.min)):
        items, alternatives = _pick(form, by_date[day])
        results.append(
            {
                "date": day.isoformat() if day else None,
                "study_day": (day - zero).days if day and zero else None,
                "items": items,
                "alternatives": alternatives,
            }
        )
    return results


def fact_date(fact: ItemFact) -> date | None:
    """The date a fact was sent with (windows, visits and intervals use it, never its UTC date)."""
    return sent_date(fact.effective_date, fact.effective)


def _placed(
    session: Session, study: StudyDef, form: FormDef, patient_id: str, instance: FormInstance | None, zero: date | None
) -> Iterator[tuple[ItemDef, ShownFact, str | None]]:
    """Every fact of the form with where it shows: the instance's own (source form) at its visit,
    subject-level ones at EVERY_VISIT, other EHR facts at the visit placed by their date (None: unscheduled).
    Facts written by another instance of the form belong to that instance and are left out."""
    mine = set(owned_resources(instance).values())
    others = set()
    for other in session.exec(
        select(FormInstance).where(FormInstance.patient_id == patient_id, FormInstance.form_id == form.id)
    ).all():
        if instance is None or other.id != instance.id:
            others |= set(owned_resources(other).values())
    items = {item.id: item for item in form.items}
    for shown in _facts(session, patient_id, form.id):
        fact = shown.fact
        item = items.get(fact.item_id)
        if item is None:
            continue
        reference = f"{fact.resource_type}/{fact.resource_id}"
        if reference in mine:
            # an entry that landed from an EHR shows where each value came from (fhir until edited in the form)
            source = shown.source if instance.source == "fhir" and shown.source == "fhir" else "form"
            yield item, ShownFact(fact, source, shown.author, own=True), instance.visit_id
        elif reference in others:
            continue
        elif item.fhir.kind in SUBJECT_LEVEL_KINDS:
            yield item, shown, EVERY_VISIT
        else:
            yield item, shown, place(study, form, zero, fact_date(fact))


def _pick(form: FormDef, chosen: dict[str, list[ShownFact]]) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """One value per item: the form's own first, else the latest by date as sent (then instant, then
    write order); the others as alternatives."""
    items = {item.id: item for item in form.items}
    values: dict[str, Any] = {}
    alternatives: dict[str, list[dict[str, Any]]] = {}
    for item_id, candidates in chosen.items():
        ordered = sorted(candidates, key=_newest_first)
        values[item_id] = _entry(items[item_id], ordered[0])
        if len(ordered) > 1:
            alternatives[item_id] = [_entry(items[item_id], s) for s in ordered[1:]]
    return {item.id: values[item.id] for item in form.items if item.id in values}, alternatives


def _newest_first(shown: ShownFact) -> tuple:
    fact, day = shown.fact, fact_date(shown.fact)
    return (
        not shown.own,
        shown.own and shown.source != "form",  # an entry's own saved value before its EHR resource's (beside it)
        -(day.toordinal() if day else 0),
        -(fact.effective.timestamp() if fact.effective else 0),
        -fact.pk,
    )
