"""Values a form computes from other items of the same entry (e.g. ctc_status).

Three-valued: a case whose inputs are missing makes the derived value unknown (None).
"""

from __future__ import annotations

from decimal import Decimal, DivisionByZero, InvalidOperation
from typing import Any

from study_model.definitions import FormDef, ItemDef, to_decimal
from study_model.rules import COMPARE
from study_model.units import UnitError, to_canonical


def violated(form: FormDef, when: dict[str, Any], values: dict[str, Any]) -> bool:
    """Whether a form check's condition holds (a violation) for the entry's canonical values; unknown is no."""
    return _holds(form, when, values) is True


def derive_item(form: FormDef, item: ItemDef, values: dict[str, Any]) -> Any:
    """The derived value of `item` given the entry's `values`, or None when unknown."""
    if item.derived is None:
        return values.get(item.id)
    for case in item.derived.cases:
        outcome = _holds(form, case.when, values)
        if outcome is None:
            return None
        if outcome:
            return case.value
    return item.derived.otherwise


def _holds(form: FormDef, node: dict[str, Any], values: dict[str, Any]) -> bool | None:
    if "all_of" in node:
        outcomes = [_holds(form, child, values) for child in node["all_of"]]
        return False if False in outcomes else (None if None in outcomes else True)
    if "any_of" in node:
        outcomes = [_holds(form, child, values) for child in node["any_of"]]
        return True if True in outcomes else (None if None in outcomes else False)
    if "not" in node:
        outcome = _holds(form, node["not"], values)
        return None if outcome is None else not outcome
    value = values.get(node["item"])
    if "present" in node:  # never unknown: whether the entry holds the item
        return (value is not None) is bool(node["present"])
    if value is None:
        return None
    if "has" in node:  # a codes item holding this value
        return str(node["has"]) in {str(v) for v in value}
    if "before" in node:  # a date earlier than another item's date
        other = values.get(node["before"])
        return None if other is None else value < other
    if "is" in node:
        return value is node["is"]
    if "equals" in node:
        return str(value) == str(node["equals"])
    if "in" in node:
        return str(value) in {str(option) for option in node["in"]}
    number = canonical_number(form.item(node["item"]), value)
    if number is None:
        return None
    per = node.get("per")
    if per is not None:
        denominator = canonical_number(form.item(per["item"]), values.get(per["item"]))
        if denominator is None:
            return None
        try:
            number = number / denominator * to_decimal(per.get("amount", 1))
        except (DivisionByZero, InvalidOperation):
            return None
    return COMPARE[node["op"]](number, to_decimal(node["value"]))


def canonical_number(item: ItemDef, value: Any) -> Decimal | None:
    """A form value (number or {"value", "unit"}) in the item's canonical unit."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, dict):
        amount, unit = value.get("value"), value.get("unit")
    else:
        amount, unit = value, None
    try:
        if item.unit is None:
            return to_decimal(amount)
        return to_canonical(item, amount, unit)
    except (UnitError, ValueError):
        return None
