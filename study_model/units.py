"""Exact unit conversion to an item's canonical unit (decimal.Decimal, no rounding)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from study_model.definitions import ItemDef, to_decimal
from study_model.ucum import is_ucum_like

__all__ = ["UnitError", "ResolvedUnit", "resolve_unit", "to_canonical", "is_ucum_like"]

_MICRO_SIGNS = ("\u00b5", "\u03bc")


class UnitError(ValueError):
    """A unit that the item does not accept, or a value that cannot be converted."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class ResolvedUnit:
    ucum: str  # the UCUM code the entered unit stands for
    factor: Decimal  # multiply by this to get the canonical unit


def resolve_unit(item: ItemDef, unit: str | None) -> ResolvedUnit:
    """Find the accepted unit that `unit` names: exact UCUM code or legacy spelling first, then a
    case-insensitive match (micro signs read as 'u') when it names one factor only."""
    if item.unit is None:
        if unit in (None, ""):
            return ResolvedUnit(ucum="1", factor=Decimal(1))
        raise UnitError(f"item {item.id!r} has no unit, got {unit!r}")
    if unit is None or unit == "":
        return ResolvedUnit(ucum=item.unit, factor=Decimal(1))
    if unit in item.accepted_units:
        return ResolvedUnit(ucum=_ucum_of(item, unit), factor=item.accepted_units[unit])
    wanted = _fold(unit)
    matches = {known: factor for known, factor in item.accepted_units.items() if _fold(known) == wanted}
    factors = set(matches.values())
    if len(factors) == 1:
        ucum_codes = sorted({_ucum_of(item, known) for known in matches})
        return ResolvedUnit(ucum=ucum_codes[0], factor=factors.pop())
    accepted = ", ".join(sorted(item.accepted_units))
    if len(factors) > 1:
        raise UnitError(f"unit {unit!r} is ambiguous for item {item.id!r} (accepted: {accepted})")
    raise UnitError(f"unit {unit!r} is not accepted for item {item.id!r} (accepted: {accepted})")


def to_canonical(item: ItemDef, value: Any, unit: str | None) -> Decimal:
    """`value` in `unit` (None = canonical) converted exactly to the item's canonical unit."""
    resolved = resolve_unit(item, unit)
    try:
        number = to_decimal(value)
    except ValueError as error:
        raise UnitError(f"item {item.id!r}: {error}") from None
    return number * resolved.factor


def _ucum_of(item: ItemDef, unit: str) -> str:
    return item.legacy_units.get(unit, unit)


def _fold(unit: str) -> str:
    text = unit.strip()
    for sign in _MICRO_SIGNS:
        text = text.replace(sign, "u")
    return text.casefold()
