"""A database outage is 503 with Retry-After, not 409 (issue 17, finding 8). PostgreSQL: the outage is made
for real, by refusing new connections to the server's database and terminating the ones it holds (as a
restart does), then lifted: the same server answers again without a restart of its own."""

import secrets
import time

import psycopg
import pytest

from ecrf.config import Settings
from testkit.databases import PG_ADMIN_URL, postgres_database, require_postgres
from tests.conftest import running_server
from tests.crf_support import enrol
from tests.fhir_builders import FHIR_JSON, bundle, lab, patient, post, urn


@pytest.fixture
def pg_server():
    require_postgres()
    with postgres_database("ecrf_outage") as (url, name):
        settings = Settings(database_url=url, jwt_secret=secrets.token_urlsafe(32), export_worker=False, _env_file=None)
        with running_server(settings) as server:
            yield server, name


def _outage(name: str, down: bool) -> None:
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {"false" if down else "true"}')
        if down:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))


def _lab_bundle(kind: str = "transaction") -> dict:
    patient_url = urn()
    return bundle([post(patient(), patient_url), post(lab(patient_url, "718-7", 13.1, "g/dL"))], kind)


def _unavailable(response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["Retry-After"] == "5"


def test_an_outage_is_503_with_retry_after_and_service_comes_back(pg_server):
    server, name = pg_server
    with server.client("investigator", "S01") as investigator, server.client("ehr", "S01") as ehr:
        enrol(investigator)
        assert ehr.post("/fhir", json=_lab_bundle(), headers=FHIR_JSON).status_code == 200
        _outage(name, down=True)
        try:
            for kind in ("transaction", "batch"):
                response = ehr.post("/fhir", json=_lab_bundle(kind), headers=FHIR_JSON)
                _unavailable(response)
                assert response.json()["resourceType"] == "OperationOutcome"
                assert response.json()["issue"][0]["code"] == "transient"
            _unavailable(ehr.get("/fhir/Observation", params={"code": "718-7"}))
            response = investigator.post(
                "/api/v1/subjects", json={"site": "S01", "mrn": urn()[-12:], "consent_date": "2026-01-05"}
            )
            _unavailable(response)
            assert "unavailable" in response.json()["detail"]
            _unavailable(investigator.get("/api/v1/subjects"))
            assert investigator.get("/healthz").status_code == 503
        finally:
            _outage(name, down=False)
        deadline = time.monotonic() + 20
        while ehr.post("/fhir", json=_lab_bundle(), headers=FHIR_JSON).status_code != 200:
            assert time.monotonic() < deadline, "the server did not come back after the outage"
            time.sleep(0.2)
        enrol(investigator)


def test_a_database_that_is_not_there_is_503(pg_server):
    """Another kind of outage: the database is gone (dropped) while the server runs."""
    server, name = pg_server
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    with server.client("ehr", "S01") as ehr:
        _unavailable(ehr.post("/fhir", json=_lab_bundle(), headers=FHIR_JSON))
        _unavailable(ehr.get("/fhir/Patient"))
