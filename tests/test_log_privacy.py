"""No PHI in logs: a full run against a real server, with every logger of the process captured at DEBUG.

Names, identifiers, birth dates, addresses, phone numbers, free text and bearer tokens go in through both
doors, through successful writes and through every kind of refusal (404, 409, 412, 413, 415, 422, 429),
through a conditional-create race and through a database failure no handler answers; none of them may
appear in any log record (tracebacks included), nor in the output of an `ecrf serve` process.
"""

import json
import re
import logging
import os
import secrets
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from crf_support import VALID, day
from fhir_builders import FHIR_JSON, MRN
from ecrf.config import Settings
from ecrf.fhir.validation import WRITABLE_TYPES
from tests.conftest import TEST_SSL_CONTEXT, Server, running_server
from tests.samples import have_shared, shared_json
from tests.synthea_shaped import kept_part, patient_bundle, resources_of
from testkit.net import free_port
from testkit.servers import wait_until_healthy


def _synthea_bundles() -> list[dict]:
    """A generated Synthea-shaped patient (fresh names each run), and the shared Synthea export when present."""
    bundles = [patient_bundle(secrets.randbits(32), encounters=3)]
    if have_shared():
        bundles.append(shared_json("synthea/Angelic_Mueller_29d755a6-32fa-482e-8fdd-081300209df8.json"))
    return bundles


SYNTHEA_BUNDLES = _synthea_bundles()
TEST_CLIENT_LOGGERS = ("httpx", "httpcore")  # the test's own HTTP client shares the process; it is not the server
FAULT_MARK = "Zqxfaultina"  # a write whose content holds it fails inside the database (see fault_injected)


class Secrets:
    """The distinctive values of one run, and every string that must never be logged."""

    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.mrn = f"MRN-ZQ{tag}-4815"
        self.race_mrn = f"MRN-RACE{tag}-1623"
        self.fault_mrn = f"{FAULT_MARK}-{tag}"
        self.given, self.family = f"Zebulonia{tag}", f"Quixotequill{tag}"
        self.birth_date = "1931-07-19"
        self.address = f"17 Quillfeather Lane {tag}"
        self.phone = f"+44 7700 9{tag[:5]}"
        self.reason = f"corrected after a call with her daughter about the bicycle fall {tag}"
        self.synthea: list[str] = []
        for bundle in SYNTHEA_BUNDLES:
            (synthea,) = resources_of(bundle, "Patient")
            self.synthea += [
                synthea["name"][0]["given"][0],
                synthea["name"][0]["family"],
                synthea["birthDate"],
                synthea["address"][0]["line"][0],
                synthea["telecom"][0]["value"],
                next(i["value"] for i in synthea["identifier"] if "us-ssn" in i.get("system", "")),
            ]
        self.tokens: list[str] = []

    def all(self) -> list[str]:
        values = [
            self.mrn,
            self.race_mrn,
            self.fault_mrn,
            self.given,
            self.family,
            self.birth_date,
            self.address,
            self.phone,
            self.reason,
            *self.synthea,
        ]
        for token in self.tokens:
            values += [token, token.rsplit(".", 1)[-1]]
        return values

    def leaks(self, text: str) -> list[str]:
        return [value for value in self.all() if value in text]


class CaptureEverything(logging.Handler):
    """Every record of every logger, formatted with its traceback, as it is emitted."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[str] = []
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.split(".")[0] in TEST_CLIENT_LOGGERS:
            return
        self.records.append(record)
        self.lines.append(f"{self.format(record)} {record.msg!r} {record.args!r}")


@contextmanager
def capture_every_log() -> Iterator[CaptureEverything]:
    """Root, uvicorn, uvicorn.access, ecrf.* ... at DEBUG; SQLAlchemy's loggers keep their default level."""
    handler = CaptureEverything()
    root = logging.getLogger()
    saved = [(root, root.level)]
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    attached = []
    for name in ["uvicorn", "uvicorn.error", "uvicorn.access", "ecrf", *logging.Logger.manager.loggerDict]:
        logger = logging.getLogger(name)
        if name.startswith("sqlalchemy"):
            continue
        saved.append((logger, logger.level))
        logger.setLevel(logging.DEBUG)
        if not logger.propagate and handler not in logger.handlers:
            logger.addHandler(handler)
            attached.append(logger)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        for logger in attached:
            logger.removeHandler(handler)
        for logger, level in saved:
            logger.setLevel(level)


