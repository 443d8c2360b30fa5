"""HTTP framing of the FHIR door: request bodies within limits, FHIR JSON responses and headers."""

from email.utils import format_datetime
from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import Response

from ecrf.common.etags import version_of_etag
from ecrf.errors import FHIR_JSON
from ecrf.common.outcome import FhirError
from ecrf.json_rules import Refusal, parse_json_body
from ecrf.responses import FHIR_PREFIX
from ecrf.store.service import Stored

ACCEPTED_CONTENT_TYPES = frozenset({"application/fhir+json", "application/json"})


class FhirResponse(Response):
    media_type = FHIR_JSON

    def render(self, content: Any) -> bytes:
        if isinstance(content, bytes):
            return content
        return orjson.dumps(content)


def respond(body: dict[str, Any] | None, status: int = 200, headers: dict[str, str] | None = None) -> FhirResponse:
    return FhirResponse(b"" if body is None else body, status_code=status, headers=headers)


def outcome_response(error: FhirError) -> FhirResponse:
    return respond(error.outcome, error.status)


def version_headers(stored: Stored, *, location: bool = False) -> dict[str, str]:
    headers = {"ETag": stored.etag, "Last-Modified": format_datetime(stored.last_updated, usegmt=True)}
    if location:
        headers["Location"] = f"{FHIR_PREFIX}/{stored.reference}/_history/{stored.version_id}"
    return headers


async def read_json(request: Request) -> Any:
    """The request body as JSON. RequestGuard (ecrf/security.py) has already read and checked it (size,
    strict JSON, depth, number of values, control characters) and left the parsed document in the state."""
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type not in ACCEPTED_CONTENT_TYPES:
        raise FhirError.one(
            415,
            f"content type {content_type or 'none'!r} is not supported: send application/fhir+json or application/json",
            code="not-supported",
        )
    try:
        return request.state.json_body
    except AttributeError:
        pass
    try:
        return parse_json_body(await request.body(), request.app.state.runtime.settings)
    except Refusal as refusal:
        raise FhirError.one(
            refusal.status, refusal.message, code=refusal.code, location=refusal.location(fhir=True)
        ) from None


def if_match_version(request: Request) -> int | None:
    """The version an If-Match header names (W/"3", "3" or 3), or None without the header."""
    value = request.headers.get("if-match")
    if value is None:
        return None
    version = version_of_etag(value)
    if version is None:
        raise FhirError.one(400, f'If-Match {value!r} does not name a version (expected W/"n")')
    return version


def preferences(request: Request) -> dict[str, str]:
    """The Prefer header as name -> value (`return=minimal, handling=strict`)."""
    found = {}
    for part in request.headers.get("prefer", "").split(","):
        for token in part.split(";"):
            name, _, value = token.strip().partition("=")
            if name:
                found[name.strip().lower()] = value.strip().strip('"').lower()
    return found


def strict_handling(request: Request) -> bool:
    return preferences(request).get("handling") == "strict"
