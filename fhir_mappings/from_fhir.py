"""FHIR R4 resource (plain dict, from the form door or an EHR) -> the form items it carries."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from fhir_mappings import elements
from fhir_mappings import fhir_constants as fhir
from study_model.definitions import FormDef, ItemDef, StudyDef, to_decimal
from study_model.units import ResolvedUnit, UnitError, resolve_unit


@dataclass(frozen=True)
class ItemValue:
    """One item value found in a resource. `value` is canonical (Decimal in the canonical unit for
    unit-bearing items, int, bool, str code, date); when `error` is set the value could not be
    read or converted: `value` then holds the original and must never be used as evidence."""

    form_id: str
    item_id: str
    value: Any
    unit: str | None
    original_value: Any
    original_unit: str | None
    effective: date | datetime | None
    uln: Decimal | None = None
    error: str | None = None


def resource_to_items(study: StudyDef, resource: dict[str, Any]) -> list[ItemValue]:
    if not isinstance(resource, dict) or _is_void(resource):
        return []
    resource_type = resource.get("resourceType", "")
    reader = _READERS.get(resource_type)
    found = list(reader(study, resource)) if reader else []
    if study.resource_owners(resource_type):
        found += _element_items(study, resource)
    found += _ehr_entry_items(study, resource)
    return found


def _ehr_entry_items(study: StudyDef, resource: dict[str, Any]) -> Iterator[ItemValue]:
    """A resource that is an entry of a repeating form (`ehr_entries`: a recurrence Condition) read as the
    form's items: the fixed values, and the dates from its elements (each also the values' effective date)."""
    for form in study.forms:
        for ehr in form.ehr_entries:
            if not ehr.matches(resource):
                continue
            moment = resource.get("onsetDateTime")
            effective = _parse_moment(moment)
            for item_id, value in ehr.values.items():
                yield _element_value(form, form.item(item_id), value, effective)
            for item_id, element in ehr.dates.items():
                raw = resource.get(element)
                if raw is None:
                    yield _failed(
                        form, form.item(item_id), None, None, effective, f"{ehr.resource_type} without {element}"
                    )
                else:
                    yield _element_value(form, form.item(item_id), raw, effective)


# --- resources of `resource` targets, items at paths ----------------------------------------


def _element_items(study: StudyDef, resource: dict[str, Any]) -> Iterator[ItemValue]:
    resource_type = resource["resourceType"]
    for form, owner in study.resource_owners(resource_type):
        if not _has_fixed_code(study, owner, resource):
            continue
        found = elements.read(study, resource, owner.fhir.path_in(resource_type))
        values = [elements.decode(study, owner, raw) for raw in found]
        if not any(error is None and _of_type(owner, value, resource_type) for value, error in values):
            continue  # not a resource of this form (another code, or a value that writes another type)
        items = [owner, *(d for d in study.dependents_of(form, owner.id) if d.fhir.kind == "element")]
        effective = None
        if form.date_item in {item.id for item in items}:
            dated = form.item(form.date_item)
            raws = elements.read(study, resource, dated.fhir.path_in(resource_type))
            effective = elements.decode(study, dated, raws[0])[0] if raws else None
        for item in items:
            value = _path_value(study, form, item, resource, effective)
            if value is not None:
                yield value
        for item in study.dependents_of(form, owner.id):
            if item.fhir.kind == "suspect_entity":
                value = _suspect_value(study, form, item, resource, effective)
                if value is not None:
                    yield value


def _suspect_value(
    study: StudyDef, form: FormDef, item: ItemDef, resource: dict[str, Any], effective: date | datetime | None
) -> ItemValue | None:
    """The causality of the suspectEntity of the item's drug: the entry named by the study extension, or whose
    instance is a contained resource (Medication) of the drug's code, as an EHR may send it."""
    wanted = item.fhir.medication.key
    url = study.extension_url(item.fhir.extension)
    contained = {c.get("id"): c for c in resource.get("contained") or [] if isinstance(c, dict)}
    for entry in resource.get("suspectEntity") or []:
        if not isinstance(entry, dict):
            continue
        drugs = set()
        for extension in entry.get("extension") or []:
            if isinstance(extension, dict) and extension.get("url") == url:
                drugs |= _coding_keys(extension.get("valueCodeableConcept"))
        reference = (entry.get("instance") or {}).get("reference") or ""
        if reference.startswith("#"):
            drugs |= _coding_keys((contained.get(reference[1:]) or {}).get("code"))
        if wanted not in drugs:
            continue
        for causality in entry.get("causality") or []:
            if isinstance(causality, dict) and causality.get("assessment"):
                return _coded_value(study, form, item, causality["assessment"], effective)
    for path in item.fhir.legacy_paths:  # as relatedness was written before (a local extension)
        found = elements.read(study, resource, path)
        if found:
            return _coded_value(study, form, item, found[0], effective)
    return None


