"""Where a rule's values come from: an item's values in a window, described for reasons and evidence."""

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from ecrf.eligibility.findings import number_text, unit_text
from ecrf.eligibility.patient_data import PatientData, Value
from ecrf.eligibility.windows import Anchors, Span
from study_model.definitions import StudyDef


@dataclass(frozen=True)
class Selection:
    """An item's usable values in a window (oldest first), or why none can be chosen."""

    item: str
    values: list[Value]
    span: Span | None  # None: the default window without bounds other than R
    outside: list[Value]  # values that exist but lie outside the window
    window_name: str | None

    @property
    def latest(self) -> Value | None:
        return self.values[-1] if self.values else None


def select_values(
    study: StudyDef, anchors: Anchors, patient: PatientData, item_id: str, window_name: str | None
) -> Selection:
    name = window_name or study.default_window
    explicit = window_name is not None and window_name != study.default_window
    span = anchors.span(study.windows[name]) if name else Span(None, None)
    if not span.known:
        return Selection(item_id, [], span, [], name)
    inside, outside = [], []
    for value in patient.of(item_id):
        if value.day is None:
            (outside if explicit else inside).append(value)  # undated facts (Patient, consent) are timeless
        elif span.contains(value.day):
            inside.append(value)
        else:
            outside.append(value)
    return Selection(item_id, inside, span, outside, name)


def describe(value: Value) -> str:
    shown = number_text(value.value)
    dated = value.day and value.resource_type != "Patient" and value.value != value.day
    when = f" on {value.day.isoformat()}" if dated else ""
    return f"{value.item} {shown}{unit_text(value.unit)}{when}"


def exact_text(value: Any) -> Any:
    if isinstance(value, Decimal):
        return (
            format(value.normalize(), "f")
            if value != value.to_integral_value()
            else format(value.quantize(Decimal(1)), "f")
        )
    if isinstance(value, (bool, int)) or value is None:
        return value
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def evidence(value: Value, **extra: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "reference": value.reference,
        "version": value.version_id,
        "item": value.item,
        "value": exact_text(value.value),
    }
    if value.unit:
        entry["unit"] = value.unit
    if value.day:
        entry["date"] = value.day.isoformat()
    if value.original is not None and value.original_unit and value.original_unit != value.unit:
        entry["as_sent"] = f"{value.original} {value.original_unit}"
    entry.update(extra)
    return entry


def missing(study: StudyDef, item_id: str, selection: Selection | None, patient: PatientData) -> dict[str, Any]:
    """What a coordinator must enter or obtain to settle an unknown that depends on `item_id`."""
    form, _ = study.item(item_id)
    entry: dict[str, Any] = {"item": item_id, "form": form.id, "visits": list(form.visits)}
    if selection is not None and selection.span is not None and (selection.span.start or selection.span.end):
        entry["window"] = {"from": _iso(selection.span.start), "to": _iso(selection.span.end)}
    if selection is not None and selection.span is not None and not selection.span.known:
        entry["detail"] = (
            f"{item_id} cannot be placed in window {selection.window_name}: "
            f"{', '.join(selection.span.missing)} has no value"
        )
    elif selection is not None and selection.outside:
        latest = selection.outside[-1]
        entry["detail"] = (
            f"no {item_id} in window {selection.window_name} ({selection.span.text()}); "
            f"{len(selection.outside)} outside it, latest {describe(latest)} ({latest.reference})"
        )
    else:
        entry["detail"] = f"no {item_id} on file"
    unusable = patient.unusable.get(item_id)
    if unusable:
        entry["unusable"] = [{"reference": u.reference, "error": u.error} for u in unusable]
        entry["detail"] += f"; {len(unusable)} result(s) not usable: {unusable[-1].error}"
    return entry


def _iso(day: Any) -> str | None:
    return day.isoformat() if day else None
