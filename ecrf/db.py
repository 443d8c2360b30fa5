"""Database engine and sessions; SQLite (WAL) by default, PostgreSQL through psycopg."""
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlmodel import Session, create_engine


def make_engine(database_url: str) -> Engine:
    if database_url.startswith("sqlite"):
        engine = create_engine(
            database_url,
            connect_args={"check_same_thread": False, "timeout": 30},
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    return create_engine(database_url, pool_size=10, max_overflow=20, pool_pre_ping=True)


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _sqlite_begin(connection) -> None:
    # A writer takes SQLite's write lock at BEGIN, so concurrent writers queue on busy_timeout
    # instead of failing when a read lock cannot be upgraded; readers stay concurrent under WAL.
    writes = connection.get_execution_options().get("writes", False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if writes else "BEGIN")


@contextmanager
def transaction(engine: Engine) -> Iterator[Session]:
    """One unit of work: everything inside commits together or not at all."""
    with Session(engine.execution_options(writes=True), expire_on_commit=False) as session:
        with session.begin():
            yield session


@contextmanager
def reading(engine: Engine) -> Iterator[Session]:
    """A consistent read-only snapshot."""
    with Session(engine, expire_on_commit=False) as session:
        with session.begin():
            yield session