def _of_type(owner: ItemDef, value: Any, resource_type: str) -> bool:
    """Whether the owner's value writes a resource of this type (exposure: pd1 is a MedicationAdministration)."""
    return not owner.fhir.resource_type_by_value or owner.fhir.resource_type_of(value) == resource_type


def _has_fixed_code(study: StudyDef, owner: ItemDef, resource: dict[str, Any]) -> bool:
    """A resource target with a fixed `code` (Observation LOINC 97509-4) takes only resources of that code."""
    fixed = owner.fhir.fixed.get("code")
    if not isinstance(fixed, dict):
        return True
    return bool(_coding_keys(fixed) & _coding_keys(resource.get("code")))


def _path_value(
    study: StudyDef, form: FormDef, item: ItemDef, resource: dict[str, Any], effective: date | datetime | None
) -> ItemValue | None:
    found = elements.read(study, resource, item.fhir.path_in(resource.get("resourceType")))
    if not found:
        return None
    if item.unit is not None:
        if isinstance(found[0], dict):
            return _quantity_value(form, item, found[0], effective)
        return _failed(form, item, found[0], None, effective, f"{found[0]!r} is not a Quantity")
    decoded = [elements.decode(study, item, raw) for raw in found]
    if item.fhir.as_code:  # a status element holds other codes too (e.g. entered-in-error): only ours count
        decoded = [(value, error) for value, error in decoded if error is None]
        if not decoded:
            return None
    errors = [error for _, error in decoded if error]
    if errors:
        return _failed(form, item, str(found[0]), None, effective, errors[0])
    if item.type == "codes":
        codes = sorted({value for value, _ in decoded})
        return _ok(form, item, codes, codes, None, effective)
    value = decoded[0][0]
    return _ok(form, item, value, found[0] if not isinstance(found[0], dict) else value, None, effective)


# --- Observation --------------------------------------------------------------------------


def _observation_items(study: StudyDef, resource: dict[str, Any]) -> Iterator[ItemValue]:
    matching = study.observation_items_with_code(_coding_keys(resource.get("code")))
    if not matching:
        return
    effective = _parse_moment(
        resource.get("effectiveDateTime")
        or (resource.get("effectivePeriod") or {}).get("start")
        or resource.get("effectiveInstant")
    )
    high = _reference_high(resource)
    for form, item in matching:
        uln = _uln(item, high)
        value = _read_value(study, form, item, resource, effective)
        yield _with_uln(value, uln)
        for dependent in study.dependents_of(form, item.id):
            found = _read_dependent(study, form, dependent, resource, high, effective)
            if found is not None:
                yield found


def _read_value(
    study: StudyDef, form: FormDef, item: ItemDef, element: dict[str, Any], effective: date | datetime | None
) -> ItemValue:
    if item.unit is not None and "valueQuantity" in element:
        return _quantity_value(form, item, element["valueQuantity"], effective)
    if item.type == "integer" and "valueInteger" in element:
        return _ok(form, item, element["valueInteger"], element["valueInteger"], None, effective)
    if item.type == "decimal" and "valueQuantity" in element:
        raw = element["valueQuantity"].get("value")
        return _ok(form, item, to_decimal(raw), raw, None, effective)
    if item.type == "boolean" and "valueBoolean" in element:
        return _ok(form, item, element["valueBoolean"], element["valueBoolean"], None, effective)
    if item.type == "date" and "valueDateTime" in element:
        raw = element["valueDateTime"]
        parsed = _parse_date(raw)
        if parsed is None:
            return _failed(form, item, raw, None, effective, f"unreadable date {raw!r}")
        return _ok(form, item, parsed, raw, None, effective)
    if item.type == "code" and "valueCodeableConcept" in element:
        return _coded_value(study, form, item, element["valueCodeableConcept"], effective)
    present = sorted(key for key in element if key.startswith("value"))
    return _failed(
        form,
        item,
        None,
        None,
        effective,
        f"no value of the expected type for a {item.type} item (found {present or 'none'})",
    )


