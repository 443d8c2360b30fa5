"""Date windows and anchors of the rule language ('R', 'surgery_date + 14d', 'R - 28d')."""

from dataclasses import dataclass, field
from datetime import date, timedelta

from ecrf.eligibility.patient_data import PatientData, Value
from study_model.definitions import StudyDef, WindowDef
from study_model.rules import parse_bound


@dataclass(frozen=True)
class Span:
    """A resolved window: inclusive bounds (None = open); `missing` names anchors without a value."""

    start: date | None
    end: date | None
    missing: tuple[str, ...] = ()

    @property
    def known(self) -> bool:
        return not self.missing

    def contains(self, day: date) -> bool:
        return (self.start is None or self.start <= day) and (self.end is None or day <= self.end)

    def text(self) -> str:
        return f"{self.start.isoformat() if self.start else '…'}..{self.end.isoformat() if self.end else '…'}"


@dataclass(frozen=True)
class Anchors:
    study: StudyDef
    patient: PatientData
    reference: date
    _spans: dict[int, Span] = field(default_factory=dict, compare=False, repr=False)

    def resolve(self, text: str) -> tuple[date | None, str | None]:
        """The date of a bound, or (None, the anchor item that has no value)."""
        bound = parse_bound(text)
        if bound is None:
            raise ValueError(f"not a date bound: {text!r}")
        if bound.anchor == self.study.reference_date.name:
            base = self.reference
        else:
            base = self.latest_date(bound.anchor)
            if base is None:
                return None, bound.anchor
        return base + timedelta(days=bound.days), None

    def latest_date(self, item_id: str) -> date | None:
        values = self.patient.of(item_id)
        return values[-1].value if values else None

    def latest_value(self, item_id: str) -> Value | None:
        values = self.patient.of(item_id)
        return values[-1] if values else None

    def span(self, window: WindowDef) -> Span:
        key = id(window)
        if key not in self._spans:
            self._spans[key] = self._resolve_span(window)
        return self._spans[key]

    def _resolve_span(self, window: WindowDef) -> Span:
        starts, ends, missing = [], [], []
        for texts, found in ((window.on_or_after, starts), (window.on_or_before, ends)):
            for text in texts:
                day, absent = self.resolve(text)
                if absent:
                    missing.append(absent)
                else:
                    found.append(day)
        return Span(max(starts) if starts else None, min(ends) if ends else None, tuple(missing))
