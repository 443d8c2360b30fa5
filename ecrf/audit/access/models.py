"""The access log: one row per subject whose identifiers a response showed; appended, never changed."""

from datetime import datetime

from sqlalchemy import Column, Index
from sqlmodel import Field, SQLModel

from ecrf.common.columns import BIG_ID


class AccessEvent(SQLModel, table=True):
    __tablename__ = "access_event"
    __table_args__ = (
        Index("ix_access_event_patient", "patient_id", "id"),
        Index("ix_access_event_actor", "actor_sub", "id"),
        Index("ix_access_event_at", "at"),
    )

    id: int | None = Field(default=None, sa_column=Column(BIG_ID, primary_key=True, autoincrement=True))
    at: datetime
    request_id: str = Field(max_length=32)  # the rows of one response share it
    actor_sub: str = Field(max_length=200)
    actor_role: str = Field(max_length=64)
    actor_site: str | None = Field(default=None, max_length=32)
    patient_id: str = Field(max_length=64)
    route: str = Field(max_length=200)  # method and path, never the query string (it may hold an MRN)
    interaction: str = Field(max_length=32)
    kind: str = Field(max_length=32)  # what was shown: patient, mrn, birth_date, identified_export
