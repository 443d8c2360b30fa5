"""Items written at, and read back from, a path of a resource (targets of kind `resource` and `element`).

A path is dotted: `event`, `date`, `dosage[].route`, `extension:ctcae-grade.valueInteger`. A segment
`name[]` is a list element (written as its first entry, read from every entry); `extension:name` is the
study's own extension `name` (its URL from `StudyDef.extension_url`); `component(LOCAL#code)` is the entry
of the list `component` whose `code` has that coding. The value at the path is encoded by
the item's type: a coded value (code, codes, or a boolean with `code_by_value`) as a CodeableConcept, as a
Coding when the path ends in `...Coding`, or as its bare code with `as_code`; a `codes` item writes one
extension per value; dates, numbers, booleans and text as the primitive; a quantity as a UCUM Quantity.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

from fhir_mappings import fhir_constants as fhir
from study_model.definitions import Coding, ItemDef, StudyDef, to_decimal
from study_model.units import resolve_unit


@dataclass(frozen=True)
class Segment:
    name: str
    extension: bool = False
    many: bool = False
    code: str | None = None  # `name(SYSTEM#code)`: the list entry whose `code` holds this coding


def _coding_of(study: StudyDef, compact: str) -> tuple[str, str, str | None]:
    coding = Coding.model_validate(
        compact, context={"code_systems": {**study.code_systems, "LOCAL": study.local_system}}
    )
    return coding.system, coding.code, coding.display


def parse_path(path: str) -> tuple[Segment, ...]:
    segments = []
    for part in path.split("."):
        if part.startswith("extension:"):
            segments.append(Segment(part.split(":", 1)[1], extension=True))
        elif part.endswith("[]"):
            segments.append(Segment(part[:-2], many=True))
        elif part.endswith(")") and "(" in part:
            name, _, code = part[:-1].partition("(")
            segments.append(Segment(name, code=code))
        else:
            segments.append(Segment(part))
    if not segments or segments[-1].extension or any(not s.name for s in segments):
        raise ValueError(f"path {path!r} must end in an element (extension:name.valueX)")
    return tuple(segments)


# -- writing ---------------------------------------------------------------------------------------


def _descend(study: StudyDef, node: dict[str, Any], segment: Segment, *, new: bool = False) -> dict[str, Any]:
    if segment.extension:
        url = study.extension_url(segment.name)
        extensions = node.setdefault("extension", [])
        found = None if new else next((e for e in extensions if e.get("url") == url), None)
        if found is None:
            found = {"url": url}
            extensions.append(found)
        return found
    if segment.code is not None:
        system, code, display = _coding_of(study, segment.code)
        entries = node.setdefault(segment.name, [])
        for entry in entries:
            if (system, code) in _coding_keys(entry.get("code")):
                return entry
        coding = {"system": system, "code": code, **({"display": display} if display else {})}
        entries.append({"code": {"coding": [coding]}})
        return entries[-1]
    if segment.many:
        entries = node.setdefault(segment.name, [])
        if not entries:
            entries.append({})
        return entries[0]
    return node.setdefault(segment.name, {})


def _put(node: dict[str, Any], segment: Segment, value: Any) -> None:
    node[segment.name] = [value] if segment.many else value


def write(study: StudyDef, resource: dict[str, Any], item: ItemDef, path: str, value: Any) -> None:
    """Write the item's value into `resource` at `path`."""
    segments = parse_path(path)
    if item.type == "codes":
        last_extension = max((i for i, s in enumerate(segments) if s.extension), default=None)
        if last_extension is None:  # a list element holding every value
            node = resource
            for segment in segments[:-1]:
                node = _descend(study, node, segment)
            node[segments[-1].name] = [encode(study, item, segments[-1], v) for v in _ordered(value)]
            return
        parent = resource
        for segment in segments[:last_extension]:
            parent = _descend(study, parent, segment)
        for single in _ordered(value):  # one extension per value
            node = _descend(study, parent, segments[last_extension], new=True)
            for segment in segments[last_extension + 1 : -1]:
                node = _descend(study, node, segment)
            _put(node, segments[-1], encode(study, item, segments[-1], single))
        return
    node = resource
    for segment in segments[:-1]:
        node = _descend(study, node, segment)
    _put(node, segments[-1], encode(study, item, segments[-1], value))


def _number(value: Any) -> Decimal | int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return to_decimal(value)


def _ordered(values: Any) -> list[str]:
    return sorted({str(v) for v in values})


