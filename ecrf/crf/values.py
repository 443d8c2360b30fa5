"""What a form instance shows: item facts written by the instance (source form) and facts that
arrived through FHIR for the subject and fall in the visit's window (source fhir)."""
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import func
from sqlmodel import Session, select

from ecrf.crf.models import FormInstance
from ecrf.crf.schedule import place
from ecrf.store.models import ItemFact, ResourceVersion
from fhir_mappings.definitions import FormDef, ItemDef, StudyDef

SUBJECT_LEVEL_KINDS = frozenset({"patient", "research_subject"})  # not time-bound: shown at every visit of the form


@dataclass(frozen=True)
class ShownFact:
    fact: ItemFact
    source: str
    author: str


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
    if fact.effective is not None:
        entry["effective"] = fact.effective.date().isoformat()
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
        .join(ResourceVersion, (ResourceVersion.resource_type == ItemFact.resource_type)
              & (ResourceVersion.resource_id == ItemFact.resource_id)
              & (ResourceVersion.version_id == func.coalesce(ItemFact.set_in_version, ItemFact.version_id)))
        .where(ItemFact.patient_id == patient_id, ItemFact.form_id == form_id)
        .order_by(ItemFact.pk)
    ).all()
    return [ShownFact(fact, source, author) for fact, source, author in rows]


def form_values(session: Session, study: StudyDef, form: FormDef, visit_id: str, patient_id: str,
                instance: FormInstance | None, zero: date | None) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """(items, alternatives): one value per item (this instance's own value first, else the latest
    placed FHIR value), plus every other value placed at this visit."""
    mine = set(owned_resources(instance).values())
    others = set()
    for other in session.exec(select(FormInstance).where(
            FormInstance.patient_id == patient_id, FormInstance.form_id == form.id)).all():
        if instance is None or other.id != instance.id:
            others |= set(owned_resources(other).values())
    items = {item.id: item for item in form.items}
    chosen: dict[str, list[ShownFact]] = {}
    for shown in _facts(session, patient_id, form.id):
        fact = shown.fact
        item = items.get(fact.item_id)
        if item is None:
            continue
        reference = f"{fact.resource_type}/{fact.resource_id}"
        if reference in mine:
            shown = ShownFact(fact, "form", shown.author)
        elif reference in others:
            continue
        elif item.fhir.kind not in SUBJECT_LEVEL_KINDS:
            when = fact.effective.date() if fact.effective else None
            if place(study, form, zero, when) != visit_id:
                continue
        chosen.setdefault(item.id, []).append(shown)
    values: dict[str, Any] = {}
    alternatives: dict[str, list[dict[str, Any]]] = {}
    for item_id, candidates in chosen.items():
        ordered = sorted(candidates, key=lambda s: (f"{s.fact.resource_type}/{s.fact.resource_id}" not in mine,
                                                    -(s.fact.effective.timestamp() if s.fact.effective else 0),
                                                    -s.fact.pk))
        values[item_id] = _entry(items[item_id], ordered[0])
        if len(ordered) > 1:
            alternatives[item_id] = [_entry(items[item_id], s) for s in ordered[1:]]
    return {item.id: values[item.id] for item in form.items if item.id in values}, alternatives
