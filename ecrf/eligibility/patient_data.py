"""A patient's clinical facts as the engine sees them, loaded with one query per table for many patients.

Values are exact: the canonical text of each item fact is parsed back into Decimal, int, bool, code or
date. A fact that carries an error (unit not convertible, unreadable value) is kept apart and is never
evidence.
"""

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson
from sqlmodel import Session, select

from ecrf.common.dates import date_of as _date
from ecrf.store.indexing import sent_date
from ecrf.store.models import ItemFact, ResourceHead, ResourceVersion
from study_model.definitions import StudyDef
from fhir_mappings.fhir_constants import VOID_STATUSES

CHUNK = 500
FACT_COLUMNS = (
    ItemFact.pk,
    ItemFact.patient_id,
    ItemFact.resource_type,
    ItemFact.resource_id,
    ItemFact.version_id,
    ItemFact.form_id,
    ItemFact.item_id,
    ItemFact.value_text,
    ItemFact.unit,
    ItemFact.uln,
    ItemFact.effective,
    ItemFact.effective_date,
    ItemFact.error,
    ItemFact.original_value,
    ItemFact.original_unit,
)


@dataclass(frozen=True)
class Value:
    item: str
    form: str
    value: Any
    unit: str | None
    day: date | None  # the date as sent (the sender's calendar): windows, "latest", intervals
    moment: datetime | None  # the exact instant (UTC): orders values of the same day
    uln: Decimal | None
    resource_type: str
    resource_id: str
    version_id: int
    order: int
    original: str | None = None
    original_unit: str | None = None

    @property
    def reference(self) -> str:
        return f"{self.resource_type}/{self.resource_id}"

    @property
    def sort_key(self) -> tuple:
        """Latest = the latest date as sent; the instant then the write order break ties."""
        return (self.day or date.min, self.moment or datetime.min.replace(tzinfo=UTC), self.order)


@dataclass(frozen=True)
class Unusable:
    item: str
    reference: str
    day: date | None
    error: str


@dataclass(frozen=True)
class CodedCondition:
    reference: str
    version_id: int
    codings: tuple[tuple[str, str], ...]
    day: date | None


@dataclass
class PatientData:
    patient_id: str
    values: dict[str, list[Value]] = field(default_factory=lambda: defaultdict(list))
    unusable: dict[str, list[Unusable]] = field(default_factory=lambda: defaultdict(list))
    conditions: list[CodedCondition] = field(default_factory=list)
    answered: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))  # form -> items observed

    def of(self, item_id: str) -> list[Value]:
        return self.values.get(item_id, [])

    def form_answered_without(self, form_id: str, item_id: str) -> bool:
        """Has the item's form been answered (an Observation of another of its items) without the item?"""
        return bool(self.answered.get(form_id, set()) - {item_id}) and not self.of(item_id)


def load(
    session: Session,
    study: StudyDef,
    patient_ids: Iterable[str],
    items: Iterable[str] | None = None,
    conditions: bool = True,
) -> dict[str, PatientData]:
    """The patients' facts: every item's, or only those of `items`; their Conditions unless `conditions` is False."""
    ids = sorted(set(patient_ids))
    data = {patient_id: PatientData(patient_id) for patient_id in ids}
    wanted = sorted(set(items)) if items is not None else None
    for chunk in _chunks(ids):
        query = select(*FACT_COLUMNS).where(ItemFact.patient_id.in_(chunk))
        if wanted is not None:
            query = query.where(ItemFact.item_id.in_(wanted))
        _add_facts(study, data, session.exec(query).all())
        if conditions:
            _add_conditions(session, data, chunk)
    for patient in data.values():
        for values in patient.values.values():
            values.sort(key=lambda value: value.sort_key)
    return data


def _chunks(ids: list[str]) -> Iterable[list[str]]:
    for start in range(0, len(ids), CHUNK):
        yield ids[start : start + CHUNK]


_ITEM_MAPS: dict[int, tuple[dict[str, str], dict[str, str]]] = {}


