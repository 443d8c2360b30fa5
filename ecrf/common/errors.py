"""Domain failures: the store's and the refusals that list every failing item (rendered as
{"detail", "errors": [{"item", "rule", "message"}]}). Each class names its kind of failure, nothing of HTTP;
the doors' one mapping of a kind to a status, an issue code and a body is ecrf/errors.py."""

from enum import Enum


class Kind(str, Enum):
    """What went wrong, as both doors tell it (ecrf.errors.KINDS says with which status)."""

    INVALID = "invalid"  # the request cannot be read as sent
    BAD_VALUE = "bad-value"  # a value outside what the store keeps (a date off its calendar)
    NOT_FOUND = "not-found"
    GONE = "gone"  # it existed and was deleted
    PRECONDITION_FAILED = "precondition-failed"  # the version the caller named is not the current one
    CONFLICT = "conflict"  # the current state refuses it (a duplicate, a rule naming the existing one)
    LOCKED = "locked"  # a locked form would change
    FORBIDDEN = "forbidden"
    UNPROCESSABLE = "unprocessable"  # read, but its content breaks a rule
    EDIT_CHECK_FAILED = "edit-check-failed"  # hard edit checks failed; nothing was stored


class StoreError(Exception):
    kind = Kind.INVALID

    def __init__(self, message: str, *, location: str | None = None):
        super().__init__(message)
        self.message = message
        self.location = location


class NotFound(StoreError):
    kind = Kind.NOT_FOUND


class Gone(StoreError):
    kind = Kind.GONE


class VersionConflict(StoreError):
    kind = Kind.PRECONDITION_FAILED


class Conflict(StoreError):
    kind = Kind.CONFLICT


class Forbidden(StoreError):
    kind = Kind.FORBIDDEN


class Invalid(StoreError):
    kind = Kind.UNPROCESSABLE


class OffCalendar(StoreError):
    """A date, dateTime or instant outside the calendar the store keeps (ecrf.store.indexing.CALENDAR)."""

    kind = Kind.BAD_VALUE

    def __init__(self, message: str, *, location: str):
        super().__init__(message, location=location)
        self.errors = [{"item": location, "rule": "calendar", "message": message}]


class EditCheckFailed(Invalid):
    """Hard edit checks failed; nothing was stored."""

    kind = Kind.EDIT_CHECK_FAILED

    def __init__(self, errors: list[dict[str, str]], message: str | None = None):
        super().__init__(message or f"{len(errors)} edit check(s) failed; nothing was stored")
        self.errors = errors


class Blocked(Conflict):
    """A conflict with the reasons, e.g. the eligibility criteria that block a randomisation."""

    def __init__(self, message: str, errors: list[dict[str, str]]):
        super().__init__(message)
        self.errors = errors


class FormLocked(StoreError):
    """A write through another door would change a locked form; nothing was written."""

    kind = Kind.LOCKED
