"""The SAE clock of each serious entry: awareness, the report to the sponsor. Clinical values stay in the store."""

from datetime import datetime

from sqlalchemy import Column, Index, Text
from sqlmodel import Field, SQLModel


class SaeReport(SQLModel, table=True):
    """One serious entry's clock: started when the site first saved it as serious, stopped by the report."""

    __tablename__ = "sae_report"
    __table_args__ = (Index("ix_sae_report_site", "site", "reported_at"),)

    instance_id: str = Field(primary_key=True, max_length=32)  # the entry's form instance
    subject_id: str = Field(max_length=64)
    patient_id: str = Field(max_length=64)
    site: str | None = Field(default=None, max_length=32)
    form_id: str = Field(max_length=64)
    entry_id: str = Field(max_length=32)
    aware_at: datetime
    aware_by: str = Field(max_length=200)
    serious: bool = True  # whether the entry is serious as last saved (a downgrade closes the clock)
    reported_at: datetime | None = None
    reported_by: str | None = Field(default=None, max_length=200)
    report_reference: str | None = Field(default=None, sa_column=Column(Text))
