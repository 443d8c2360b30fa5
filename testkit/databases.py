"""Databases of their own for tests and benches: a SQLite file, or a PostgreSQL database created on the
server ECRF_TEST_PG_ADMIN names and dropped afterwards."""

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PG_ADMIN_URL = os.environ.get("ECRF_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/test")


def postgres_reachable(admin_url: str = PG_ADMIN_URL) -> str | None:
    """None when the PostgreSQL server answers, else why not (one line)."""
    try:
        import psycopg

        with psycopg.connect(admin_url, connect_timeout=3):
            return None
    except Exception as error:  # noqa: BLE001 - report why
        return str(error).strip().splitlines()[0]


def postgres_url(name: str, admin_url: str = PG_ADMIN_URL) -> str:
    """The SQLAlchemy URL of database `name` on the admin URL's server."""
    return admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}"


def create_postgres(prefix: str, admin_url: str = PG_ADMIN_URL) -> tuple[str, str]:
    """A new, empty database named `prefix_<random>`: (its name, its SQLAlchemy URL)."""
    import psycopg

    name = f"{prefix}_{secrets.token_hex(4)}"
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    return name, postgres_url(name, admin_url)


def drop_postgres(name: str, admin_url: str = PG_ADMIN_URL) -> None:
    """Drop it, whoever is connected, and also when a test left it refusing connections."""
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as admin:
        if admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@contextmanager
def postgres_database(prefix: str, admin_url: str = PG_ADMIN_URL) -> Iterator[tuple[str, str]]:
    """(SQLAlchemy URL, name) of a database of its own, dropped (whoever is still connected) afterwards."""
    name, url = create_postgres(prefix, admin_url)
    try:
        yield url, name
    finally:
        drop_postgres(name, admin_url)


@contextmanager
def fresh_database(backend: str, directory: Path, prefix: str = "ecrf_fresh") -> Iterator[str]:
    """The SQLAlchemy URL of an empty database on `backend` ("sqlite", or a URL starting with it, else
    PostgreSQL): a new file in `directory`, or a PostgreSQL database dropped afterwards."""
    if backend.startswith("sqlite"):
        yield f"sqlite:///{Path(directory) / f'{prefix}-{secrets.token_hex(3)}.db'}"
        return
    with postgres_database(prefix) as (url, _):
        yield url


def require_postgres() -> None:
    """In a test: skip when PostgreSQL does not answer, with the reason; in CI (CI=true) fail instead."""
    import pytest

    problem = postgres_reachable()
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL must run in CI but is unreachable: {problem}")
        pytest.skip(f"PostgreSQL not reachable ({problem}); these tests run in CI")
