"""JSON bodies with orjson; Decimals are written with all their digits (clinical values are exact)."""
from decimal import Decimal
from typing import Any

import orjson
from starlette.responses import JSONResponse

FHIR_JSON = "application/fhir+json"
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}  # token answers, success or error (RFC 6749 5.1)


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
