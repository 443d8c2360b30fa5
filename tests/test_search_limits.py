"""Bounded searches (issue 17, finding 6): limits on query parameters, a statement timeout, and a statement
cancelled as soon as its client goes away or the server stops.

The guard's limits are checked on both databases. The timeout and the cancels need a search that runs long:
hundreds of different copies of one parameter (PostgreSQL plans each as a join; 200 copies took 36 s; identical
copies are one condition), so those servers
raise the limits on purpose, as an operator could, and show what then still bounds the work.
"""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psycopg
import pytest

from ecrf.auth.tokens import issue_dev_token
from ecrf.config import Settings
from tests.conftest import running_server
from testkit.databases import PG_ADMIN_URL, postgres_database, require_postgres
from testkit.net import free_port
from testkit.servers import wait_until_healthy

REPO = Path(__file__).resolve().parent.parent


def _query(name: str, value: str, copies: int) -> str:
    return "&".join([f"{name}={value}"] * copies)


def _slow(name: str, value: str, copies: int) -> str:
    """Copies of one parameter that are not identical (identical pairs are one condition): each is a join."""
    return "&".join(f"{name}={value},{value}{i}" for i in range(copies))


def test_too_many_parameters_are_400_before_any_search(server):
    with server.client("ehr", "S01") as http:
        response = http.get("/fhir/Observation?" + _query("status", "final", 17))
        assert response.status_code == 400, response.text
        assert response.json()["resourceType"] == "OperationOutcome"
        assert "repeated 17 times" in response.text
        response = http.get("/fhir/Observation?" + "&".join(f"code=c{i}" for i in range(101)))
        assert response.status_code == 400 and "101 parameters" in response.text
        # the SQLite finding: 1,000 parameters were a 500
        response = http.get("/fhir/Observation?" + "&".join(f"code=c{i}" for i in range(1000)))
        assert response.status_code == 400, response.text
        assert http.get("/fhir/Observation?" + _query("status", "final", 16)).status_code == 200
        allowed = "&".join(f"{name}=x{i}" for i in range(16) for name in ("code", "category", "status", "subject"))
        assert http.get(f"/fhir/Observation?{allowed}").status_code == 200
    with server.client("investigator", "S01") as http:
        response = http.get("/api/v1/subjects?" + _query("status", "candidate", 17))
        assert response.status_code == 400
        assert response.json()["errors"][0]["rule"] == "max_repeated_parameter"


def test_conditional_criteria_in_a_body_have_the_same_limits(server):
    """Criteria in a Bundle (`ifNoneExist`) or an If-None-Exist header pass no query-string guard."""
    from tests.fhir_builders import FHIR_JSON, bundle, patient, post

    person = patient()
    with server.client("ehr", "S01") as http:
        response = http.post(
            "/fhir", json=bundle([post(person, if_none_exist=_query("identifier", "x", 17))]), headers=FHIR_JSON
        )
        assert response.status_code == 400, response.text
        assert "repeat 'identifier' 17 times" in response.text
        response = http.post(
            "/fhir/Patient",
            json=person,
            headers={**FHIR_JSON, "If-None-Exist": "&".join(f"identifier=v{i}" for i in range(101))},
        )
        assert response.status_code == 400, response.text
        response = http.post(
            "/fhir/Patient",
            json=person,
            headers={
                **FHIR_JSON,
                "If-None-Exist": _query(
                    "identifier", f"{person['identifier'][0]['system']}|{person['identifier'][0]['value']}", 16
                ),
            },
        )
        assert response.status_code == 201, response.text


@pytest.fixture
def pg_url():
    require_postgres()
    with postgres_database("ecrf_limits") as found:
        yield found


def _settings(url: str, timeout_ms: int) -> Settings:
    return Settings(
        database_url=url,
        jwt_secret="limits-" + "x" * 32,
        max_query_parameters=1000,
        max_repeated_parameter=1000,
        statement_timeout_ms=timeout_ms,
        export_worker=False,
        _env_file=None,
    )


def _running_statements(name: str) -> list[str]:
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        return [
            row[0]
            for row in admin.execute(
                "SELECT query FROM pg_stat_activity WHERE datname = %s AND state = 'active' AND pid <> pg_backend_pid()",
                (name,),
            ).fetchall()
        ]


def test_a_search_over_the_statement_timeout_is_503(pg_url):
    url, _ = pg_url
    with running_server(_settings(url, 1000)) as server, server.client("ehr", "S01") as http:
        started = time.monotonic()
        response = http.get("/fhir/Observation?" + _slow("status", "final", 200))
        assert response.status_code == 503, response.text
        assert response.headers["Retry-After"]
        assert "statement timeout" in response.text
        assert time.monotonic() - started < 10
        assert http.get("/fhir/Observation?status=final").status_code == 200  # the connection is fine again


def test_a_client_that_goes_away_cancels_its_statement(pg_url):
    url, name = pg_url
    with running_server(_settings(url, 600_000)) as server, server.client("ehr", "S01") as http:
        with pytest.raises(httpx.ReadTimeout):
            http.get("/fhir/Observation?" + _slow("status", "final", 501), timeout=2)
        deadline = time.monotonic() + 5
        while any("search_token" in query for query in _running_statements(name)):
            assert time.monotonic() < deadline, "the search went on after its client had gone"
            time.sleep(0.1)
        assert http.get("/fhir/Observation?status=final").status_code == 200


def test_a_long_search_does_not_hold_the_shutdown(pg_url, tmp_path):
    """`ecrf serve` stopped with SIGTERM while a search runs: it exits in seconds, not when the search ends."""
    url, name = pg_url
    settings = _settings(url, 600_000)
    port = free_port()
    env = {
        **os.environ,
        "ECRF_DATABASE_URL": url,
        "ECRF_JWT_SECRET": settings.jwt_secret,
        "ECRF_MAX_QUERY_PARAMETERS": "1000",
        "ECRF_MAX_REPEATED_PARAMETER": "1000",
        "ECRF_STATEMENT_TIMEOUT_MS": "600000",
        "ECRF_EXPORT_WORKER": "false",
    }
    log = (tmp_path / "serve.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "ecrf.cli", "serve", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_healthy(base, process, pause=0.2)
        token = issue_dev_token(settings, role="ehr", sites=["S01"])
        answers: list = []

        def search():
            try:
                answers.append(
                    httpx.get(
                        f"{base}/fhir/Observation?" + _slow("status", "final", 501),
                        headers={"Authorization": f"Bearer {token}"},
                        timeout=120,
                    ).status_code
                )
            except httpx.HTTPError as error:
                answers.append(type(error).__name__)

        client = threading.Thread(target=search)
        client.start()
        deadline = time.monotonic() + 20
        while not any("search_token" in query for query in _running_statements(name)):
            assert time.monotonic() < deadline, "the search did not start"
            time.sleep(0.1)
        stopped = time.monotonic()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=15)
        assert time.monotonic() - stopped < 10
        client.join(timeout=15)
        assert answers and answers[0] in (503, "RemoteProtocolError", "ReadError"), answers
        assert not any("search_token" in query for query in _running_statements(name))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()
