"""Edit checks on one form entry: hard checks refuse the entry (422), soft checks warn.

Pure functions over the study definition; the schedule checks (visit date against the surgery date)
live in ecrf/crf/schedule.py because they need the subject's data.
"""

from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any

from ecrf.common.clock import latest_allowed_date
from study_model.definitions import DEPENDENT_KINDS, FormDef, ItemDef, condition_items, to_decimal
from study_model.derivation import violated
from study_model.units import UnitError, to_canonical


@dataclass(frozen=True)
class Finding:
    item: str
    rule: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"item": self.item, "rule": self.rule, "message": self.message}


@dataclass
class CheckedEntry:
    """An entry after its checks: `values` is what the FHIR mapping receives (defaults filled)."""

    values: dict[str, Any] = field(default_factory=dict)
    canonical: dict[str, Any] = field(default_factory=dict)
    errors: list[Finding] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.missing


def parse_date(text: Any) -> date | None:
    if not isinstance(text, str) or len(text) != 10:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        return None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number_and_unit(item: ItemDef, raw: Any) -> tuple[Any, str | None] | None:
    if _is_number(raw):
        return raw, None
    if (
        item.unit is not None
        and isinstance(raw, dict)
        and set(raw) <= {"value", "unit"}
        and _is_number(raw.get("value"))
    ):
        unit = raw.get("unit")
        return (raw["value"], unit) if unit is None or isinstance(unit, str) else None
    return None


def _type_message(item: ItemDef) -> str:
    if item.type == "quantity" or item.unit is not None:
        units = ", ".join(item.accepted_units)
        return f'{item.label}: expected a number in {item.unit} or {{"value": number, "unit": one of {units}}}'
    return {
        "date": f"{item.label}: expected a date YYYY-MM-DD",
        "integer": f"{item.label}: expected a whole number",
        "decimal": f"{item.label}: expected a number",
        "boolean": f"{item.label}: expected true or false",
        "code": f"{item.label}: expected one of {', '.join(item.values or ())}",
        "codes": f"{item.label}: expected a list of distinct values of {', '.join(item.values or ())}",
        "text": f"{item.label}: expected text of at most {item.text_limit} characters",
    }[item.type]


def _canonical(item: ItemDef, raw: Any, entry: CheckedEntry) -> Any:
    """The canonical Python value of one raw item value, or None after recording an error."""
    if item.type == "date":
        parsed = parse_date(raw)
        if parsed is None:
            entry.errors.append(Finding(item.id, "type", _type_message(item)))
        elif parsed > latest_allowed_date():
            entry.errors.append(Finding(item.id, "future_date", f"{item.label}: {parsed} is in the future"))
            return None
        return parsed
    if item.type == "boolean":
        if not isinstance(raw, bool):
            entry.errors.append(Finding(item.id, "type", _type_message(item)))
            return None
        return raw
    if item.type == "text":
        if not isinstance(raw, str):
            entry.errors.append(Finding(item.id, "type", _type_message(item)))
            return None
        text = raw.strip()
        if len(text) > item.text_limit:
            entry.errors.append(
                Finding(item.id, "max_length", f"{item.label}: {len(text)} characters, at most {item.text_limit}")
            )
            return None
        return text or None
    if item.type == "codes":
        if not isinstance(raw, list) or not all(isinstance(v, str) for v in raw) or len(set(raw)) != len(raw):
            entry.errors.append(Finding(item.id, "type", _type_message(item)))
            return None
        unknown = [v for v in raw if v not in (item.values or ())]
        if unknown:
            entry.errors.append(
                Finding(
                    item.id,
                    "allowed_values",
                    f"{item.label}: {', '.join(map(repr, unknown))} not among {', '.join(item.values or ())}",
                )
            )
            return None
        return sorted(raw) or None
    if item.type == "code":
        text = str(raw) if isinstance(raw, (str, int)) and not isinstance(raw, bool) else None
        if text is None or text not in (item.values or ()):
            entry.errors.append(
                Finding(
                    item.id, "allowed_values", f"{item.label}: {raw!r} is not one of {', '.join(item.values or ())}"
                )
            )
            return None
        return text
    found = _number_and_unit(item, raw)
    if found is None:
        entry.errors.append(Finding(item.id, "type", _type_message(item)))
        return None
    amount, unit = found
    try:
        number = to_canonical(item, amount, unit) if item.unit is not None else to_decimal(amount)
    except UnitError as error:
        entry.errors.append(Finding(item.id, "unit", error.message))
        return None
    if item.type == "integer" and number != number.to_integral_value():
        entry.errors.append(Finding(item.id, "type", _type_message(item)))
        return None
    return number


