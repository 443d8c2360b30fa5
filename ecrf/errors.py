"""Error responses: FHIR OperationOutcome under /fhir, JSON with field and rule under /api/v1."""

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import DBAPIError
from ecrf.responses import FHIR_JSON, NO_STORE, JSONBody, is_fhir_path
from starlette.exceptions import HTTPException as StarletteHTTPException

from ecrf.db import OUTAGE_RETRY_AFTER_SECONDS, DatabaseUnavailable, StatementCancelled, is_outage, is_statement_timeout
from ecrf.common.errors import Kind, StoreError
from ecrf.common.outcome import FhirError, issue, operation_outcome
from ecrf.smart.service import OAuthError

ISSUE_CODES = {
    400: "invalid",
    401: "login",
    403: "forbidden",
    404: "not-found",
    405: "not-supported",
    409: "conflict",
    410: "deleted",
    412: "conflict",
    413: "too-costly",
    415: "not-supported",
    422: "processing",
    429: "throttled",
    503: "transient",
}
# The one mapping of a domain error's kind to the HTTP status and the OperationOutcome issue code both doors answer.
KINDS: dict[Kind, tuple[int, str]] = {
    Kind.INVALID: (400, "invalid"),
    Kind.BAD_VALUE: (400, "value"),
    Kind.NOT_FOUND: (404, "not-found"),
    Kind.GONE: (410, "deleted"),
    Kind.PRECONDITION_FAILED: (412, "conflict"),
    Kind.CONFLICT: (409, "conflict"),
    Kind.LOCKED: (409, "business-rule"),
    Kind.FORBIDDEN: (403, "forbidden"),
    Kind.UNPROCESSABLE: (422, "invalid"),
    Kind.EDIT_CHECK_FAILED: (422, "invalid"),
}
MAX_LISTED_ERRORS = 100  # a body with a million unknown fields must not get a million errors back


def status_of(error: StoreError) -> tuple[int, str]:
    """A domain error's HTTP status and issue code."""
    return KINDS[error.kind]


def fhir_error_of(error: StoreError, location: str | None = None) -> FhirError:
    """A domain error as the FHIR door refuses it: its kind's status and issue code, its message and location."""
    status, code = status_of(error)
    return FhirError.one(status, error.message, code=code, location=location or error.location)


def is_fhir(request: Request) -> bool:
    return is_fhir_path(request.url.path)


def error_response(
    request: Request,
    status: int,
    message: str,
    *,
    code: str | None = None,
    location: str | None = None,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONBody:
    if is_fhir(request):
        issues = (
            [
                issue(e["message"], code=code or ISSUE_CODES.get(status, "processing"), location=e.get("item"))
                for e in errors
            ]
            if errors
            else [issue(message, code=code or ISSUE_CODES.get(status, "processing"), location=location)]
        )
        return JSONBody(operation_outcome(issues), status_code=status, media_type=FHIR_JSON, headers=headers)
    body: dict[str, Any] = {"detail": message}
    if errors:
        if len(errors) > MAX_LISTED_ERRORS:
            body["detail"] = f"{message} ({len(errors)} errors; the first {MAX_LISTED_ERRORS} are listed)"
        body["errors"] = errors[:MAX_LISTED_ERRORS]
    elif location:
        body["errors"] = [{"item": location, "rule": code or "invalid", "message": message}]
    return JSONBody(body, status_code=status, headers=headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        return error_response(request, error.status_code, str(error.detail), headers=getattr(error, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError):
        errors = [
            {
                "item": ".".join(str(part) for part in e.get("loc", ()) if part != "body") or "body",
                "rule": e.get("type", "invalid"),
                "message": e.get("msg", "invalid"),
            }
            for e in error.errors()
        ]
        return error_response(request, 422, "the request is not valid", errors=errors)

    @app.exception_handler(DBAPIError)
    async def database_error(request: Request, error: DBAPIError):
        """A database outage is 503 with Retry-After (the client sends it again later, unlike a 409); a
        search stopped by the statement timeout is 503 too. Anything else stays an internal error (500)."""
        if is_outage(error):
            return error_response(
                request,
                503,
                "the database is unavailable: send the request again later",
                code="transient",
                headers={"Retry-After": str(OUTAGE_RETRY_AFTER_SECONDS)},
            )
        if is_statement_timeout(error):
            return error_response(
                request,
                503,
                "the request took longer than the statement timeout allows "
                "(ECRF_STATEMENT_TIMEOUT_MS): narrow it and send it again",
                code="too-costly",
                headers={"Retry-After": str(OUTAGE_RETRY_AFTER_SECONDS)},
            )
        raise error

    @app.exception_handler(StatementCancelled)
    async def statement_cancelled(request: Request, error: StatementCancelled):
        why = (
            "its client went away"
            if error.reason == "disconnected"
            else "the server is stopping"
            if error.reason == "shutdown"
            else "it took longer than the statement timeout allows (ECRF_STATEMENT_TIMEOUT_MS): narrow it"
        )
        return error_response(
            request,
            503,
            f"the request was stopped: {why}",
            code="too-costly",
            headers={"Retry-After": str(OUTAGE_RETRY_AFTER_SECONDS)},
        )

    @app.exception_handler(DatabaseUnavailable)
    async def database_unavailable(request: Request, error: DatabaseUnavailable):
        return error_response(
            request,
            503,
            "the database is unavailable: send the request again later",
            code="transient",
            headers={"Retry-After": str(OUTAGE_RETRY_AFTER_SECONDS)},
        )

    @app.exception_handler(StoreError)
    async def store_error(request: Request, error: StoreError):
        status, code = status_of(error)
        return error_response(
            request, status, error.message, code=code, location=error.location, errors=getattr(error, "errors", None)
        )

    @app.exception_handler(OAuthError)
    async def oauth_error(request: Request, error: OAuthError):
        """RFC 6749 5.2: {"error", "error_description"}, never cached; a client that failed to authenticate
        (invalid_client) gets 401 with WWW-Authenticate, any other refusal 400."""
        headers = dict(NO_STORE)
        status = 400
        if error.error == "invalid_client":
            status, headers["WWW-Authenticate"] = 401, 'Bearer error="invalid_client"'
        return JSONBody(
            {"error": error.error, "error_description": error.description}, status_code=status, headers=headers
        )
