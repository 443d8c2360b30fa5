"""FHIR Bulk Data export, async pattern: kick-off, progress, manifest, download, cancel, restart mid-job."""

import time
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from sqlalchemy import update

from ecrf.config import Settings
from ecrf.export.models import ExportJob
from ecrf.export.source import Scope, batches
from tests.conftest import running_server
from testkit.databases import fresh_database
from tests.crf_support import enrol, save

ASYNC = {"Prefer": "respond-async", "Accept": "application/fhir+json"}
STUDY = "NCT04163237"


def export_settings(url: str, tmp_path, **overrides) -> Settings:
    values = dict(
        database_url=url,
        jwt_secret="export-tests-" + "x" * 32,
        study_secret="export-test-study-secret",
        export_dir=tmp_path / "exports",
        _env_file=None,
    )
    return Settings(**{**values, **overrides})


def kick_off(http, path: str = f"/fhir/Group/{STUDY}/$export", **params) -> str:
    response = http.get(path, params=params, headers=ASYNC)
    assert response.status_code == 202, response.text
    return response.headers["Content-Location"]


def wait_for_manifest(http, status_url: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = http.get(status_url)
        if response.status_code == 200:
            return response.json()
        assert response.status_code == 202, response.text
        assert response.headers["X-Progress"]
        time.sleep(0.05)
    raise AssertionError("the export did not finish in time")


def export(http, path: str = f"/fhir/Group/{STUDY}/$export", **params) -> dict:
    return wait_for_manifest(http, kick_off(http, path, **params))


def download(http, manifest: dict) -> dict[str, list[dict]]:
    files = {}
    for entry in manifest["output"]:
        response = http.get(entry["url"])
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("application/fhir+ndjson")
        lines = response.content.splitlines()
        assert len(lines) == entry["count"]
        files[entry["type"]] = [orjson.loads(line) for line in lines]
    return files


def load_subjects(server, count: int, site: str = "S01") -> list[dict]:
    subjects = []
    with server.client("investigator", site) as http:
        for _ in range(count):
            subject = enrol(http, site)
            for form in ("surgery", "labs", "ctc", "baseline"):
                assert save(http, subject["id"], form).status_code == 201
            subjects.append(subject)
    return subjects


@pytest.fixture(scope="module")
def loaded(database_url, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("export-protocol")
    with (
        fresh_database(database_url, tmp_path, "ecrf_export") as url,
        running_server(export_settings(url, tmp_path)) as server,
    ):
        load_subjects(server, 3, "S01")
        load_subjects(server, 1, "S02")
        yield server


def test_group_export_kick_off_progress_manifest_download(loaded):
    with loaded.client("sponsor", sub="sponsor-a") as http:
        manifest = export(http)
        assert manifest["requiresAccessToken"] is True
        assert manifest["request"].endswith(f"/fhir/Group/{STUDY}/$export")
        assert manifest["transactionTime"].endswith("Z")
        assert manifest["extension"]["deidentification"]["profile"] == "safe-harbor/1"
        files = download(http, manifest)
    assert set(files) == {"Patient", "ResearchSubject", "Observation", "Procedure"}
    assert len(files["Patient"]) == 4 and len(files["ResearchSubject"]) == 4
    assert all(entry["url"].startswith(loaded.base_url) for entry in manifest["output"])
    for resources in files.values():
        assert len({resource["id"] for resource in resources}) == len(resources)


def test_type_and_since_select_what_is_exported(loaded):
    with loaded.client("data_manager", sub="dm-since") as http:
        everything = export(http, "/fhir/$export", _type="Observation,Patient")
        assert {entry["type"] for entry in everything["output"]} == {"Observation", "Patient"}
        mark = everything["transactionTime"]
        later = load_subjects(loaded, 1, "S01")
        since = export(http, "/fhir/$export", _type="Patient", _since=mark)
        [patients] = download(http, since).values()
    assert [len(patients)] == [1]
    assert patients[0]["meta"]["security"][0]["code"] == "PSEUDED" and patients[0]["id"] != later[0]["patient_id"]


def test_downloads_need_the_owner(loaded):
    with loaded.client("sponsor", sub="owner") as http:
        manifest = export(http, _type="Patient")
    url = manifest["output"][0]["url"]
    status_url = url.replace("$export-file", "$export-status").rsplit("/", 1)[0]
    with loaded.client("sponsor", sub="someone-else") as other:
        assert other.get(url).status_code == 404
        assert other.get(status_url).status_code == 404
        assert other.delete(status_url).status_code == 404
    with loaded.client() as anonymous:
        assert anonymous.get(url).status_code == 401
    with loaded.client("investigator", "S01", sub="owner") as investigator:  # v2: polls its own site archives
        assert investigator.get(url).status_code == 404  # ... but a sponsor's de-identified job is not its own
    with loaded.client("coordinator", "S01", sub="owner") as coordinator:
        assert coordinator.get(url).status_code == 403


def test_kick_off_refuses_what_it_cannot_do(loaded):
    with loaded.client("sponsor") as http:
        assert http.get(f"/fhir/Group/{STUDY}/$export").status_code == 400  # no Prefer: respond-async
        for params in (
            {"_type": "Practitioner"},
            {"_type": "not a type"},
            {"_since": "yesterday"},
            {"_outputFormat": "text/csv"},
            {"includeAssociatedData": "_customSet"},
            {"_typeFilter": "Observation?nonsense=1"},
        ):
            response = http.get(f"/fhir/Group/{STUDY}/$export", params=params, headers=ASYNC)
            assert response.status_code == 400, params
            assert response.json()["resourceType"] == "OperationOutcome"
        assert http.get("/fhir/Group/other/$export", headers=ASYNC).status_code == 404
        assert http.get("/fhir/$export-status/unknown").status_code == 404


def test_identified_export_is_for_data_managers_only(loaded):
    with loaded.client("sponsor") as sponsor:
        assert sponsor.get("/fhir/$export", params={"deidentify": "false"}, headers=ASYNC).status_code == 403
    with loaded.client("data_manager") as http:
        manifest = export(http, _type="Patient", deidentify="false")
        assert manifest["extension"]["deidentified"] is False
        [patients] = download(http, manifest).values()
    assert all(patient["identifier"] for patient in patients)  # identified: MRNs are there


@pytest.fixture
def slow_settings(database_url, tmp_path):
    """Tiny batches with a pause between them, so a test can act while a job runs."""
    with fresh_database(database_url, tmp_path, "ecrf_export") as url:
        yield export_settings(
            url, tmp_path, export_batch_size=2, export_batch_pause_seconds=0.15, export_lease_seconds=2
        )


def _wait_running(http, status_url: str) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        response = http.get(status_url)
        assert response.status_code == 202, response.text
        progress = response.headers["X-Progress"]
        if progress.startswith("running") and " 0 resources" not in progress:
            return progress
        time.sleep(0.05)
    raise AssertionError("the export did not start")


def test_cancel_stops_the_job_and_removes_its_files(slow_settings):
    with running_server(slow_settings) as server:
        load_subjects(server, 3)
        with server.client("sponsor") as http:
            status_url = kick_off(http)
            _wait_running(http, status_url)
            job_dir = slow_settings.exports_path / status_url.rsplit("/", 1)[1]
            assert job_dir.exists()
            assert http.delete(status_url).status_code == 202
            assert http.get(status_url).status_code == 404
            assert http.delete(status_url).status_code == 404
            deadline = time.monotonic() + 5  # the worker removes the files when it next looks at the job
            while job_dir.exists() and time.monotonic() < deadline:
                time.sleep(0.02)
            assert not job_dir.exists()


def test_a_job_survives_a_restart_in_the_middle(slow_settings):
    with running_server(slow_settings) as first:
        load_subjects(first, 4)
        with first.client("sponsor", sub="restarter") as http:
            status_url = kick_off(http)
            progress = _wait_running(http, status_url)
        path = status_url.split("/fhir/", 1)[1]
    assert "running" in progress  # the first instance stops here, half way
    with first.runtime.engine.begin() as connection:  # as if it had crashed: its lease runs out by itself
        connection.execute(
            update(ExportJob)
            .where(ExportJob.id == path.rsplit("/", 1)[1])
            .values(lease_owner="crashed-instance", lease_until=datetime.now(UTC) + timedelta(seconds=1.5))
        )
    with running_server(slow_settings) as second:
        with second.client("sponsor", sub="restarter") as http:
            manifest = wait_for_manifest(http, f"{second.base_url}/fhir/{path}")
            files = download(http, manifest)
        with second.runtime.engine.connect() as connection:
            attempts = connection.exec_driver_sql(
                f"SELECT attempts FROM export_job WHERE id = '{path.rsplit('/', 1)[1]}'"
            ).scalar()
            stored = connection.exec_driver_sql(
                "SELECT count(*) FROM resource_head WHERE resource_type = 'Observation' AND NOT deleted"
            ).scalar()
    assert attempts == 2  # resumed by the second instance
    observations = files["Observation"]
    assert len(observations) == len({o["id"] for o in observations}) == stored == 4 * 22
    assert len(files["Patient"]) == 4


def test_an_export_is_a_snapshot_at_its_transaction_time(loaded):
    changed, deleted = load_subjects(loaded, 2, "S01")
    until = datetime.now(UTC)
    time.sleep(0.01)
    with loaded.client("coordinator", "S01") as http:
        patient = http.get(f"/fhir/Patient/{changed['patient_id']}").json()
        assert (
            http.put(f"/fhir/Patient/{changed['patient_id']}", json={**patient, "gender": "other"}).status_code == 200
        )
        observations = http.get("/fhir/Observation", params={"subject": f"Patient/{deleted['patient_id']}"}).json()
        gone = observations["entry"][0]["resource"]["id"]
        assert http.delete(f"/fhir/Observation/{gone}").status_code in (200, 204)
    created = load_subjects(loaded, 1, "S01")[0]
    snapshot = {}
    for resource_type in ("Patient", "Observation"):
        for _, rows in batches(loaded.runtime.engine, Scope(resource_type, until=until), size=7):
            snapshot.update({row.resource_id: orjson.loads(row.content) for row in rows})
    assert snapshot[changed["patient_id"]].get("gender") != "other"  # its version at the snapshot
    assert gone in snapshot  # deleted later: still part of the snapshot
    assert created["patient_id"] not in snapshot
