"""Reading FHIR dates once: the calendar date a value was sent with, the instants a partial date stands
for, and age in completed years."""

from datetime import UTC, date, datetime, timedelta
from typing import Any


def date_of(value: Any) -> date | None:
    """The calendar date a FHIR date or dateTime was sent with: the date of its own offset, never of UTC
    (2026-11-12T07:00+08:00 is 2026-11-12). Partial dates (year, year-month) and what is no date have none."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, str) and len(value) >= 10:
        try:
            return date.fromisoformat(value[:10])
        except ValueError:
            return None
    return None


def _start(text: str) -> tuple[datetime, str]:
    """The first UTC instant of a FHIR date of some precision, and the precision (year, month, day, moment)."""
    if len(text) == 4:
        return datetime(int(text), 1, 1, tzinfo=UTC), "year"
    if len(text) == 7:
        return datetime(int(text[:4]), int(text[5:7]), 1, tzinfo=UTC), "month"
    if len(text) == 10:
        return datetime.fromisoformat(text).replace(tzinfo=UTC), "day"
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return (moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)), "moment"


def moment_span(text: str) -> tuple[datetime, datetime]:
    """The UTC instants [start, end) a FHIR date of some precision (year, year-month, date, dateTime,
    instant) stands for; a moment without a zone is taken as UTC. ValueError (or OverflowError at the edge
    of the calendar) when it is none of those."""
    start, precision = _start(text)
    if precision == "year":
        return start, start.replace(year=start.year + 1)
    if precision == "month":
        return start, (start + timedelta(days=32)).replace(day=1)
    if precision == "day":
        return start, start + timedelta(days=1)
    step = timedelta(seconds=1) if start.microsecond == 0 else timedelta(microseconds=1)
    return start, start + step


def moment_start(text: str) -> datetime | None:
    """A FHIR date, dateTime or instant as a UTC datetime (partial dates take their start, in UTC), or None."""
    try:
        return _start(text)[0]
    except ValueError:
        return None


def age_in_years(born: date, on: date) -> int:
    """Completed years from `born` to `on`."""
    return on.year - born.year - ((on.month, on.day) < (born.month, born.day))
