"""Tests that play a tamperer: someone with the tables' owner rights, who first turns the append-only
triggers (migration 0013) off, as `ecrf audit verify` must still catch what such a person changes."""

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine, text


@contextmanager
def tampering(engine: Engine) -> Iterator[Connection]:
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":  # the test role is a superuser
            connection.execute(text("SET LOCAL session_replication_role = replica"))
            yield connection
            return
        triggers = connection.execute(
            text("SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND sql LIKE '%append-only%'")
        ).all()
        for name, _ in triggers:
            connection.execute(text(f'DROP TRIGGER "{name}"'))
        yield connection
        for _, sql in triggers:
            connection.execute(text(sql))
