"""Domain failures: the store's and the refusals that list every failing item (rendered as
{"detail", "errors": [{"item", "rule", "message"}]}). Each class names the status and FHIR issue code both
doors report; the doors' one mapping to a response is ecrf/errors.py."""


class StoreError(Exception):
    status = 400
    code = "invalid"

    def __init__(self, message: str, *, location: str | None = None):
        super().__init__(message)
        self.message = message
        self.location = location


class NotFound(StoreError):
    status, code = 404, "not-found"


class Gone(StoreError):
    status, code = 410, "deleted"


class VersionConflict(StoreError):
    status, code = 412, "conflict"


class Conflict(StoreError):
    status, code = 409, "conflict"


class Forbidden(StoreError):
    status, code = 403, "forbidden"


class Invalid(StoreError):
    status, code = 422, "invalid"


class OffCalendar(StoreError):
    """A date, dateTime or instant outside the calendar the store keeps (ecrf.store.indexing.CALENDAR)."""
    status, code = 400, "value"

    def __init__(self, message: str, *, location: str):
        super().__init__(message, location=location)
        self.errors = [{"item": location, "rule": "calendar", "message": message}]


class EditCheckFailed(Invalid):
    """422: hard edit checks failed; nothing was stored."""

    def __init__(self, errors: list[dict[str, str]], message: str | None = None):
        super().__init__(message or f"{len(errors)} edit check(s) failed; nothing was stored")
        self.errors = errors


class Blocked(Conflict):
    """409 with the reasons, e.g. the eligibility criteria that block a randomisation."""

    def __init__(self, message: str, errors: list[dict[str, str]]):
        super().__init__(message)
        self.errors = errors


class FormLocked(StoreError):
    """409: a write through another door would change a locked form; nothing was written."""

    status, code = 409, "business-rule"
