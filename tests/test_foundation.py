"""The service starts with the study loaded, answers health checks and authenticates real JWTs."""

import base64
import json
import os
import subprocess
import sys
import time

import pytest
from jose import jwt
from route_support import declared_actions, every_route

from ecrf.app import create_app
from ecrf.auth.dependencies import current_actor
from ecrf.auth.policy import PERMISSIONS, PUBLIC
from ecrf.config import Settings
from ecrf.openapi import OPENAPI_FILE, render


def test_healthz_needs_no_token_and_reports_database_and_study(server):
    with server.client() as http:
        response = http.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok", "study": "NCT04163237"}


def test_study_definition_is_served_to_any_authenticated_role(server):
    for role, sites in [("investigator", ("S01",)), ("sponsor", ()), ("ehr", ("S02",)), ("admin", ())]:
        with server.client(role, *sites) as http:
            study = http.get("/api/v1/study").json()
        assert study["id"] == "NCT04163237"
    assert [s["id"] for s in study["sites"]] == ["S01", "S02"]
    assert {a["id"] for a in study["arms"]} == {"PD1_SORA", "SORA"}
    assert [v["id"] for v in study["visits"]] == ["PREOP", "POD7", "SCR", "M1", "M3", "M6", "M9", "M12"]
    assert {f["id"] for f in study["forms"]} >= {
        "demographics",
        "baseline",
        "labs",
        "surgery",
        "pathology",
        "afp",
        "ctc",
        "history",
        "randomisation",
    }
    assert len(study["criteria"]) == 28


def test_study_needs_a_token(server):
    with server.client() as http:
        response = http.get("/api/v1/study")
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")


def _claims(server, **overrides):
    now = int(time.time())
    claims = {
        "sub": "attacker",
        "roles": ["investigator"],
        "sites": ["S01"],
        "iat": now,
        "exp": now + 600,
        "iss": server.settings.jwt_issuer,
        "aud": server.settings.jwt_audience,
    }
    claims.update(overrides)
    return {key: value for key, value in claims.items() if value is not None}


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _refused(server, token: str) -> None:
    with server.client() as http:
        response = http.get("/api/v1/study", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401, response.text


def test_token_with_wrong_signature_is_refused(server):
    _refused(server, jwt.encode(_claims(server), "not-the-secret", algorithm="HS256"))


def test_token_with_wrong_audience_is_refused(server):
    _refused(server, jwt.encode(_claims(server, aud="someone-else"), server.settings.jwt_secret, algorithm="HS256"))


def test_token_with_wrong_issuer_is_refused(server):
    _refused(server, jwt.encode(_claims(server, iss="evil"), server.settings.jwt_secret, algorithm="HS256"))


def test_unsigned_alg_none_token_is_refused(server):
    _refused(server, f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(_claims(server))}.")


def test_expired_token_is_refused(server):
    past = int(time.time()) - 3600
    _refused(
        server, jwt.encode(_claims(server, iat=past - 60, exp=past), server.settings.jwt_secret, algorithm="HS256")
    )


def test_token_without_exp_is_refused(server):
    _refused(server, jwt.encode(_claims(server, exp=None), server.settings.jwt_secret, algorithm="HS256"))


def test_token_with_unknown_role_is_refused(server):
    _refused(server, jwt.encode(_claims(server, roles=["superuser"]), server.settings.jwt_secret, algorithm="HS256"))


def test_token_of_another_hmac_algorithm_is_refused(server):
    _refused(server, jwt.encode(_claims(server), server.settings.jwt_secret, algorithm="HS512"))


def test_ecrf_token_command_output_is_accepted(server):
    env = {**os.environ, "ECRF_JWT_SECRET": server.settings.jwt_secret}
    result = subprocess.run(
        [sys.executable, "-m", "ecrf.cli", "token", "--role", "coordinator", "--site", "S01", "--sub", "nurse-1"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    token = result.stdout.strip()
    claims = jwt.get_unverified_claims(token)
    assert claims["roles"] == ["coordinator"] and claims["sites"] == ["S01"] and claims["sub"] == "nurse-1"
    assert {"iat", "exp", "iss", "aud"} <= set(claims)
    with server.client() as http:
        response = http.get("/api/v1/study", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200


def test_ecrf_token_refuses_an_unknown_role():
    result = subprocess.run(
        [sys.executable, "-m", "ecrf.cli", "token", "--role", "root"],
        capture_output=True,
        text=True,
        env={**os.environ, "ECRF_JWT_SECRET": "x" * 32},
    )
    assert result.returncode == 2 and "unknown role" in result.stderr


def test_dev_secret_is_generated_once_into_a_private_file(tmp_path, monkeypatch):
    from ecrf.auth.tokens import dev_secret

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'e.db'}", jwt_secret=None, _env_file=None)
    first = dev_secret(settings)
    assert dev_secret(settings) == first
    # in the user's config dir since issue 17 (was: next to the SQLite file), so every working dir finds it
    assert (tmp_path / "config" / "ecrf" / "dev-jwt-secret").stat().st_mode & 0o777 == 0o600


def test_openapi_yaml_matches_the_app():
    assert OPENAPI_FILE.exists(), "run: python -m ecrf.openapi"
    assert OPENAPI_FILE.read_text() == render(), "openapi.yaml is out of date: run python -m ecrf.openapi"


def test_every_route_declares_who_may_call_it():
    app = create_app(Settings(database_url="sqlite://", jwt_secret="routes", _env_file=None))
    undeclared, seen = [], 0
    for methods, path, route in every_route(app):
        seen += 1
        actions = declared_actions(route)
        if not actions or any(action not in PERMISSIONS and action != PUBLIC for action in actions):
            undeclared.append(f"{methods} {path}")
    assert seen > 10, "the route walk found too few routes to be meaningful"
    assert not undeclared, f"routes without a declared permission: {undeclared}"
    assert current_actor  # the dependency every non-public route resolves through


@pytest.mark.parametrize("command", [["db", "upgrade"], ["audit", "verify"]])
def test_cli_database_commands_run_on_a_fresh_sqlite_file(tmp_path, command):
    env = {**os.environ, "ECRF_DATABASE_URL": f"sqlite:///{tmp_path / 'fresh.db'}"}
    subprocess.run([sys.executable, "-m", "ecrf.cli", "db", "upgrade"], env=env, check=True, capture_output=True)
    result = subprocess.run([sys.executable, "-m", "ecrf.cli", *command], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_the_route_walk_finds_an_undeclared_route_inside_an_included_router():
    from fastapi import APIRouter, FastAPI

    router = APIRouter()

    @router.get("/leaky")
    def leaky() -> dict:
        return {}

    app = FastAPI()
    app.include_router(router, prefix="/api/v1")
    found = {path: declared_actions(route) for _, path, route in every_route(app)}
    assert found["/api/v1/leaky"] == []


def test_ecrf_serve_migrates_a_fresh_database_loads_the_study_and_answers(tmp_path):
    """The README's first command, minus the install: defaults only, in an empty directory."""
    import socket

    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {key: value for key, value in os.environ.items() if not key.startswith("ECRF_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "ecrf.cli", "serve", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                break
            except httpx.TransportError:
                assert process.poll() is None, process.stdout.read()
                assert time.monotonic() < deadline, "ecrf serve did not answer within 60 s"
                time.sleep(0.2)
        assert response.json() == {"status": "ok", "database": "ok", "study": "NCT04163237"}
        assert (tmp_path / "ecrf.db").exists()
    finally:
        process.terminate()
        output = process.communicate(timeout=20)[0]
    assert f"http://127.0.0.1:{port}" in output and "/docs" in output
