"""Every operation of openapi.yaml lists the errors it can answer, each with its body schema
(ecrf/openapi_errors.py); the real error answers have those bodies. Schemathesis
(tests/test_fuzz_openapi.py) checks that no answer has a status the document does not list."""

import pytest
import yaml

from ecrf.openapi import OPENAPI_FILE
from tests.fhir_builders import FHIR_JSON

DOCUMENT = yaml.safe_load(OPENAPI_FILE.read_text())
OPERATIONS = [
    (method, path, operation)
    for path, operations in DOCUMENT["paths"].items()
    for method, operation in operations.items()
]


def _id(case) -> str:
    return f"{case[0].upper()} {case[1]}"


@pytest.mark.parametrize("case", OPERATIONS, ids=_id)
def test_every_operation_lists_its_errors_with_a_body_schema(case):
    method, path, operation = case
    responses = operation["responses"]
    expected = {"400", "429", "503"}
    if operation.get("security"):
        expected |= {"401", "403"}
    if "{" in path:
        expected.add("404")
    if method in ("post", "put", "patch"):
        expected |= {"413", "415", "422"}
    if method in ("post", "put", "patch", "delete"):
        expected.add("409")
    if method in ("put",) and "{" in path:
        expected.add("412")
    assert expected <= set(responses), f"{method.upper()} {path} lacks {sorted(expected - set(responses))}"
    fhir = path.startswith("/fhir")
    for status, response in responses.items():
        if int(status) < 400:
            continue
        content = response["content"]
        refs = {
            ref["$ref"].rsplit("/", 1)[-1]
            for media in content.values()
            for ref in media["schema"].get("anyOf", [media["schema"]])
        }
        if path.startswith("/auth/"):  # the SMART token endpoint: OAuth 2.0 errors, or the request guard's
            assert refs == {"OAuthError", "ApiError"}, (status, content)
        elif fhir:
            assert "application/fhir+json" in content and refs == {"OperationOutcome"}, (status, content)
        else:
            assert refs <= {"ApiError", "HTTPValidationError"}, (status, content)
    for status in ("429", "503"):
        assert "Retry-After" in responses[status]["headers"]


def test_the_error_schemas_are_the_bodies_the_service_sends(server):
    api_error = DOCUMENT["components"]["schemas"]["ApiError"]
    outcome = DOCUMENT["components"]["schemas"]["OperationOutcome"]
    with server.client() as anonymous:
        unauthenticated = anonymous.get("/api/v1/subjects")
        fhir_unauthenticated = anonymous.get("/fhir/Patient")
    with server.client("investigator", "S01") as http:
        missing = http.get("/api/v1/subjects/no-such-subject")
        unsupported = http.post("/api/v1/subjects", content=b"<xml/>", headers={"Content-Type": "application/xml"})
        fhir_missing = http.get("/fhir/Patient/no-such-patient")
        fhir_unsupported = http.post(
            "/fhir/Patient", content=b"<Patient/>", headers={"Content-Type": "application/fhir+xml"}
        )
        fhir_bad = http.post("/fhir/Patient", content=b"{", headers=FHIR_JSON)
    for response, status in ((unauthenticated, 401), (missing, 404), (unsupported, 415)):
        assert response.status_code == status
        assert set(api_error["required"]) <= set(response.json()) <= set(api_error["properties"])
    for response, status in (
        (fhir_unauthenticated, 401),
        (fhir_missing, 404),
        (fhir_unsupported, 415),
        (fhir_bad, 400),
    ):
        assert response.status_code == status and response.headers["content-type"].startswith("application/fhir+json")
        body = response.json()
        assert body["resourceType"] == "OperationOutcome" and set(outcome["required"]) <= set(body)
        for issue in body["issue"]:
            assert {"severity", "code"} <= set(issue)