def _check_ranges(item: ItemDef, number: Decimal, entry: CheckedEntry) -> bool:
    unit = f" {item.unit}" if item.unit else ""
    if (item.hard_min is not None and number < item.hard_min) or (item.hard_max is not None and number > item.hard_max):
        entry.errors.append(
            Finding(
                item.id,
                "hard_range",
                f"{item.label}: {number}{unit} is outside the possible range "
                f"{_range(item.hard_min, item.hard_max)}{unit}",
            )
        )
        return False
    if (item.soft_min is not None and number < item.soft_min) or (item.soft_max is not None and number > item.soft_max):
        entry.warnings.append(
            Finding(
                item.id,
                "soft_range",
                f"{item.label}: {number}{unit} is outside the expected range "
                f"{_range(item.soft_min, item.soft_max)}{unit}",
            )
        )
    return True


def _range(low: Decimal | None, high: Decimal | None) -> str:
    return f"{'' if low is None else low}–{'' if high is None else high}"


def is_enabled(item: ItemDef, canonical: dict[str, Any]) -> bool:
    if item.enable_when is None:
        return True
    return canonical.get(item.enable_when.item) == item.enable_when.equals


def check_items(form: FormDef, items: dict[str, Any]) -> CheckedEntry:
    """Type, allowed values, units, ranges, conditions, dependencies and completeness of an entry.

    An item sent as null is absent. Items with a default take it when absent (and their owner, if any,
    is present); derived items are computed by the mapping and may not be sent.
    """
    entry = CheckedEntry()
    known = {item.id: item for item in form.items}
    for item_id in sorted(set(items) - set(known)):
        entry.errors.append(Finding(item_id, "unknown_item", f"form {form.id} has no item {item_id!r}"))
    for item in form.items:
        raw = items.get(item.id)
        if raw is None:
            continue
        if item.derived is not None:
            entry.errors.append(Finding(item.id, "derived", f"{item.label} is computed by the server; do not send it"))
            continue
        value = _canonical(item, raw, entry)
        if value is None:
            continue
        if isinstance(value, Decimal) and not _check_ranges(item, value, entry):
            continue
        entry.canonical[item.id] = value
        entry.values[item.id] = raw
    for item in form.items:
        owner = item.fhir.of if item.fhir.kind in DEPENDENT_KINDS else None
        if item.id not in items or items.get(item.id) is None:
            if item.default is not None and item.derived is None and (owner is None or owner in entry.canonical):
                entry.values[item.id] = item.default
                entry.canonical[item.id] = _canonical(item, item.default, CheckedEntry())
            continue
        if owner is not None and items.get(owner) is None:
            entry.errors.append(
                Finding(item.id, "depends_on", f"{item.label} needs {known[owner].label} ({owner}) in the same entry")
            )
    failed = {finding.item for finding in entry.errors}
    for check in form.checks:  # an item that failed its own checks is unknown here: no second finding about it
        if not failed & set(condition_items(check.when)) and violated(form, check.when, entry.canonical):
            finding = Finding(check.item, check.rule, check.message)
            (entry.errors if check.severity == "hard" else entry.warnings).append(finding)
    for item in form.items:
        present = item.id in entry.values
        if not is_enabled(item, entry.canonical):
            if items.get(item.id) is not None:
                condition = item.enable_when
                entry.errors.append(
                    Finding(
                        item.id,
                        "conditional",
                        f"{item.label} applies only when {condition.item} is {_shown(condition.equals)}",
                    )
                )
            entry.values.pop(item.id, None)
            entry.canonical.pop(item.id, None)
            continue
        if item.required and item.derived is None and not present:
            entry.missing.append(item.id)
            entry.warnings.append(Finding(item.id, "required", f"{item.label} is required to complete the form"))
    return entry


def _shown(value: Any) -> str:
    return "true" if value is True else "false" if value is False else str(value)
