"""The visit schedule relative to day 0 (the surgery date): windows, placement of dated values,
visit-date checks and derived visit status (never stored)."""

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta

from sqlmodel import Session, select

from ecrf.crf.checks import Finding, latest_allowed_date
from ecrf.store.models import ItemFact
from study_model.definitions import FormDef, StudyDef, VisitDef

DONE_STATUSES = frozenset({"complete", "verified", "signed", "locked"})
UNSCHEDULED = "UNS"  # the pseudo-visit of results outside every window of their form (read only)
EVERY_VISIT = "*"  # where subject-level values (not time-bound) show: at every visit of their form


@dataclass(frozen=True)
class Window:
    start: date
    target: date
    end: date


def window(visit: VisitDef, day_zero: date) -> Window:
    return Window(
        day_zero + timedelta(days=visit.window_start),
        day_zero + timedelta(days=visit.target_day),
        day_zero + timedelta(days=visit.window_end),
    )


def day_zero(session: Session, study: StudyDef, patient_id: str) -> date | None:
    """Day 0 from the item facts (any door); with several values the latest recorded one wins."""
    if not study.day_zero_item:
        return None
    facts = session.exec(
        select(ItemFact)
        .where(
            ItemFact.patient_id == patient_id,
            ItemFact.item_id == study.day_zero_item,
            ItemFact.error.is_(None),
        )
        .order_by(ItemFact.pk.desc())
    ).all()
    for fact in facts:
        if fact.value_text and len(fact.value_text) >= 10:
            try:
                return date.fromisoformat(fact.value_text[:10])
            except ValueError:
                continue
    return None


def place(study: StudyDef, form: FormDef, zero: date | None, when: date | None) -> str | None:
    """The visit of `form` whose window contains `when` (a date as sent, never its UTC date); on overlap
    the nearest target day wins. None: unscheduled (outside every window, or no day 0 yet)."""
    if zero is None or when is None:
        return None
    day = (when - zero).days
    candidates = [study.visit(visit_id) for visit_id in form.visits if study.visit(visit_id).contains(day)]
    if not candidates:
        return None
    return min(candidates, key=lambda visit: abs(visit.target_day - day)).id


def check_visit_date(
    study: StudyDef, visit: VisitDef, visit_date: date, zero: date | None
) -> tuple[list[Finding], list[Finding], str | None]:
    """(errors, warnings, deviation): a future date is refused; outside the window is a deviation."""
    if visit_date > latest_allowed_date():
        return [Finding("visit_date", "future_date", f"visit date {visit_date} is in the future")], [], None
    if zero is None:
        return [], [], None
    span = window(visit, zero)
    if span.start <= visit_date <= span.end:
        return [], [], None
    deviation = (
        f"visit date {visit_date} is outside the {visit.id} window {span.start}…{span.end} "
        f"(day {(visit_date - zero).days} after surgery on {zero})"
    )
    return [], [Finding("visit_date", "visit_window", f"protocol deviation: {deviation}")], deviation


def visit_status(study: StudyDef, visit: VisitDef, zero: date | None, done_forms: set[str], today: date) -> str:
    forms = [form.id for form in study.forms if visit.id in form.visits]
    if forms and all(form_id in done_forms for form_id in forms):
        return "done"
    if zero is None:
        return "not_due"
    span = window(visit, zero)
    if today < span.start:
        return "not_due"
    return "due" if today <= span.end else "overdue"


def visit_schedule(study: StudyDef, zero: date | None, instances: Iterable, today: date) -> list[dict]:
    """Every visit with its window, derived status and the status of each of its forms."""
    by_visit: dict[str, dict[str, str]] = {}
    for instance in instances:
        by_visit.setdefault(instance.visit_id, {})[instance.form_id] = instance.status
    schedule = []
    for visit in study.visits:
        statuses = by_visit.get(visit.id, {})
        done = {form_id for form_id, status in statuses.items() if status in DONE_STATUSES}
        span = window(visit, zero) if zero else None
        schedule.append(
            {
                "id": visit.id,
                "label": visit.label,
                "window_start": span.start.isoformat() if span else None,
                "target_date": span.target.isoformat() if span else None,
                "window_end": span.end.isoformat() if span else None,
                "status": visit_status(study, visit, zero, done, today),
                "forms": {
                    form.id: statuses.get(form.id, "not_started") for form in study.forms if visit.id in form.visits
                },
            }
        )
    return schedule
