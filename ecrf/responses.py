"""JSON bodies with orjson; Decimals are written with all their digits (clinical values are exact)."""

from decimal import Decimal
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse

FHIR_JSON = "application/fhir+json"
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}  # token answers, success or error (RFC 6749 5.1)
FHIR_PREFIX = "/fhir"  # where the FHIR door is mounted (ecrf/app.py); everything that names it takes it from here


def server_root(request: Request) -> str:
    """This server's root URL as the request reached it (scheme://host[:port], no trailing slash)."""
    return str(request.base_url).rstrip("/")


def fhir_base(request: Request) -> str:
    """This server's FHIR base URL as the request reached it: fullUrls, links and Locations start with it."""
    return server_root(request) + FHIR_PREFIX


def is_fhir_path(path: str) -> bool:
    """Whether a URL path is under the FHIR door."""
    return path == FHIR_PREFIX or path.startswith(FHIR_PREFIX + "/")


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise TypeError(f"{value} is not a JSON number")
        return orjson.Fragment(format(value, "f") if abs(value.adjusted()) < 30 else str(value))
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def dumps(content: Any) -> bytes:
    return orjson.dumps(content, default=_default)


class JSONBody(JSONResponse):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return dumps(content)


class FHIRBody(JSONBody):
    media_type = FHIR_JSON
