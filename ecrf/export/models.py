"""Export jobs: their state lives in the database so any instance can run them and a restart resumes them."""

from datetime import datetime

from sqlalchemy import Column, Index, Text
from sqlmodel import Field, SQLModel


class ExportJob(SQLModel, table=True):
    """One asynchronous Bulk Data export: what was asked, by whom, who runs it (lease) and how far it got."""

    __tablename__ = "export_job"
    __table_args__ = (Index("ix_export_job_claim", "status", "lease_until"),)

    id: str = Field(primary_key=True, max_length=32)
    status: str = Field(max_length=16)  # queued, running, completed, failed, cancelled
    owner_sub: str = Field(max_length=200)
    owner_role: str = Field(max_length=64)
    owner_sites: str | None = Field(default=None, max_length=500)  # JSON list; None: every site
    deidentified: bool
    profile: str | None = Field(default=None, max_length=64)
    request_url: str = Field(sa_column=Column(Text, nullable=False))
    group_id: str | None = Field(default=None, max_length=64)
    types: str = Field(sa_column=Column(Text, nullable=False))  # JSON list, in export order
    since: datetime | None = None
    transaction_time: datetime
    directory: str = Field(sa_column=Column(Text, nullable=False))
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    lease_owner: str | None = Field(default=None, max_length=64)
    lease_until: datetime | None = None
    attempts: int = 0
    cursor: str | None = Field(
        default=None, sa_column=Column(Text)
    )  # JSON: finished types, position in the current one
    exported: int = 0
    output: str | None = Field(default=None, sa_column=Column(Text))  # JSON manifest entries
    error: str | None = Field(default=None, sa_column=Column(Text))
    kind: str = Field(default="bulk", max_length=16)  # bulk (FHIR NDJSON), odm, sdtm: which runner runs it
    params: str | None = Field(default=None, sa_column=Column(Text))  # JSON: the runner's own parameters
    options: str | None = Field(default=None, sa_column=Column(Text))  # JSON: _typeFilter, _elements, patient, warnings