def value_key(value: Any) -> str:
    """A value as the key of a by-value mapping (code_by_value, resource_type_by_value)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _value_key(item: ItemDef, value: Any) -> str:
    return value_key(value)


def _coded(item: ItemDef) -> bool:
    return item.type in ("code", "codes") or (item.type == "boolean" and bool(item.fhir.code_by_value))


def encode(study: StudyDef, item: ItemDef, last: Segment, value: Any) -> Any:
    if _coded(item):
        coding = study.value_coding(item, _value_key(item, value))
        if item.fhir.as_code:
            return coding.code
        return coding.fhir() if last.name.endswith("Coding") or last.name == "coding" else {"coding": [coding.fhir()]}
    if item.type == "date":
        return value.isoformat() if isinstance(value, date) else str(value)
    if item.type == "integer":
        return int(value)
    if item.type == "decimal":
        return _number(value)
    if item.type == "boolean":
        return bool(value)
    if item.type == "quantity" or item.unit is not None:
        return quantity(study, item, value)
    return str(value)


def quantity(study: StudyDef, item: ItemDef, value: Any) -> dict[str, Any]:
    """A UCUM Quantity holding the value and unit as entered; quantity items also carry the
    canonical value in the study's canonical-quantity extension."""
    if isinstance(value, dict):
        amount, unit = value.get("value"), value.get("unit")
    else:
        amount, unit = value, None
    resolved = resolve_unit(item, unit)
    entered = _number(amount)
    result: dict[str, Any] = {"value": entered, "unit": unit or item.unit, "system": fhir.UCUM, "code": resolved.ucum}
    if item.type == "quantity":
        canonical = to_decimal(entered) * resolved.factor
        result["extension"] = [
            {
                "url": study.canonical_quantity_extension,
                "valueQuantity": {"value": canonical, "unit": item.unit, "system": fhir.UCUM, "code": item.unit},
            }
        ]
    return result


# -- reading ---------------------------------------------------------------------------------------


def read(study: StudyDef, resource: dict[str, Any], path: str) -> list[Any]:
    """Every value found at `path` (several where a list or a repeated extension holds them)."""
    nodes: list[Any] = [resource]
    for segment in parse_path(path):
        found: list[Any] = []
        for node in nodes:
            if not isinstance(node, dict):
                continue
            if segment.extension:
                url = study.extension_url(segment.name)
                found += [e for e in node.get("extension") or [] if isinstance(e, dict) and e.get("url") == url]
                continue
            if segment.code is not None:
                key = _coding_of(study, segment.code)[:2]
                found += [
                    e
                    for e in node.get(segment.name) or []
                    if isinstance(e, dict) and key in _coding_keys(e.get("code"))
                ]
                continue
            value = node.get(segment.name)
            if value is None:
                continue
            found += value if isinstance(value, list) else [value]
        nodes = found
    return nodes


def decode(study: StudyDef, item: ItemDef, raw: Any) -> tuple[Any, str | None]:
    """(canonical value, None) or (None, why it cannot be read) for one value found at the item's path."""
    if _coded(item):
        keys = _coding_keys(raw)
        candidates = ("true", "false") if item.type == "boolean" else (item.values or ())
        for candidate in candidates:
            coding = study.value_coding(item, candidate)
            if (item.fhir.as_code and raw == coding.code) or coding.key in keys:
                return (candidate == "true") if item.type == "boolean" else candidate, None
        return None, f"{raw!r} is none of the codes of {item.id}"
    if item.type == "date":
        text = raw if isinstance(raw, str) else None
        try:
            return date.fromisoformat(text[:10]), None
        except (TypeError, ValueError):
            return None, f"unreadable date {raw!r}"
    if item.type == "integer" and isinstance(raw, int) and not isinstance(raw, bool):
        return raw, None
    if item.type == "decimal" and isinstance(raw, (int, float, Decimal)) and not isinstance(raw, bool):
        return to_decimal(raw), None
    if item.type == "boolean" and isinstance(raw, bool):
        return raw, None
    if item.type == "text" and isinstance(raw, str):
        return raw, None
    return None, f"{raw!r} is not a {item.type} value"


def _coding_keys(raw: Any) -> set[tuple[str, str]]:
    if not isinstance(raw, dict):
        return set()
    codings = raw.get("coding") if "coding" in raw else [raw]
    return {(c.get("system"), c.get("code")) for c in codings or [] if isinstance(c, dict)}
