"""Database engine and sessions; SQLite (WAL) by default, PostgreSQL through psycopg."""

import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlmodel import Session, create_engine


SQLITE_BUSY_SECONDS = 30


def make_engine(database_url: str) -> Engine:
    if database_url.startswith("sqlite"):
        engine = create_engine(
            database_url,
            connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_SECONDS},
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
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_SECONDS * 1000}")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _sqlite_begin(connection) -> None:
    # A writer takes SQLite's write lock at BEGIN, so concurrent writers queue on busy_timeout
    # instead of failing when a read lock cannot be upgraded; readers stay concurrent under WAL.
    writes = connection.get_execution_options().get("writes", False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if writes else "BEGIN")


class WriterQueue:
    """Writers of one SQLite database in this process take turns in arrival order. SQLite's own busy
    handler polls with growing sleeps, so a writer that has waited long is often overtaken by one that has
    just arrived: that unfairness, not the work, made the tail latency of concurrent writes. Writers in
    other processes still meet SQLite's lock and busy timeout."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._busy = False
        self._waiting: deque[threading.Event] = deque()

    def acquire(self, timeout: float) -> bool:
        """True once it is this writer's turn; False after `timeout` (the writer then meets SQLite's lock)."""
        with self._mutex:
            if not self._busy:
                self._busy = True
                return True
            turn = threading.Event()
            self._waiting.append(turn)
        if turn.wait(timeout):
            return True
        with self._mutex:
            if turn.is_set():  # handed over just as the wait ended
                return True
            self._waiting.remove(turn)
            return False

    def release(self) -> None:
        with self._mutex:
            if self._waiting:
                self._waiting.popleft().set()  # the turn passes straight to the longest waiting writer
            else:
                self._busy = False


_writer_queues: dict[str, WriterQueue] = {}
_writer_queues_lock = threading.Lock()


@contextmanager
def _writer_turn(engine: Engine) -> Iterator[None]:
    if engine.dialect.name != "sqlite":
        yield  # PostgreSQL writers lock only the rows they change
        return
    with _writer_queues_lock:
        queue = _writer_queues.setdefault(str(engine.url), WriterQueue())
    turn = queue.acquire(SQLITE_BUSY_SECONDS)
    try:
        yield
    finally:
        if turn:
            queue.release()


@contextmanager
def transaction(engine: Engine) -> Iterator[Session]:
    """One unit of work: everything inside commits together or not at all."""
    with _writer_turn(engine), Session(engine.execution_options(writes=True), expire_on_commit=False) as session:
        with session.begin():
            yield session


@contextmanager
def reading(engine: Engine) -> Iterator[Session]:
    """A consistent read-only snapshot."""
    with Session(engine, expire_on_commit=False) as session:
        with session.begin():
            yield session


@contextmanager
def snapshot(engine: Engine) -> Iterator[Session]:
    """A read-only transaction whose statements all see one snapshot, for reads made of several queries
    (aggregate reports, the audit chain walk): REPEATABLE READ on PostgreSQL, whose default READ COMMITTED
    gives each statement its own; SQLite's deferred BEGIN under WAL already keeps one."""
    if engine.dialect.name == "postgresql":
        engine = engine.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
    with Session(engine, expire_on_commit=False) as session:
        with session.begin():
            yield session


def open_snapshot(engine: Engine) -> Session:
    """A session already in a transaction whose statements all see one snapshot (REPEATABLE READ on PostgreSQL),
    for a read that outlives a `with` block (a streamed CSV, an export job's batches): the caller closes it."""
    if engine.dialect.name == "postgresql":
        engine = engine.execution_options(isolation_level="REPEATABLE READ")
    session = Session(engine, expire_on_commit=False)
    session.begin()
    return session


# -- database outages -------------------------------------------------------------------------------------

OUTAGE_RETRY_AFTER_SECONDS = 5
OUTAGE_SQLSTATE_PREFIXES = (
    "08",
    "57P",
    "53",
)  # connection exceptions; admin/crash shutdown, cannot connect now; out of resources


