"""Store failures, each with the HTTP status and FHIR issue code both doors report."""


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
