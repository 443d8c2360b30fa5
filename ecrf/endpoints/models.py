"""The latest derived endpoints (CRF-SPEC 8) of every randomised subject, recomputed in each write's transaction."""

from datetime import date, datetime

from sqlalchemy import Column, Index, Text
from sqlmodel import Field, SQLModel


class EndpointState(SQLModel, table=True):
    """RFS and OS of one randomised subject as of the latest write that touched its patient (derived hook).

    `result` is the whole view (dates, evidence, conflicts, open items); the day columns feed the sponsor's
    de-identified dataset without parsing it."""

    __tablename__ = "endpoint_state"
    __table_args__ = (Index("ix_endpoint_state_patient", "patient_id"), Index("ix_endpoint_state_site", "site"))

    subject_id: str = Field(primary_key=True, max_length=64)
    patient_id: str = Field(max_length=64)
    site: str | None = Field(default=None, max_length=32)
    arm: str = Field(max_length=64)
    stratum: str = Field(max_length=128)
    randomisation_date: date
    rfs_event: bool
    rfs_days: int
    os_event: bool
    os_days: int
    result: str = Field(sa_column=Column(Text, nullable=False))  # JSON of the identified view
    computed_at: datetime
