"""`ecrf token` and `ecrf serve` share one dev secret whatever the working directory; refusals say why.

Real commands in subprocesses (the console entry point through `python -m ecrf.cli`), a real server.
"""

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from ecrf.auth.actor import ROLES
from ecrf.auth.tokens import needs_site
from testkit.net import free_port


def _env(config_home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECRF_")}
    env.update(XDG_CONFIG_HOME=str(config_home), **extra)
    return env


def _cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ecrf.cli", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def serve(tmp_path):
    """Start `ecrf serve` in its own directory on a SQLite database there; yield its base URL."""
    started: list[subprocess.Popen] = []

    def start(env: dict[str, str]) -> str:
        where = tmp_path / f"server{len(started)}"
        where.mkdir()
        port = free_port()
        env = {**env, "ECRF_DATABASE_URL": f"sqlite:///{where / 'ecrf.db'}", "ECRF_EXPORT_WORKER": "false"}
        log = open(where / "serve.log", "w")  # noqa: SIM115 - closed with the process
        process = subprocess.Popen(
            [sys.executable, "-m", "ecrf.cli", "serve", "--port", str(port)],
            env=env,
            cwd=where,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        started.append(process)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert process.poll() is None, (where / "serve.log").read_text()
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    return url
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError("ecrf serve did not start: " + (where / "serve.log").read_text())

    yield start
    for process in started:
        process.terminate()
        process.wait(timeout=20)


def test_token_and_serve_find_the_same_secret_from_different_directories(tmp_path, serve):
    config = tmp_path / "config"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    url = serve(_env(config))
    minted = _cli("token", "--role", "investigator", "--site", "S01", env=_env(config), cwd=elsewhere)
    assert minted.returncode == 0, minted.stderr
    secret_file = config / "ecrf" / "dev-jwt-secret"
    assert secret_file.exists() and stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert not list(elsewhere.iterdir()), "no secret is left in the working directory"
    answer = httpx.get(f"{url}/api/v1/study", headers={"Authorization": f"Bearer {minted.stdout.strip()}"})
    assert answer.status_code == 200, answer.text


def test_secret_file_setting_overrides_the_config_dir(tmp_path, serve):
    chosen = tmp_path / "chosen" / "secret"
    env = _env(tmp_path / "config", ECRF_JWT_SECRET_FILE=str(chosen))
    url = serve(env)
    assert chosen.exists() and not (tmp_path / "config" / "ecrf" / "dev-jwt-secret").exists()
    assert stat.S_IMODE(chosen.stat().st_mode) == 0o600
    minted = _cli("token", "--role", "data_manager", env=env, cwd=tmp_path)
    assert minted.returncode == 0, minted.stderr
    answer = httpx.get(f"{url}/api/v1/study", headers={"Authorization": f"Bearer {minted.stdout.strip()}"})
    assert answer.status_code == 200, answer.text


def test_a_token_signed_with_another_secret_is_refused_with_the_way_to_a_matching_one(tmp_path, serve):
    server_env = _env(tmp_path / "server-config")
    url = serve(server_env)
    other = _cli("token", "--role", "investigator", "--site", "S01", env=_env(tmp_path / "other-config"), cwd=tmp_path)
    assert other.returncode == 0, other.stderr
    refused = httpx.get(f"{url}/api/v1/study", headers={"Authorization": f"Bearer {other.stdout.strip()}"})
    assert refused.status_code == 401
    detail = refused.json()["detail"]
    secret_file = tmp_path / "server-config" / "ecrf" / "dev-jwt-secret"
    assert "Signature verification failed" in detail and str(secret_file) in detail
    assert f"ECRF_JWT_SECRET_FILE={secret_file} ecrf token" in detail
    assert secret_file.read_text().strip() not in detail
    # following the hint gives a token the server accepts
    matching = _cli(
        "token",
        "--role",
        "investigator",
        "--site",
        "S01",
        env=_env(tmp_path / "other-config", ECRF_JWT_SECRET_FILE=str(secret_file)),
        cwd=tmp_path,
    )
    accepted = httpx.get(f"{url}/api/v1/study", headers={"Authorization": f"Bearer {matching.stdout.strip()}"})
    assert accepted.status_code == 200, accepted.text


def test_a_server_with_a_configured_secret_names_the_variable_not_the_value(tmp_path, serve):
    url = serve(_env(tmp_path / "config", ECRF_JWT_SECRET="s" * 40))
    other = _cli("token", "--role", "data_manager", env=_env(tmp_path / "config"), cwd=tmp_path)
    refused = httpx.get(f"{url}/api/v1/study", headers={"Authorization": f"Bearer {other.stdout.strip()}"})
    assert refused.status_code == 401
    assert "ECRF_JWT_SECRET" in refused.json()["detail"] and "s" * 40 not in refused.json()["detail"]


@pytest.mark.parametrize("role", ROLES)
def test_a_role_that_needs_a_site_is_not_minted_without_one(tmp_path, role):
    result = _cli("token", "--role", role, env=_env(tmp_path / "config"), cwd=tmp_path)
    if needs_site(role):
        assert result.returncode == 2 and not result.stdout
        assert f"role {role}" in result.stderr and "--site" in result.stderr
    else:
        assert result.returncode == 0 and result.stdout.count(".") == 2, result.stderr


def test_site_roles_are_the_ones_the_server_refuses_without_sites():
    assert {role for role in ROLES if needs_site(role)} == {"investigator", "coordinator", "ehr"}