def _quantity_value(
    form: FormDef, item: ItemDef, quantity: dict[str, Any], effective: date | datetime | None
) -> ItemValue:
    raw, unit = quantity.get("value"), _unit_of(quantity)
    if raw is None:
        return _failed(form, item, None, unit, effective, "quantity without a value")
    if unit is None and not _is_dimensionless(item.unit):
        return _failed(form, item, raw, None, effective, f"no unit; expected {item.unit}")
    try:
        resolved = _resolve(item, quantity)
        canonical = to_decimal(raw) * resolved.factor
    except (UnitError, ValueError) as error:
        return _failed(form, item, raw, unit, effective, str(error))
    if item.type == "integer":
        if canonical != canonical.to_integral_value():
            return _failed(form, item, raw, unit, effective, "not a whole number")
        canonical = int(canonical)
    return _ok(form, item, canonical, raw, unit, effective)


def _resolve(item: ItemDef, quantity: dict[str, Any]) -> ResolvedUnit:
    """Prefer the UCUM code, fall back to the free-text unit."""
    candidates = []
    if quantity.get("code") and quantity.get("system") in (fhir.UCUM, None):
        candidates.append(quantity["code"])
    if quantity.get("unit"):
        candidates.append(quantity["unit"])
    if quantity.get("code") and quantity["code"] not in candidates:
        candidates.append(quantity["code"])
    if not candidates:
        return resolve_unit(item, None)
    first_error: UnitError | None = None
    for candidate in candidates:
        try:
            return resolve_unit(item, candidate)
        except UnitError as error:
            first_error = first_error or error
    raise first_error  # type: ignore[misc]


def _coded_value(
    study: StudyDef, form: FormDef, item: ItemDef, concept: dict[str, Any], effective: date | datetime | None
) -> ItemValue:
    value = _value_from_concept(study, item, concept)
    codes = [f"{c.get('system')}|{c.get('code')}" for c in concept.get("coding") or []]
    if value is None:
        return _failed(form, item, codes, None, effective, f"no coding maps to a value of {item.id!r}: {codes}")
    return _ok(form, item, value, codes[0] if codes else value, None, effective)


def _value_from_concept(study: StudyDef, item: ItemDef, concept: dict[str, Any] | None) -> str | None:
    if not concept:
        return None
    by_key = {study.value_coding(item, value).key: value for value in item.values or ()}
    for coding in concept.get("coding") or []:
        key = (coding.get("system"), coding.get("code"))
        if key in by_key:
            return by_key[key]
        alias = item.fhir.value_aliases.get(f"{key[0]}|{key[1]}")
        if alias is not None:
            return alias
    return None


def _read_dependent(
    study: StudyDef,
    form: FormDef,
    item: ItemDef,
    resource: dict[str, Any],
    high: dict[str, Any] | None,
    effective: date | datetime | None,
) -> ItemValue | None:
    kind = item.fhir.kind
    if kind == "reference_range_high":
        return None if high is None else _quantity_value(form, item, high, effective)
    if kind == "component":
        wanted = {coding.key for coding in item.fhir.codes}
        for component in resource.get("component") or []:
            if _coding_keys(component.get("code")) & wanted:
                return _read_value(study, form, item, component, effective)
        return None
    if kind == "method":
        return _optional_code(study, form, item, resource.get("method"), effective)
    if kind == "interpretation":
        for concept in resource.get("interpretation") or []:
            found = _optional_code(study, form, item, concept, effective)
            if found is not None:
                return found
    return None


def _optional_code(
    study: StudyDef, form: FormDef, item: ItemDef, concept: dict[str, Any] | None, effective: date | datetime | None
) -> ItemValue | None:
    if not concept:
        return None
    return _coded_value(study, form, item, concept, effective)