class DatabaseUnavailable(Exception):
    """The database cannot be reached (restarting, down, refusing connections): answered 503 with Retry-After."""


def is_outage(error: BaseException) -> bool:
    """Is this database error an outage (the server is away), rather than a lost race or a bad statement?
    A lost race (serialization failure, deadlock, SQLite's `database is locked`) is retried by its caller;
    an outage is not: the client is told to come back (503, Retry-After)."""
    from sqlalchemy.exc import DBAPIError

    if isinstance(error, DatabaseUnavailable):
        return True
    if not isinstance(error, DBAPIError):
        return False
    if error.connection_invalidated:
        return True
    original = error.orig
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a dependency
        return False
    if not isinstance(original, psycopg.OperationalError):
        return False
    state = getattr(original, "sqlstate", None)
    if state is None:  # raised by the client: connection refused, closed, lost
        return True
    return state.startswith(OUTAGE_SQLSTATE_PREFIXES)


def is_statement_timeout(error: BaseException) -> bool:
    """A statement the database cancelled (statement_timeout, or a cancel sent when the client went away)."""
    from sqlalchemy.exc import DBAPIError

    original = error.orig if isinstance(error, DBAPIError) else error
    return getattr(original, "sqlstate", None) == "57014"  # query_canceled


# -- statement timeouts, and cancelling a statement whose client went away -----------------------------


class StatementCancelled(Exception):
    """A statement stopped by its timeout or because its client disconnected: answered 503."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class Cancellable:
    """One request's database work that may be stopped from another thread: by its timeout (PostgreSQL's
    `statement_timeout`; on SQLite a timer that interrupts the connection) or by `cancel()` when the client
    has gone (a cancel request to the PostgreSQL backend; `interrupt()` on SQLite). Every live one is in
    `RUNNING`, so a stopping instance can cancel what its requests still run."""

    def __init__(self, timeout_ms: int):
        self.timeout_ms = timeout_ms
        self.reason: str | None = None
        self._lock = threading.Lock()
        self._connection = None
        self._dialect = ""

    @contextmanager
    def watching(self, session: Session) -> Iterator[None]:
        """Inside an open transaction of `session`: its statements may be stopped until the block ends."""
        from sqlalchemy import text
        from sqlalchemy.exc import DBAPIError

        connection = session.connection()
        dialect = connection.dialect.name
        timer = None
        if self.timeout_ms and dialect == "postgresql":
            connection.execute(text(f"SET LOCAL statement_timeout = {int(self.timeout_ms)}"))
        elif self.timeout_ms:
            timer = threading.Timer(self.timeout_ms / 1000, self.cancel, args=("timeout",))
            timer.daemon = True
        with self._lock:
            if self.reason is not None:
                raise StatementCancelled(self.reason)
            self._connection, self._dialect = connection.connection.driver_connection, dialect
        with _running_lock:
            RUNNING.add(self)
        if timer is not None:
            timer.start()
        try:
            yield
        except DBAPIError as error:
            if self.reason is not None or is_statement_timeout(error):
                raise StatementCancelled(self.reason or "timeout") from error
            raise
        finally:
            if timer is not None:
                timer.cancel()
            with self._lock:
                self._connection = None
            with _running_lock:
                RUNNING.discard(self)

    def cancel(self, reason: str = "disconnected") -> None:
        """Stop the running statement, if any (any thread may call this)."""
        with self._lock:  # held while cancelling: the connection cannot go back to the pool meanwhile
            if self.reason is None:
                self.reason = reason
            connection, dialect = self._connection, self._dialect
            if connection is None:
                return
            try:
                if dialect == "postgresql":
                    (getattr(connection, "cancel_safe", None) or connection.cancel)()
                else:
                    connection.interrupt()
            except Exception:  # noqa: BLE001 - the statement may have just ended, or the server be gone
                pass


RUNNING: "set[Cancellable]" = set()
_running_lock = threading.Lock()


def cancel_running(reason: str = "shutdown") -> None:
    """Cancel every statement a request of this process still runs (an instance that is stopping)."""
    with _running_lock:
        running = list(RUNNING)
    for work in running:
        work.cancel(reason)
