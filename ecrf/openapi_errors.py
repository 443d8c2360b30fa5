"""The errors every operation can answer, in the OpenAPI document, with the body each one really has.

One place decides, from what an operation is (which door, whether it needs a token, whether it names a
resource in its path, whether it takes a body, whether it writes), which of 400, 401, 403, 404, 409, 410,
412, 413, 415, 422, 429 and 503 it can answer, the way the code answers them:

- every request passes the request guard (ecrf/security.py): control characters in the path or query (400),
  too many requests (429 with Retry-After); a body over the limits (413), of another content type (415), not
  strict JSON (400);
- a route that declares an action needs a bearer token (401) that may do it (403);
- a path naming a subject, form, query, job or resource answers 404 for one that does not exist for the
  caller (another site's data included); a deleted FHIR resource is 410;
- a write can conflict with the state (409: a locked form, a duplicate, a lifecycle step out of order) or
  with the version it was based on (412, If-Match);
- a database that cannot be reached is 503 with Retry-After.

Bodies: under /api/v1 `{"detail", "errors": [{"item", "rule", "message"}]}`, under /fhir an OperationOutcome
(ecrf/errors.py makes both). Hooked once, by `install(app)` in ecrf/app.py.
"""

from typing import Any

from fastapi import FastAPI

from ecrf.responses import FHIR_PREFIX, is_fhir_path

API_ERROR = "ApiError"
OPERATION_OUTCOME = "OperationOutcome"
WRITES = {"post", "put", "patch", "delete"}
WITH_BODY = {"post", "put", "patch"}

DESCRIPTIONS = {
    400: "Malformed request: a control character in the path or query, a body that is not strict JSON "
    "(or repeats a key), an unknown FHIR search parameter or modifier, an invalid FHIR resource",
    401: "No bearer token, or one that is malformed, expired, of another issuer or audience, or badly signed",
    403: "The token's role (or SMART scopes) may not do this",
    404: "Nothing with this id exists for the caller (another site's data answer the same)",
    409: "Conflicts with the current state: a locked form, a duplicate, a step the lifecycle does not allow",
    410: "The FHIR resource was deleted",
    412: "If-Match names a version that is no longer the current one",
    413: "The body is over a limit: bytes, JSON depth, JSON values, object keys, or Bundle entries",
    415: "The body is not application/json or application/fhir+json (UTF-8)",
    422: "Well-formed but breaks a rule: every failing item, with its rule",
    429: "Too many requests from this client; try again after Retry-After seconds",
    503: "The database cannot be reached right now; try again after Retry-After seconds",
}
HEADERS = {
    401: {
        "WWW-Authenticate": {
            "description": 'Bearer, with error="invalid_token" for a refused token',
            "schema": {"type": "string"},
        }
    },
    429: {"Retry-After": {"description": "seconds", "schema": {"type": "integer"}}},
    503: {"Retry-After": {"description": "seconds", "schema": {"type": "integer"}}},
}
OAUTH_ERROR = "OAuthError"
OAUTH_PREFIX = "/auth/"  # the SMART authorization server (ecrf/smart): RFC 6749 errors
SCHEMAS = {
    OAUTH_ERROR: {
        "type": "object",
        "title": OAUTH_ERROR,
        "required": ["error"],
        "description": "An OAuth 2.0 error of the token endpoint (RFC 6749 section 5.2).",
        "properties": {"error": {"type": "string"}, "error_description": {"type": "string"}},
    },
    API_ERROR: {
        "type": "object",
        "title": API_ERROR,
        "required": ["detail"],
        "description": "An /api/v1 error: what went wrong, and every failing item with its rule.",
        "properties": {
            "detail": {"type": "string"},
            "errors": {"type": "array", "items": {"$ref": "#/components/schemas/ValidationError"}},
        },
    },
    OPERATION_OUTCOME: {
        "type": "object",
        "title": OPERATION_OUTCOME,
        "required": ["resourceType", "issue"],
        "description": "A FHIR R4 OperationOutcome: one issue per problem, located as FHIRPath where known.",
        "properties": {
            "resourceType": {"type": "string", "enum": [OPERATION_OUTCOME]},
            "issue": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["severity", "code"],
                    "properties": {
                        "severity": {"type": "string"},
                        "code": {"type": "string"},
                        "diagnostics": {"type": "string"},
                        "expression": {"type": "array", "items": {"type": "string"}},
                        "location": {"type": "array", "items": {"type": "string"}},
                    },
                },
            },
        },
    },
}