@contextmanager
def failing_trigger(
    database_url: str, name: str, event: str, table: str, condition: str, sqlite_failure: str, postgres_failure: str
) -> Iterator[None]:
    """A trigger `name` making the database itself fail `event` on `table` where `condition` (on NEW) holds:
    on SQLite by running `sqlite_failure`, on PostgreSQL by raising `postgres_failure` (a RAISE statement)."""
    if database_url.startswith("sqlite"):
        connection = sqlite3.connect(database_url.split("///", 1)[1])
        connection.execute(
            f"CREATE TRIGGER {name} BEFORE {event} ON {table} WHEN {condition} BEGIN {sqlite_failure}; END"
        )
        connection.commit()
        try:
            yield
        finally:
            connection.execute(f"DROP TRIGGER IF EXISTS {name}")
            connection.commit()
            connection.close()
        return
    import psycopg

    with psycopg.connect(database_url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as connection:
        connection.execute(
            f"CREATE OR REPLACE FUNCTION {name}() RETURNS trigger AS $$ BEGIN "
            f"IF {condition} THEN {postgres_failure}; END IF; RETURN NEW; END $$ LANGUAGE plpgsql"
        )
        connection.execute(f"CREATE TRIGGER {name} BEFORE {event} ON {table} FOR EACH ROW EXECUTE FUNCTION {name}()")
        try:
            yield
        finally:
            connection.execute(f"DROP TRIGGER IF EXISTS {name} ON {table}")
            connection.execute(f"DROP FUNCTION IF EXISTS {name}()")


def fault_injected(database_url: str):
    """A trigger that makes the database itself fail an insert carrying FAULT_MARK, with an error whose
    message quotes the row: the path of an exception no handler answers."""
    return failing_trigger(
        database_url,
        "privacy_fault",
        "INSERT",
        "resource_version",
        f"NEW.content LIKE '%{FAULT_MARK}%'",
        "SELECT abs(-9223372036854775808)",
        "RAISE EXCEPTION 'refusing row %', NEW.content",
    )


def full_run(server: Server, phi: Secrets, *, fault: bool) -> None:
    """Every door and most refusals, each carrying the distinctive values."""

    def client(role: str, *sites: str, sub: str) -> httpx.Client:
        token = server.token(role, *sites, sub=sub)
        phi.tokens.append(token)
        return httpx.Client(
            base_url=server.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=60, verify=TEST_SSL_CONTEXT
        )

    system = MRN["S01"]
    person = {
        "resourceType": "Patient",
        "identifier": [{"system": system, "value": phi.mrn}],
        "name": [{"family": phi.family, "given": [phi.given]}],
        "birthDate": phi.birth_date,
        "gender": "female",
        "address": [{"line": [phi.address], "city": "Zquillton"}],
        "telecom": [{"system": "phone", "value": phi.phone}],
    }
    with client("coordinator", "S01", sub="privacy-coordinator") as http:
        enrolled = http.post("/api/v1/subjects", json={"site": "S01", "mrn": phi.mrn, "consent_date": day(14)})
        assert enrolled.status_code == 201, enrolled.text
        subject = enrolled.json()["id"]
        assert (
            http.post("/api/v1/subjects", json={"site": "S01", "mrn": phi.mrn, "consent_date": day(14)}).status_code
            == 409
        )
        control = http.post("/api/v1/subjects", json={"site": "S01", "mrn": phi.mrn + "\x07", "consent_date": day(14)})
        assert control.status_code == 422
        assert http.get(f"/api/v1/subjects/{phi.mrn}").status_code == 404
        assert http.get("/api/v1/subjects", params={"site": phi.mrn + "\x00"}).status_code == 400
        assert http.get("/api/v1/subjects", params={"site": phi.family, "status": phi.given}).status_code == 200
        visit, visit_date, items = VALID["demographics"]
        form = f"/api/v1/subjects/{subject}/forms/demographics/{visit}"
        items = {**items, "birth_date": phi.birth_date}
        saved = http.put(form, json={"visit_date": visit_date, "items": items, "reason": phi.reason})
        assert saved.status_code in (200, 201), saved.text
        changed = http.put(
            form,
            json={"visit_date": visit_date, "items": {**items, "height": 166}, "reason": phi.reason},
            headers={"If-Match": saved.headers["etag"]},
        )
        assert changed.status_code == 200, changed.text
        stale = http.put(
            form,
            json={"visit_date": visit_date, "items": items, "reason": phi.reason},
            headers={"If-Match": saved.headers["etag"]},
        )
        assert stale.status_code in (409, 412), stale.text
        refused = http.put(
            form,
            json={
                "visit_date": visit_date,
                "reason": phi.reason,
                "items": {**items, "sex": phi.family, "birth_date": phi.given},
            },
        )
        assert refused.status_code == 422, refused.text
        assert http.get(f"/api/v1/subjects/{subject}/audit").status_code == 200
        too_big = http.post(
            "/api/v1/subjects",
            content=json.dumps({"site": "S01", "mrn": phi.mrn, "notes": [phi.reason] * 20000}),
            headers={"Content-Type": "application/json"},
        )
        assert too_big.status_code == 413
        plain = http.post(
            "/api/v1/subjects", content=f"mrn={phi.mrn}&name={phi.family}", headers={"Content-Type": "text/plain"}
        )
        assert plain.status_code == 415
        if fault:
            failed = http.post("/api/v1/subjects", json={"site": "S01", "mrn": phi.fault_mrn, "consent_date": day(14)})
            assert failed.status_code == 500 and "incident" in failed.json()["detail"], failed.text
    with client("investigator", "S01", sub="privacy-investigator") as http:  # the site's own staff, through /fhir
        updated = http.put(f"/fhir/Patient?identifier={system}|{phi.mrn}", json=person, headers=FHIR_JSON)
        assert updated.status_code == 200, updated.text
        assert (
            http.put(
                f"/fhir/Patient/{subject}", json={**person, "id": subject}, headers={**FHIR_JSON, "If-Match": 'W/"1"'}
            ).status_code
            == 412
        )
        found = http.get("/fhir/Patient", params={"identifier": f"{system}|{phi.mrn}"})
        assert found.status_code == 200 and found.json()["total"] == 1
        assert http.get("/fhir/Patient", params={"birthdate": phi.birth_date}).status_code == 200
    with client("ehr", "S01", sub="privacy-ehr") as http:
        for bundle in SYNTHEA_BUNDLES:
            assert http.post("/fhir", json=kept_part(bundle, WRITABLE_TYPES), headers=FHIR_JSON).status_code == 200
            # v2: the whole Synthea Bundle goes in (types not kept are held back); refused once a code is invalid
            assert http.post("/fhir", json=bundle, headers=FHIR_JSON).status_code == 200
            refused = json.loads(re.sub(r'"gender": "(fe)?male"', '"gender": "banana"', json.dumps(bundle), count=1))
            assert http.post("/fhir", json=refused, headers=FHIR_JSON).status_code == 400
        assert (
            http.get("/fhir/Patient", params={"name": phi.family}).status_code == 403
        )  # v2: name search is for roles that may read identifiers
        assert http.get(f"/fhir/Patient/{phi.family}").status_code == 404
        invalid = http.post("/fhir/Patient", json={**person, "birthDate": phi.given}, headers=FHIR_JSON)
        assert invalid.status_code in (400, 422)
        deep = http.post(
            "/fhir/Patient",
            content=json.dumps({**person, "extension": "HOLE"}).replace('"HOLE"', '{"a":' * 100 + "1" + "}" * 100),
            headers=FHIR_JSON,
        )
        assert deep.status_code == 413
        assert (
            http.post(
                "/fhir/Patient",
                content=f"<Patient><name>{phi.family}</name></Patient>",
                headers={"Content-Type": "application/fhir+xml"},
            ).status_code
            == 415
        )
        raced = {**person, "identifier": [{"system": system, "value": phi.race_mrn}]}
        with ThreadPoolExecutor(6) as pool:  # conditional creates racing for one key: the retried path
            statuses = list(
                pool.map(
                    lambda _: (
                        http.put(
                            f"/fhir/Patient?identifier={system}|{phi.race_mrn}", json=raced, headers=FHIR_JSON
                        ).status_code
                    ),
                    range(6),
                )
            )
        assert set(statuses) <= {200, 201, 409}, statuses
        if fault:
            failed = http.post(
                "/fhir/Patient",
                json={
                    **person,
                    "identifier": [{"system": system, "value": phi.fault_mrn}],
                    "name": [{"family": phi.fault_mrn}],
                },
                headers=FHIR_JSON,
            )
            assert failed.status_code in (409, 500), failed.text
    with client("investigator", "S01", sub="privacy-flooder") as http:
        for _ in range(3 * server.settings.rate_limit_per_minute):
            if http.get("/fhir/Patient", params={"identifier": f"{system}|{phi.mrn}"}).status_code == 429:
                break
        else:
            pytest.fail("the flood was never throttled")
    with client("data_manager", sub="privacy-exporter") as http:
        kick_off = http.get(
            "/fhir/$export", params={"deidentify": "false", "_type": "Patient"}, headers={"Prefer": "respond-async"}
        )
        assert kick_off.status_code == 202, kick_off.text
        status_url = kick_off.headers["content-location"]
        deadline = time.monotonic() + 120
        while (status := http.get(status_url)).status_code == 202 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert status.status_code == 200, status.text
        for output in status.json()["output"]:
            assert http.get(output["url"]).status_code == 200


def assert_nothing_leaked(phi: Secrets, lines: list[str]) -> None:
    leaked = [(value, line[:300]) for line in lines for value in phi.leaks(line)]
    assert not leaked, f"{len(leaked)} log line(s) carry patient data or a token, e.g. {leaked[:3]}"


def test_no_log_record_of_a_full_run_carries_patient_data(database_url, tmp_path):
    settings = Settings(
        database_url=database_url,
        jwt_secret=secrets.token_urlsafe(32),
        max_body_bytes=1024 * 1024,
        rate_limit_per_minute=100,
        export_dir=tmp_path / "exports",
        _env_file=None,
    )
    phi = Secrets()
    # the capture starts after the server, whose start configures uvicorn's loggers and handlers afresh
    with running_server(settings) as server, capture_every_log() as captured, fault_injected(database_url):
        full_run(server, phi, fault=True)
        time.sleep(0.5)  # a server logs a failed request just after answering it
    assert captured.lines, "nothing was logged at all: the capture is not working"
    assert any(r.name == "ecrf.access" for r in captured.records), "the request log was not captured"
    assert any(r.name == "uvicorn.access" for r in captured.records), (
        "uvicorn writes its access line once its logger has a handler, as it has here: it must be there, masked"
    )
    incidents = [r for r in captured.records if r.name == "ecrf.errors"]
    assert incidents and all(r.levelno == logging.ERROR for r in incidents), "the injected failure was not logged"
    assert any("raised at" in line for line in captured.lines)  # where it happened is kept, just not the values
    assert_nothing_leaked(phi, captured.lines)


def test_the_output_of_ecrf_serve_carries_no_patient_data(tmp_path):
    port = free_port()
    database_url = f"sqlite:///{tmp_path / 'serve.db'}"
    env = {
        **os.environ,
        "ECRF_DATABASE_URL": database_url,
        "ECRF_JWT_SECRET": secrets.token_urlsafe(32),
        "ECRF_MAX_BODY_BYTES": str(1024 * 1024),
        "ECRF_RATE_LIMIT_PER_MINUTE": "100",
        "ECRF_EXPORT_DIR": str(tmp_path / "exports"),
        "PYTHONUNBUFFERED": "1",
    }
    settings = Settings(
        database_url=database_url, jwt_secret=env["ECRF_JWT_SECRET"], rate_limit_per_minute=100, _env_file=None
    )
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "ecrf.cli", "serve", "--port", str(port)],
            env=env,
            stdout=stdout,
            stderr=stderr,
            cwd=tmp_path,
        )
        try:
            base_url = f"http://127.0.0.1:{port}"
            wait_until_healthy(base_url, process, log=lambda: Path(err).read_text()[-2000:], pause=0.2)
            phi = Secrets()
            with fault_injected(database_url):
                full_run(Server("sqlite", base_url, settings, None), phi, fault=True)
        finally:
            process.terminate()
            process.wait(timeout=30)
    output = out.read_text(errors="replace") + err.read_text(errors="replace")
    assert "Uvicorn running" in output or "Application startup complete" in output, output[-2000:]
    assert "incident" in output, "the injected failure was not reported"
    assert "GET /fhir/{resource_type}/{resource_id} 404" in output, "the request log (ecrf.access) is not written"
    assert_nothing_leaked(phi, output.splitlines())


