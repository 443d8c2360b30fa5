"""The service's clock and the dates it allows."""

from datetime import UTC, date, datetime, timedelta

# A date is "in the future" only once it has begun nowhere on Earth yet (UTC+14), so a site east
# of UTC can enter today's date early in its morning.
EARLIEST_OFFSET = timedelta(hours=14)


def utc_now() -> datetime:
    return datetime.now(UTC)


def latest_allowed_date(now: datetime | None = None) -> date:
    return ((now or utc_now()) + EARLIEST_OFFSET).date()