def errors_of(path: str, method: str, operation: dict[str, Any]) -> list[int]:
    """The error statuses an operation can answer (see the module's docstring)."""
    fhir = is_fhir_path(path)
    statuses = {400, 429, 503}
    if operation.get("security"):
        statuses |= {401, 403}
    if path.startswith(OAUTH_PREFIX) and method == "post":
        statuses.add(401)  # invalid_client: the client's assertion is refused (RFC 6749 section 5.2)
    if "{" in path or (fhir and method != "get" and path != FHIR_PREFIX + "/metadata"):
        statuses.add(404)
    if fhir and "{resource_id}" in path:
        statuses.add(410)
    if method in WITH_BODY:
        statuses |= {413, 415, 422}
    if method in WRITES:
        statuses |= {409, 412} if method in {"put", "delete"} or fhir else {409}
    if any(
        p.get("in") == "header" and p.get("name", "").lower() == "if-match" for p in operation.get("parameters", [])
    ):
        statuses.add(412)
    if any(p.get("in") in ("query", "path") for p in operation.get("parameters", [])):
        statuses.add(422)
    if fhir and operation.get("security"):
        statuses.add(422)  # a FHIR rule broken (reference to nothing, unsupported type, ...)
    return sorted(statuses)


# success statuses the FHIR door answers beside the documented one
EXTRA_SUCCESS = {
    ("post", FHIR_PREFIX + "/{resource_type}"): {"201": "Created"},
    ("put", FHIR_PREFIX + "/{resource_type}"): {"201": "Created (no match: the conditional update created it)"},
    ("put", FHIR_PREFIX + "/{resource_type}/{resource_id}"): {
        "201": "Created (update as create, with the client's id)"
    },
    ("get", FHIR_PREFIX + "/$export"): {"202": "Accepted: the status URL is in Content-Location"},
    ("get", FHIR_PREFIX + "/Group/{group_id}/$export"): {"202": "Accepted: the status URL is in Content-Location"},
    ("get", FHIR_PREFIX + "/$export-status/{job_id}"): {"202": "Still running: X-Progress, Retry-After"},
}


def document(schema: dict[str, Any]) -> dict[str, Any]:
    """Add every operation's error responses (and their body schemas) to an OpenAPI document, in place."""
    schema.setdefault("components", {}).setdefault("schemas", {}).update(SCHEMAS)
    for path, operations in schema.get("paths", {}).items():
        fhir = is_fhir_path(path)
        reference = {"$ref": f"#/components/schemas/{OPERATION_OUTCOME if fhir else API_ERROR}"}
        if path.startswith(OAUTH_PREFIX):  # OAuth errors, or the request guard's before the endpoint is reached
            reference = {
                "anyOf": [
                    {"$ref": f"#/components/schemas/{OAUTH_ERROR}"},
                    {"$ref": f"#/components/schemas/{API_ERROR}"},
                ]
            }
        content = (
            {"application/fhir+json": {"schema": reference}, "application/json": {"schema": reference}}
            if fhir
            else {"application/json": {"schema": reference}}
        )
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            for status, description in EXTRA_SUCCESS.get((method, path), {}).items():
                responses.setdefault(status, {"description": description})
            for status in errors_of(path, method, operation):
                answer = responses.setdefault(str(status), {})
                answer["description"] = DESCRIPTIONS[status]
                if status != 422 or fhir or "content" not in answer:  # /api/v1 422 keeps HTTPValidationError
                    answer["content"] = content
                if status in HEADERS:
                    answer["headers"] = HEADERS[status]
    return schema


def install(app: FastAPI) -> None:
    """Wrap the app's OpenAPI builder so the document it serves (and openapi.yaml) lists the errors."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if getattr(app.state, "errors_documented", False):
            return app.openapi_schema
        schema = document(build())
        app.openapi_schema = schema
        app.state.errors_documented = True
        return schema

    app.openapi = openapi