def _item_maps(study: StudyDef) -> tuple[dict[str, str], dict[str, str]]:
    """Item types, and base item -> its ULN item (cached per loaded study)."""
    if id(study) not in _ITEM_MAPS:
        _ITEM_MAPS[id(study)] = (
            {item.id: item.type for form in study.forms for item in form.items},
            {
                item.fhir.of: item.id
                for form in study.forms
                for item in form.items
                if item.fhir.kind == "reference_range_high"
            },
        )
    return _ITEM_MAPS[id(study)]


def _add_facts(study: StudyDef, data: dict[str, PatientData], facts: Iterable[Any]) -> None:
    types, uln_items = _item_maps(study)
    facts = list(facts)
    exact_uln = {
        (f.resource_type, f.resource_id, f.version_id, f.item_id): f.value_text
        for f in facts
        if f.item_id in uln_items.values() and not f.error and f.value_text
    }
    for fact in facts:
        patient = data[fact.patient_id]
        moment = _utc(fact.effective)
        day = sent_date(fact.effective_date, moment)
        if fact.error or fact.value_text is None or fact.item_id not in types:
            patient.unusable[fact.item_id].append(
                Unusable(fact.item_id, f"{fact.resource_type}/{fact.resource_id}", day, fact.error or "no value")
            )
            continue
        value = _parse(types[fact.item_id], fact.value_text)
        if value is None:
            patient.unusable[fact.item_id].append(
                Unusable(
                    fact.item_id,
                    f"{fact.resource_type}/{fact.resource_id}",
                    day,
                    f"unreadable value {fact.value_text!r}",
                )
            )
            continue
        uln_text = exact_uln.get(
            (fact.resource_type, fact.resource_id, fact.version_id, uln_items.get(fact.item_id, ""))
        )
        patient.values[fact.item_id].append(
            Value(
                item=fact.item_id,
                form=fact.form_id,
                value=value,
                unit=fact.unit,
                day=day,
                moment=moment,
                uln=Decimal(uln_text) if uln_text else _float_decimal(fact.uln),
                resource_type=fact.resource_type,
                resource_id=fact.resource_id,
                version_id=fact.version_id,
                order=fact.pk or 0,
                original=fact.original_value,
                original_unit=fact.original_unit,
            )
        )
        if fact.resource_type == "Observation":
            patient.answered[fact.form_id].add(fact.item_id)


def _add_conditions(session: Session, data: dict[str, PatientData], chunk: list[str]) -> None:
    rows = session.exec(
        select(
            ResourceHead.patient_id, ResourceVersion.resource_id, ResourceVersion.version_id, ResourceVersion.content
        )
        .join(ResourceVersion, ResourceVersion.pk == ResourceHead.version_pk)
        .where(
            ResourceHead.resource_type == "Condition",
            ResourceHead.deleted == False,  # noqa: E712
            ResourceHead.patient_id.in_(chunk),
        )
    ).all()
    for patient_id, resource_id, version_id, content in rows:
        resource = orjson.loads(content)
        if _is_void(resource):
            continue
        codings = tuple(
            (c.get("system") or "", c.get("code") or "") for c in (resource.get("code") or {}).get("coding") or []
        )
        onset = (
            resource.get("onsetDateTime")
            or (resource.get("onsetPeriod") or {}).get("start")
            or resource.get("recordedDate")
        )
        day = _date(onset)
        data[patient_id].conditions.append(CodedCondition(f"Condition/{resource_id}", version_id, codings, day))


def _is_void(resource: dict[str, Any]) -> bool:
    if resource.get("status") in VOID_STATUSES:
        return True
    codings = (resource.get("verificationStatus") or {}).get("coding") or []
    return any(coding.get("code") in VOID_STATUSES for coding in codings)


def _parse(item_type: str, text: str) -> Any:
    try:
        if item_type in ("decimal", "quantity"):
            return Decimal(text)
        if item_type == "integer":
            number = Decimal(text)
            return int(number) if number == number.to_integral_value() else None
        if item_type == "boolean":
            return {"true": True, "false": False}.get(text)
        if item_type == "date":
            return date.fromisoformat(text[:10])
    except (InvalidOperation, ValueError):
        return None
    return text


def _float_decimal(number: float | None) -> Decimal | None:
    """A canonical float back to its decimal digits (exact for up to 15 significant digits)."""
    return None if number is None else Decimal(repr(number))


def _utc(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
