"""/api/v1/admin over HTTP: the settings in force without a secret, and the audit chain check."""

import secrets

import pytest
from sqlalchemy import func, text
from sqlalchemy.engine import make_url
from sqlmodel import Session, select

from ecrf.admin.service import SHOWN, WITHHELD, database_view
from ecrf.audit.models import AuditEntry
from ecrf.config import Settings
from ecrf.smart.keys import key_file
from tests.conftest import running_server
from tests.crf_support import enrol
from tests.tamper_support import tampering

SETTINGS = "/api/v1/admin/settings"
VERIFY = "/api/v1/admin/audit/verify"


def test_every_setting_is_either_shown_or_withheld():
    fields = set(Settings.model_fields)
    assert not SHOWN & WITHHELD
    assert fields - SHOWN - WITHHELD == set(), "classify new settings in ecrf/admin/service.py"
    assert (SHOWN | WITHHELD) - fields == set()


def test_settings_show_what_is_in_force_and_no_secret(server):
    with server.client("admin") as http:
        response = http.get(SETTINGS)
    assert response.status_code == 200, response.text
    body = response.json()
    settings = server.settings
    assert server.settings.jwt_secret and settings.jwt_secret not in response.text
    if settings.study_secret_file.exists():
        assert settings.study_secret_file.read_text().strip() not in response.text
    assert body["database"]["backend"] == server.backend
    assert body["tokens"] == {
        "algorithms": ["HS256"],
        "issuer": settings.jwt_issuer,
        "audience": settings.jwt_audience,
        "leeway_seconds": settings.jwt_leeway_seconds,
        "max_bytes": settings.jwt_max_bytes,
        "jwks_file": None,
        "signing_secret": "ECRF_JWT_SECRET",
        "smart_key_file": str(key_file(settings)),
        "smart_token_minutes": settings.smart_token_minutes,
    }
    if key_file(settings).exists():  # where the SMART signing key is, never the key
        assert key_file(settings).read_text().strip() not in response.text
    assert body["limits"]["statement_timeout_ms"] == settings.statement_timeout_ms
    assert body["paging"] == {"page_size_default": settings.page_size_default, "page_size_max": settings.page_size_max}
    assert body["limits"]["max_body_bytes"] == settings.max_body_bytes
    assert body["exports"]["batch_size"] == settings.export_batch_size
    assert body["reports"] == {"min_cell": settings.report_min_cell}
    assert body["web"]["dev_login"] is True and body["web"]["oidc_client_secret"] is None  # dev mode, no provider
    assert body["study"]["id"] == "NCT04163237"


def test_a_database_password_never_leaves(server, tmp_path):
    """On PostgreSQL a second server runs with a password in its URL (the test cluster trusts local
    connections, so it is accepted and ignored); on SQLite the URL has none to hide, and the file is named."""
    password = f"pw-{secrets.token_hex(8)}"
    if server.backend == "sqlite":
        with server.client("admin") as http:
            body = http.get(SETTINGS).json()
        assert body["database"]["database"] == make_url(server.settings.database_url).database
        return
    url = make_url(server.settings.database_url).set(username="postgres", password=password)
    settings = Settings(
        database_url=url.render_as_string(hide_password=False),
        jwt_secret=secrets.token_urlsafe(32),
        export_worker=False,
        export_dir=tmp_path,
        _env_file=None,
    )
    with running_server(settings) as other, other.client("admin") as http:
        response = http.get(SETTINGS)
    assert response.status_code == 200, response.text
    assert password not in response.text and settings.jwt_secret not in response.text
    assert response.json()["database"] == {
        "backend": "postgresql",
        "driver": "psycopg",
        "host": url.host,
        "port": url.port,
        "database": url.database,
    }


def test_database_view_keeps_no_credentials():
    view = database_view("postgresql+psycopg://alice:s3cret@db.example:5433/ecrf?sslpassword=k3y")
    assert view == {
        "backend": "postgresql",
        "driver": "psycopg",
        "host": "db.example",
        "port": 5433,
        "database": "ecrf",
    }
    assert "alice" not in str(view) and "s3cret" not in str(view) and "k3y" not in str(view)


@pytest.mark.parametrize(
    "role,sites",
    [("data_manager", ()), ("sponsor", ()), ("monitor", ()), ("investigator", ("S01",)), ("ehr", ("S01",))],
)
def test_only_admins_read_settings(server, role, sites):
    with server.client(role, *sites) as http:
        assert http.get(SETTINGS).status_code == 403


def _entries(server) -> int:
    with Session(server.runtime.engine) as session:
        return session.exec(select(func.count()).select_from(AuditEntry)).one()


@pytest.mark.parametrize("role", ["admin", "data_manager"])
def test_audit_verify_walks_the_whole_chain(server, role):
    with server.client("investigator", "S01") as http:
        enrol(http)  # a chain with entries in it
    with server.client(role) as http:
        response = http.get(VERIFY)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["ok"] is True and body["first_bad_seq"] is None
    assert body["entries"] == _entries(server) > 0 and f"{body['entries']} entries" in body["message"]


@pytest.mark.parametrize(
    "role,sites",
    [("monitor", ()), ("sponsor", ()), ("investigator", ("S01",)), ("coordinator", ("S01",)), ("ehr", ("S01",))],
)
def test_audit_verify_is_for_admins_and_data_managers(server, role, sites):
    with server.client(role, *sites) as http:
        assert http.get(VERIFY).status_code == 403


def test_audit_verify_names_the_first_altered_entry(server):
    with server.client("investigator", "S01") as http:
        enrol(http)
        enrol(http)
    with tampering(server.runtime.engine) as connection:
        seq, old = connection.execute(
            text("SELECT seq, new_value FROM audit_entry ORDER BY seq DESC LIMIT 1 OFFSET 2")
        ).one()
        connection.execute(text("UPDATE audit_entry SET new_value = :v WHERE seq = :s"), {"v": "forged", "s": seq})
    try:
        with server.client("admin") as http:
            body = http.get(VERIFY).json()
        assert body["ok"] is False and body["first_bad_seq"] == seq
        assert body["entries"] == _entries(server)
        assert f"entry {seq}" in body["message"] and "altered" in body["message"]
    finally:
        with tampering(server.runtime.engine) as connection:
            connection.execute(text("UPDATE audit_entry SET new_value = :v WHERE seq = :s"), {"v": old, "s": seq})
    with server.client("admin") as http:
        assert http.get(VERIFY).json()["ok"] is True


def test_audit_verify_names_a_removed_entry(server):
    with server.client("investigator", "S01") as http:
        enrol(http)
    with tampering(server.runtime.engine) as connection:
        seq = connection.execute(text("SELECT max(seq) - 1 FROM audit_entry")).scalar_one()
        row = connection.execute(AuditEntry.__table__.select().where(AuditEntry.seq == seq)).mappings().one()
        connection.execute(text("DELETE FROM audit_entry WHERE seq = :s"), {"s": seq})
    try:
        with server.client("data_manager") as http:
            body = http.get(VERIFY).json()
        assert body["ok"] is False and body["first_bad_seq"] == seq and "missing" in body["message"]
    finally:
        with tampering(server.runtime.engine) as connection:
            connection.execute(AuditEntry.__table__.insert(), [dict(row)])
    with server.client("data_manager") as http:
        assert http.get(VERIFY).json()["ok"] is True
