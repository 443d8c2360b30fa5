"""Queries are workflow state, not clinical facts: relational rows, never FHIR resources.

A query's thread is append-only: a message row is inserted once and never updated or deleted.
"""

from datetime import datetime

from sqlalchemy import Column, ForeignKey, Index, Text, UniqueConstraint, event, func
from sqlmodel import Field, Session, SQLModel, select
from sqlmodel.sql.sqltypes import AutoString

from ecrf.store.models import BIG_ID

STATUSES = ("open", "answered", "closed")
UNRESOLVED = ("open", "answered")


class DataQuery(SQLModel, table=True):
    """One query on a subject, optionally narrowed to a form, a visit and an item."""

    __tablename__ = "data_query"
    __table_args__ = (
        Index("ix_data_query_subject", "subject_id", "form_id", "visit_id"),
        Index("ix_data_query_site_status", "site", "status", "raised_at"),
    )

    id: str = Field(primary_key=True, max_length=32)
    subject_id: str = Field(max_length=64)
    patient_id: str = Field(max_length=64)
    site: str | None = Field(default=None, max_length=32)
    form_id: str | None = Field(default=None, max_length=64)
    visit_id: str | None = Field(default=None, max_length=64)
    item_id: str | None = Field(default=None, max_length=64)
    status: str = Field(max_length=16)
    raised_at: datetime
    raised_by: str = Field(max_length=200)
    raised_role: str = Field(max_length=32)
    updated_at: datetime
    messages: int  # length of the thread; the next message's seq is messages + 1


class QueryMessage(SQLModel, table=True):
    """One step of a query's thread: who (sub, role), when (UTC), what (action, status after it), text."""

    __tablename__ = "data_query_message"
    __table_args__ = (UniqueConstraint("query_id", "seq", name="uq_data_query_message"),)

    pk: int | None = Field(default=None, sa_column=Column(BIG_ID, primary_key=True, autoincrement=True))
    query_id: str = Field(sa_column=Column(AutoString(32), ForeignKey("data_query.id"), nullable=False))
    seq: int
    action: str = Field(max_length=16)
    status: str = Field(max_length=16)
    at: datetime
    author_sub: str = Field(max_length=200)
    author_role: str = Field(max_length=32)
    text: str | None = Field(default=None, sa_column=Column(Text))


@event.listens_for(QueryMessage, "before_update")
@event.listens_for(QueryMessage, "before_delete")
def _append_only(_mapper, _connection, message: QueryMessage) -> None:
    raise RuntimeError(f"message {message.seq} of query {message.query_id} is part of an append-only thread")


# -- unresolved (open or answered) query counts, shown where a site sees its data: a read of this table that
# other domains (crf's form view and lock, the subjects list) make without depending on the queries domain


def unresolved_of_subject(session: Session, subject_id: str) -> int:
    return session.exec(
        select(func.count()).where(DataQuery.subject_id == subject_id, DataQuery.status.in_(UNRESOLVED))
    ).one()


def unresolved_of_form(session: Session, subject_id: str, form_id: str, visit_id: str) -> tuple[int, dict[str, int]]:
    """(total, {item_id: count}) of the queries on one form instance; item-less queries count in the total only."""
    rows = session.exec(
        select(DataQuery.item_id, func.count())
        .where(
            DataQuery.subject_id == subject_id,
            DataQuery.form_id == form_id,
            DataQuery.visit_id == visit_id,
            DataQuery.status.in_(UNRESOLVED),
        )
        .group_by(DataQuery.item_id)
    ).all()
    by_item = {item_id: count for item_id, count in rows if item_id is not None}
    return sum(count for _, count in rows), by_item
