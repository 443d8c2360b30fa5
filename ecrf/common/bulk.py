"""Bulk inserts straight through the database driver's executemany (one prepared statement, many rows).

SQLAlchemy's per-row parameter handling and multi-VALUES statements cost more than the inserts
themselves for thousands of rows; column types still convert each value as they would in SQLAlchemy.
On PostgreSQL many rows go through COPY; a few (one write's index rows) through executemany, which
takes one round trip where COPY takes two.
"""

from operator import itemgetter
from typing import Any

from sqlalchemy import Table, text
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

COPY_FROM_ROWS = 100


def insert_rows(session: Session, table: Table, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    connection = session.connection()
    dialect = connection.dialect
    columns = list(rows[0])
    processors = [table.c[name].type.dialect_impl(dialect).bind_processor(dialect) for name in columns]
    marker = "?" if dialect.paramstyle == "qmark" else "%s"
    statement = f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({', '.join([marker] * len(columns))})"
    getter = itemgetter(*columns) if len(columns) > 1 else (lambda row: (row[columns[0]],))
    params = [getter(row) for row in rows]
    converting = [(index, process) for index, process in enumerate(processors) if process is not None]
    if converting:
        params = _converted(params, converting)
    if dialect.name == "postgresql" and len(params) >= COPY_FROM_ROWS:
        _copy(connection, table, columns, params)
    else:
        connection.exec_driver_sql(statement, params)


def _converted(params: list[tuple], converting: list[tuple[int, Any]]) -> list[tuple]:
    """The rows with the columns that need it converted, a column at a time."""
    columns = list(zip(*params))
    for index, process in converting:
        columns[index] = _converted_column(columns[index], process)
    return list(zip(*columns))


def _converted_column(values: tuple, process) -> list[Any]:
    """Each distinct value converted once: an insert repeats a few timestamps and flags many times. Values
    that compare equal convert alike (a UTC instant is the same instant in any offset; 1 and True are 1)."""
    try:
        distinct = set(values)
    except TypeError:  # an unhashable value: converted one by one
        return [None if value is None else process(value) for value in values]
    converted = {value: process(value) for value in distinct if value is not None}
    converted[None] = None
    return list(map(converted.__getitem__, values))


def _copy(connection, table: Table, columns: list[str], params: list[tuple]) -> None:
    """PostgreSQL COPY: the fastest way in; a unique violation surfaces as SQLAlchemy's IntegrityError."""
    import psycopg

    statement = f"COPY {table.name} ({', '.join(columns)}) FROM STDIN"
    try:
        with connection.connection.driver_connection.cursor() as cursor, cursor.copy(statement) as copy:
            for row in params:
                copy.write_row(row)
    except psycopg.IntegrityError as error:
        raise IntegrityError(statement, None, error) from error


def next_keys(session: Session, table: Table, count: int) -> list[int]:
    """`count` fresh values of the table's auto-incremented `pk`, to insert rows with known keys.

    PostgreSQL draws them from the column's sequence; SQLite continues from MAX(pk), which is safe
    because a writing SQLite transaction holds the database's write lock from BEGIN IMMEDIATE.
    """
    if session.connection().dialect.name == "postgresql":
        return list(
            session.execute(
                text(f"SELECT nextval(pg_get_serial_sequence('{table.name}', 'pk')) FROM generate_series(1, :n)"),
                {"n": count},
            ).scalars()
        )
    start = session.execute(text(f"SELECT COALESCE(MAX(pk), 0) FROM {table.name}")).scalar_one()
    return list(range(start + 1, start + 1 + count))