def export_completion_fails(database_url: str, quoted: str):
    """A trigger that makes the database refuse to mark an export completed, with a message quoting `quoted`."""
    return failing_trigger(
        database_url,
        "export_fault",
        "UPDATE",
        "export_job",
        "NEW.status = 'completed'",
        f"SELECT RAISE(ABORT, 'refusing the export of {quoted}')",
        f"RAISE EXCEPTION 'refusing the export of {quoted}'",
    )


def test_a_failed_export_is_logged_without_its_message(database_url, tmp_path):
    settings = Settings(
        database_url=database_url, jwt_secret=secrets.token_urlsafe(32), export_dir=tmp_path / "out", _env_file=None
    )
    phi = Secrets()
    with (
        running_server(settings) as server,
        capture_every_log() as captured,
        export_completion_fails(database_url, phi.family),
        server.client("data_manager") as http,
    ):
        kick_off = http.get(
            "/fhir/$export", params={"deidentify": "false", "_type": "Patient"}, headers={"Prefer": "respond-async"}
        )
        assert kick_off.status_code == 202, kick_off.text
        deadline = time.monotonic() + 60
        while (status := http.get(kick_off.headers["content-location"])).status_code == 202:
            assert time.monotonic() < deadline, "the export neither finished nor failed"
            time.sleep(0.2)
        assert status.status_code >= 400, status.text
    failed = [r for r in captured.records if r.name == "ecrf.export.worker" and "failed" in r.getMessage()]
    assert failed and "raised at" in failed[0].getMessage(), [r.getMessage()[:200] for r in captured.records][-5:]
    assert_nothing_leaked(phi, captured.lines)
