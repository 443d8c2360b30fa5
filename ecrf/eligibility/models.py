"""Persisted eligibility per subject: the latest result of every write, and the frozen one once randomised."""

from datetime import datetime

from sqlalchemy import Column, Index, Text
from sqlmodel import Field, SQLModel


class EligibilityState(SQLModel, table=True):
    """Recomputed in the transaction of every write that touches the subject's patient (derived hook).

    `status` is what the study acts on: the frozen status once randomised, else the live one. The screening
    log lists from here, so a list request never re-evaluates subjects.
    """

    __tablename__ = "eligibility_state"
    __table_args__ = (
        Index("ix_eligibility_state_site_status", "site", "status"),
        Index("ix_eligibility_state_patient", "patient_id"),
    )

    subject_id: str = Field(primary_key=True, max_length=64)
    patient_id: str = Field(max_length=64)
    site: str | None = Field(default=None, max_length=32)
    status: str = Field(max_length=16)
    live_status: str = Field(max_length=16)
    blocking: str = Field(sa_column=Column(Text, nullable=False))  # JSON [{id, kind, result, reason}]
    result: str = Field(sa_column=Column(Text, nullable=False))  # JSON of the live evaluation
    frozen_result: str | None = Field(default=None, sa_column=Column(Text))
    frozen_at: datetime | None = None
    changed_since_randomisation: bool = False
    evaluated_at: datetime