def _reference_high(resource: dict[str, Any]) -> dict[str, Any] | None:
    """The first referenceRange.high; one without a unit is in the unit of the result it belongs to."""
    for reference_range in resource.get("referenceRange") or []:
        high = reference_range.get("high")
        if isinstance(high, dict):
            result = resource.get("valueQuantity")
            if _unit_of(high) is None and isinstance(result, dict) and _unit_of(result) is not None:
                return {**high, **{key: result[key] for key in ("unit", "system", "code") if key in result}}
            return high
    return None


def _uln(item: ItemDef, high: dict[str, Any] | None) -> Decimal | None:
    """The ULN in the canonical unit; None (the study's default then applies) when it cannot be read, or
    when neither it nor its result names a unit for an item that has one: a unit is never guessed."""
    if high is None or item.unit is None or high.get("value") is None:
        return None
    if _unit_of(high) is None and not _is_dimensionless(item.unit):
        return None
    try:
        return to_decimal(high["value"]) * _resolve(item, high).factor
    except (UnitError, ValueError):
        return None


# --- Patient, ResearchSubject -------------------------------------------------------------


def _patient_items(study: StudyDef, resource: dict[str, Any]) -> Iterator[ItemValue]:
    for form, item in study.items_of_kind("patient"):
        raw = resource.get(item.fhir.path)
        if raw is None:
            continue
        yield _element_value(form, item, raw, None)


def _research_subject_items(study: StudyDef, resource: dict[str, Any]) -> Iterator[ItemValue]:
    for form, item in study.items_of_kind("research_subject"):
        if item.fhir.path == "period.start":
            raw = (resource.get("period") or {}).get("start")
        else:
            raw = resource.get(item.fhir.path)
        if raw is not None:
            yield _element_value(form, item, raw, None)


def _element_value(form: FormDef, item: ItemDef, raw: Any, effective: date | datetime | None) -> ItemValue:
    """A value read from a plain element (a date, or a code mapped back through code_by_value)."""
    if item.type == "date":
        parsed = _parse_date(raw)
        if parsed is None:
            return _failed(form, item, raw, None, effective, f"not a full date: {raw!r}")
        return _ok(form, item, parsed, raw, None, effective)
    by_code = {coding.code: value for value, coding in item.fhir.code_by_value.items()}
    if item.fhir.kind in ("patient", "research_subject") and str(raw) in by_code:
        return _ok(form, item, by_code[str(raw)], raw, None, effective)
    if item.values is not None and str(raw) not in item.values:
        return _failed(
            form, item, raw, None, effective, f"{raw!r} is not a value of {item.id!r} ({', '.join(item.values)})"
        )
    return _ok(form, item, str(raw), raw, None, effective)


# --- Procedure ----------------------------------------------------------------------------


def _procedure_items(study: StudyDef, resource: dict[str, Any]) -> Iterator[ItemValue]:
    keys = _coding_keys(resource.get("code"))
    performed = resource.get("performedDateTime") or (resource.get("performedPeriod") or {}).get("start")
    effective = _parse_moment(performed)
    for form, item in study.items_of_kind("procedure"):
        dependents = study.dependents_of(form, item.id)
        dependent_keys = {study.value_coding(d, v).key for d in dependents for v in d.values or ()}
        if not keys & ({coding.key for coding in item.fhir.codes} | dependent_keys):
            continue
        if performed is None:
            yield _failed(form, item, None, None, None, "procedure without a performed date")
        else:
            yield _element_value(form, item, performed, effective)
        for dependent in dependents:
            value = _value_from_concept(study, dependent, resource.get("code"))
            if value is not None:
                yield _ok(form, dependent, value, value, None, effective)


# --- Condition, Immunization --------------------------------------------------------------


def _condition_items(study: StudyDef, resource: dict[str, Any]) -> Iterator[ItemValue]:
    codings = (resource.get("code") or {}).get("coding") or []
    keys = _coding_keys(resource.get("code"))
    onset = resource.get("onsetDateTime") or (resource.get("onsetPeriod") or {}).get("start")
    effective = _parse_moment(onset or resource.get("recordedDate"))
    for form, item in study.items_of_kind("condition"):
        condition_keys = {c.key for c in item.fhir.codes} | {c.key for c in item.fhir.code_by_value.values()}
        if keys & condition_keys:
            yield _morphology(form, item, resource, effective)
    yield from _ehr_derived(study, "Condition", codings, onset, effective)


