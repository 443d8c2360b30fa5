"""Real servers for the tests: a uvicorn process-in-thread per database backend, real JWTs, real HTTP.

Every test that takes `server` runs once on SQLite and once on PostgreSQL. Outside CI the PostgreSQL
runs skip, with a visible reason, when no server answers; with CI=true they fail instead.
"""

import os
import secrets
import ssl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from ecrf.app import create_app
from ecrf.auth.tokens import issue_dev_token
from ecrf.config import Settings
from ecrf.runtime import Runtime
from ecrf.store.migrate import upgrade
from testkit.databases import postgres_database, require_postgres
from testkit.servers import serving_in_thread

# One TLS context for every test HTTP client: httpx builds (and loads the CA bundle into) a new one per
# client otherwise, about 24 ms of CPU each, and the suite makes thousands of clients. The servers are http://.
TEST_SSL_CONTEXT = ssl.create_default_context()
SHARED = Path(__file__).resolve().parent.parent.parent / "shared"  # optional: tests/samples.py


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "needs_shared: uses ../shared/fhir-samples; skipped without it, "
        "failed without it under CI=true (tests/samples.py)",
    )


class _Progress:
    """One line as each test file starts on each backend: which file, on which database, how many tests, where
    the run is and how long it took so far (the dots alone say nothing about what is running). Tests taking the
    session's `server` are grouped by backend, so a file is visited once per backend."""

    def __init__(self) -> None:
        self.unit_of: dict[str, str] = {}
        self.size: dict[str, int] = {}
        self.current: str | None = None
        self.started = time.monotonic()
        self.done = 0
        self.config = None


_PROGRESS = _Progress()


def pytest_collection_modifyitems(session, config, items):
    _PROGRESS.config = config
    _PROGRESS.unit_of, _PROGRESS.size = {}, {}
    for item in items:
        backend = getattr(getattr(item, "callspec", None), "params", {}).get("database_url")
        unit = item.nodeid.split("::", 1)[0] + (f" [{backend}]" if backend else "")
        _PROGRESS.unit_of[item.nodeid] = unit
        _PROGRESS.size[unit] = _PROGRESS.size.get(unit, 0) + 1


def pytest_runtest_logstart(nodeid, location):
    unit = _PROGRESS.unit_of.get(nodeid)
    if unit is None or unit == _PROGRESS.current:
        return
    _PROGRESS.current = unit
    _PROGRESS.done += 1
    reporter = _PROGRESS.config.pluginmanager.get_plugin("terminalreporter") if _PROGRESS.config else None
    if reporter is None:
        return
    if reporter._tw.width_of_current_line:  # end the line of dots of the previous file
        reporter._tw.line()
    reporter.write_line(
        f"[{_PROGRESS.done}/{len(_PROGRESS.size)}, {time.monotonic() - _PROGRESS.started:.0f}s] "
        f"{unit}: {_PROGRESS.size[unit]} tests",
        bold=True,
    )


def pytest_sessionstart(session):
    _PROGRESS.started = time.monotonic()


def pytest_runtest_setup(item):
    if item.get_closest_marker("needs_shared"):
        from tests.samples import check_shared

        check_shared()


@dataclass
class Server:
    backend: str
    base_url: str
    settings: Settings
    runtime: Runtime

    def token(
        self, role: str, *sites: str, sub: str | None = None, ttl: int = 30, scopes: list[str] | None = None
    ) -> str:
        return issue_dev_token(
            self.settings, role=role, sites=list(sites) or None, sub=sub, ttl_minutes=ttl, scopes=scopes
        )

    def client(self, role: str | None = None, *sites: str, sub: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.token(role, *sites, sub=sub)}"} if role else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=60, verify=TEST_SSL_CONTEXT)


@pytest.fixture(scope="session")
def database_url(request, tmp_path_factory) -> Iterator[str]:
    backend = request.param
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'ecrf.db'}"
        return
    require_postgres()
    with postgres_database(f"ecrf_test_{os.getpid()}") as (url, _):
        yield url


def pytest_generate_tests(metafunc):
    if "database_url" in metafunc.fixturenames:
        metafunc.parametrize("database_url", ["sqlite", "postgresql"], indirect=True, scope="session")


@contextmanager
def running_server(settings: Settings) -> Iterator[Server]:
    """Migrate, start uvicorn on a free port in a thread, and stop it afterwards."""
    runtime = Runtime.start(settings)
    upgrade(runtime.engine)
    backend = "sqlite" if settings.database_url.startswith("sqlite") else "postgresql"
    try:
        with serving_in_thread(create_app(runtime=runtime)) as url:
            yield Server(backend, url, settings, runtime)
    finally:
        runtime.engine.dispose()


@pytest.fixture(scope="session")
def server(database_url) -> Iterator[Server]:
    settings = Settings(database_url=database_url, jwt_secret=secrets.token_urlsafe(32), _env_file=None)
    with running_server(settings) as running:
        yield running
