"""Guards in front of every route: oversized bodies, floods, and what reaches the log."""

import logging
import secrets

import pytest

from ecrf.config import Settings
from ecrf.security import loggable_path
from tests.conftest import running_server


@pytest.fixture(scope="module")
def tight_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tight")
    settings = Settings(
        database_url=f"sqlite:///{folder / 'tight.db'}",
        jwt_secret=secrets.token_urlsafe(32),
        max_body_bytes=2048,
        rate_limit_per_minute=5,
        _env_file=None,
    )
    with running_server(settings) as running:
        yield running


@pytest.mark.parametrize("path,fhir", [("/api/v1/subjects", False), ("/fhir", True)])
def test_a_body_over_the_limit_gets_413_before_it_is_read(tight_server, path, fhir):
    with tight_server.client("coordinator", "S01", sub=f"big-{path}") as http:
        response = http.post(path, content=b"{" + b" " * 4096 + b"}", headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    body = response.json()
    if fhir:
        assert body["resourceType"] == "OperationOutcome" and body["issue"][0]["code"] == "too-costly"
    else:
        assert "exceeds" in body["detail"]


def test_a_chunked_body_over_the_limit_gets_413(tight_server):
    def chunks():
        for _ in range(10):
            yield b" " * 1024

    with tight_server.client("coordinator", "S01", sub="chunked") as http:
        response = http.post("/api/v1/subjects", content=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413


def test_a_flooding_client_gets_429_with_retry_after_and_others_are_unaffected(tight_server):
    with tight_server.client("investigator", "S01", sub="flooder") as flooder:
        statuses = [flooder.get("/api/v1/study").status_code for _ in range(8)]
        refused = flooder.get("/api/v1/study")
    assert statuses[:5] == [200] * 5 and 429 in statuses[5:]
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    with tight_server.client("investigator", "S01", sub="patient-user") as other:
        assert other.get("/api/v1/study").status_code == 200


def test_health_checks_are_never_rate_limited(tight_server):
    with tight_server.client() as http:
        assert all(http.get("/healthz").status_code == 200 for _ in range(12))


def test_identifiers_in_paths_are_masked_in_the_request_log():
    assert (
        loggable_path("/fhir/Patient/3f2a9c1e/_history/2", {"type": "Patient", "id": "3f2a9c1e", "vid": "2"})
        == "/fhir/{type}/{id}/_history/{vid}"
    )
    assert (
        loggable_path(
            "/api/v1/subjects/abc/forms/labs/SCR", {"subject_id": "abc", "form_id": "labs", "visit_id": "SCR"}
        )
        == "/api/v1/subjects/{subject_id}/forms/{form_id}/{visit_id}"
    )
    assert loggable_path("/fhir/Patient/MRN-4711/whatever", None) == "/fhir/Patient/…"
    assert loggable_path("/healthz", {}) == "/healthz"


def test_request_log_carries_no_query_string(tight_server, caplog):
    with caplog.at_level(logging.INFO, logger="ecrf.access"):
        with tight_server.client("investigator", "S01", sub="logger") as http:
            http.get("/api/v1/study", params={"mrn": "MRN-SECRET-4711"})
    assert any("/api/v1/study" in record.getMessage() for record in caplog.records)
    assert not any("MRN-SECRET-4711" in record.getMessage() for record in caplog.records)


def test_a_throttled_fhir_client_gets_an_operation_outcome_and_api_clients_the_error_shape(tight_server):
    with tight_server.client("investigator", "S01", sub="fhir-flooder") as flooder:
        responses = [flooder.get("/fhir/Patient") for _ in range(8)]
    refused = responses[-1]
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    assert refused.json()["resourceType"] == "OperationOutcome" and refused.json()["issue"][0]["code"] == "throttled"
    with tight_server.client("investigator", "S01", sub="api-flooder") as flooder:
        responses = [flooder.get("/api/v1/study") for _ in range(8)]
    body = responses[-1].json()
    assert responses[-1].status_code == 429 and body["detail"]
    assert body["errors"] == [{"item": "request", "rule": "rate_limit", "message": body["detail"]}]


def test_clients_without_a_token_are_limited_by_address(tight_server):
    with tight_server.client() as anonymous:
        statuses = [anonymous.get("/fhir/metadata").status_code for _ in range(8)]
    assert statuses[:5] == [200] * 5 and statuses[-1] == 429


def test_the_rate_limit_is_read_from_the_environment_and_zero_turns_it_off(monkeypatch, tmp_path):
    monkeypatch.setenv("ECRF_RATE_LIMIT_PER_MINUTE", "7")
    assert Settings(_env_file=None).rate_limit_per_minute == 7
    monkeypatch.setenv("ECRF_RATE_LIMIT_PER_MINUTE", "0")
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'open.db'}", jwt_secret=secrets.token_urlsafe(32), _env_file=None
    )
    assert settings.rate_limit_per_minute == 0
    with running_server(settings) as open_server, open_server.client("investigator", "S01") as http:
        assert all(http.get("/api/v1/study").status_code == 200 for _ in range(40))
