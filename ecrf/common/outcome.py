"""OperationOutcome issues, FHIR's refusals carrying them, and pydantic errors as FHIRPath-located issues.

Request-free, so the FHIR search engine (ecrf/search), which a bulk export's `_typeFilter` runs too, raises
the same `FhirError` the FHIR door does. A FHIR refusal names its HTTP status (R4's REST API is HTTP); a
domain error's status comes from the one mapping of kinds, `ecrf.errors.KINDS` (`ecrf.errors.fhir_error_of`).
"""

from typing import Any

MAX_ISSUES_PER_RESOURCE = 100  # a resource with a million bad values gets a short answer, not a huge one


def operation_outcome(issues: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": issues}


def issue(
    message: str, *, code: str = "invalid", severity: str = "error", location: str | None = None
) -> dict[str, Any]:
    entry: dict[str, Any] = {"severity": severity, "code": code, "diagnostics": message}
    if location:
        entry["expression"] = [location]
    return entry


class FhirError(Exception):
    """A refusal with one or more issues; the status is the HTTP status of the whole response."""

    def __init__(self, status: int, issues: list[dict[str, Any]]):
        super().__init__("; ".join(i.get("diagnostics", "") for i in issues))
        self.status = status
        self.issues = issues

    @classmethod
    def one(cls, status: int, message: str, *, code: str = "invalid", location: str | None = None) -> "FhirError":
        return cls(status, [issue(message, code=code, location=location)])

    @property
    def outcome(self) -> dict[str, Any]:
        return operation_outcome(self.issues)


def fhirpath(prefix: str, loc: tuple[Any, ...]) -> str:
    """('entry', 3, 'resource', 'valueQuantity', 'value') -> 'Bundle.entry[3].resource.valueQuantity.value'."""
    text = prefix
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text


def validation_issues(errors: list[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    issues = []
    if len(errors) > MAX_ISSUES_PER_RESOURCE:
        issues.append(issue(f"{len(errors)} problems; the first {MAX_ISSUES_PER_RESOURCE} are listed", location=prefix))
        errors = errors[:MAX_ISSUES_PER_RESOURCE]
    for error in errors:
        loc = tuple(part for part in error.get("loc", ()) if part != "__root__")
        kind = error.get("type", "")
        code = "structure" if kind in ("extra_forbidden", "missing") else "value"
        message = error.get("msg", "invalid")
        if kind == "extra_forbidden":
            message = f"unknown element {loc[-1]!r}" if loc else message
        elif kind == "missing":
            message = f"required element {loc[-1]!r} is missing" if loc else message
        issues.append(issue(message, code=code, location=fhirpath(prefix, loc)))
    return issues
