"""The append-only, hash-chained audit trail."""

from datetime import datetime

from sqlalchemy import Column, Index, Text
from sqlmodel import Field, SQLModel

from ecrf.common.columns import BIG_ID


class AuditEntry(SQLModel, table=True):
    __tablename__ = "audit_entry"
    __table_args__ = (Index("ix_audit_entry_subject", "patient_id", "seq"),)

    seq: int | None = Field(default=None, sa_column=Column(BIG_ID, primary_key=True, autoincrement=False))
    at: datetime
    actor_sub: str = Field(max_length=200)
    actor_role: str = Field(max_length=32)
    actor_site: str | None = Field(default=None, max_length=32)
    action: str = Field(max_length=64)
    source: str = Field(max_length=16)
    patient_id: str | None = Field(default=None, max_length=64)
    form_id: str | None = Field(default=None, max_length=64)
    visit_id: str | None = Field(default=None, max_length=64)
    item_id: str | None = Field(default=None, max_length=64)
    old_value: str | None = Field(default=None, sa_column=Column(Text))
    new_value: str | None = Field(default=None, sa_column=Column(Text))
    reason: str | None = Field(default=None, sa_column=Column(Text))
    resource: str | None = Field(default=None, max_length=140)
    resource_version: int | None = None
    prev_hash: str = Field(max_length=64)
    hash: str = Field(max_length=64)


class AuditHead(SQLModel, table=True):
    """The chain's tip: one row, locked by every appender so the chain never forks."""

    __tablename__ = "audit_head"

    id: int = Field(default=1, primary_key=True)
    last_seq: int = Field(default=0, sa_type=BIG_ID)
    last_hash: str = Field(default="0" * 64, max_length=64)