def _morphology(form: FormDef, item: ItemDef, resource: dict[str, Any], effective: date | datetime | None) -> ItemValue:
    for extension in resource.get("extension") or []:
        if extension.get("url") != fhir.MCODE_HISTOLOGY_EXTENSION:
            continue
        for coding in (extension.get("valueCodeableConcept") or {}).get("coding") or []:
            if coding.get("system") == item.fhir.value_system:
                return _element_value(form, item, coding.get("code"), effective)
    return _failed(form, item, None, None, effective, "condition without an ICD-O-3 morphology (histology unknown)")


def _immunization_items(study: StudyDef, resource: dict[str, Any]) -> Iterator[ItemValue]:
    codings = (resource.get("vaccineCode") or {}).get("coding") or []
    occurrence = resource.get("occurrenceDateTime")
    yield from _ehr_derived(study, "Immunization", codings, occurrence, _parse_moment(occurrence))


def _ehr_derived(
    study: StudyDef,
    resource_type: str,
    codings: list[dict[str, Any]],
    moment: str | None,
    effective: date | datetime | None,
) -> Iterator[ItemValue]:
    for form in study.forms:
        for item in form.items:
            sources = [s for s in item.fhir.derived_from if s.resource == resource_type]
            if not any(_source_matches(source, codings) for source in sources):
                continue
            if item.type == "boolean":
                yield _ok(form, item, True, True, None, effective)
            elif moment is None:
                yield _failed(form, item, None, None, effective, f"{resource_type} without a date")
            else:
                yield _element_value(form, item, moment, effective)


def _source_matches(source: Any, codings: list[dict[str, Any]]) -> bool:
    if not source.code_prefixes:
        return True
    return any(source.matches_code(c.get("system"), c.get("code")) for c in codings)


# --- helpers ------------------------------------------------------------------------------


def _coding_keys(concept: dict[str, Any] | None) -> set[tuple[str, str]]:
    return {(c.get("system"), c.get("code")) for c in (concept or {}).get("coding") or []}


def _unit_of(quantity: dict[str, Any]) -> str | None:
    return quantity.get("unit") or quantity.get("code")


def _is_dimensionless(unit: str | None) -> bool:
    return unit is None or unit == "1" or (unit.startswith("{") and unit.endswith("}"))


def is_void(resource: dict[str, Any]) -> bool:
    """Cancelled, not done, refuted or entered in error (status or verificationStatus): no evidence."""
    return _is_void(resource)


def _is_void(resource: dict[str, Any]) -> bool:
    if resource.get("status") in fhir.VOID_STATUSES:
        return True
    verification = _coding_keys(resource.get("verificationStatus"))
    return any(code in fhir.VOID_STATUSES for _, code in verification)


def _with_uln(value: ItemValue, uln: Decimal | None) -> ItemValue:
    if uln is None or value.error:
        return value
    return ItemValue(
        value.form_id,
        value.item_id,
        value.value,
        value.unit,
        value.original_value,
        value.original_unit,
        value.effective,
        uln,
    )


def _ok(
    form: FormDef,
    item: ItemDef,
    value: Any,
    original: Any,
    original_unit: str | None,
    effective: date | datetime | None,
) -> ItemValue:
    return ItemValue(form.id, item.id, value, item.unit, original, original_unit, effective)


def _failed(
    form: FormDef,
    item: ItemDef,
    original: Any,
    original_unit: str | None,
    effective: date | datetime | None,
    error: str,
) -> ItemValue:
    return ItemValue(form.id, item.id, original, None, original, original_unit, effective, error=error)


def _parse_date(text: Any) -> date | None:
    if isinstance(text, datetime):
        return text.date()
    if isinstance(text, date):
        return text
    if not isinstance(text, str) or len(text) < 10:
        return None
    try:
        return date.fromisoformat(text[:10])
    except ValueError:
        return None


def _parse_moment(text: Any) -> date | datetime | None:
    if isinstance(text, (date, datetime)):
        return text
    if not isinstance(text, str):
        return None
    try:
        if len(text) == 10:
            return date.fromisoformat(text)
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


_READERS = {
    "Observation": _observation_items,
    "Patient": _patient_items,
    "ResearchSubject": _research_subject_items,
    "Procedure": _procedure_items,
    "Condition": _condition_items,
    "Immunization": _immunization_items,
}
