"""Workflow state of form instances. Clinical values are never here: they live in the clinical store."""

from datetime import date, datetime

from sqlalchemy import Column, Index, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

WITHDRAWN = "entered_in_error"  # the status of an entry withdrawn as entered in error (its data deleted)


class FormInstance(SQLModel, table=True):
    """One form of one subject at one visit: its status, version (the ETag) and signatures."""

    __tablename__ = "form_instance"
    __table_args__ = (
        UniqueConstraint("subject_id", "form_id", "visit_id", "entry_id", name="uq_form_instance"),
        Index("ix_form_instance_patient", "patient_id"),
        Index("ix_form_instance_report", "site", "form_id", "visit_id", "status"),  # the enrolment report
    )

    id: str = Field(primary_key=True, max_length=32)
    subject_id: str = Field(max_length=64)
    patient_id: str = Field(max_length=64)
    site: str | None = Field(default=None, max_length=32)
    form_id: str = Field(max_length=64)
    visit_id: str = Field(max_length=64)  # LOG for an entry of a log form
    entry_id: str = Field(
        default="", max_length=32, sa_column_kwargs={"server_default": ""}
    )  # '' = the visit's own form
    source: str = Field(
        default="form", max_length=16, sa_column_kwargs={"server_default": "form"}
    )  # or fhir: an EHR's push
    status: str = Field(max_length=16)
    version: int
    visit_date: date
    deviation: str | None = Field(default=None, sa_column=Column(Text))
    resources: str = Field(sa_column=Column(Text, nullable=False))  # JSON {slot: "Type/id"}
    created_at: datetime
    created_by: str = Field(max_length=200)
    updated_at: datetime
    updated_by: str = Field(max_length=200)
    updated_role: str = Field(max_length=32)
    verified_at: datetime | None = None
    verified_by: str | None = Field(default=None, max_length=200)
    signed_at: datetime | None = None
    signed_by: str | None = Field(default=None, max_length=200)
    signature_meaning: str | None = Field(default=None, sa_column=Column(Text))
    signature_hash: str | None = Field(default=None, max_length=64)
    locked_at: datetime | None = None
    locked_by: str | None = Field(default=None, max_length=200)
    eligibility_basis: str | None = Field(default=None, sa_column=Column(Text))
    withdrawn_reason: str | None = Field(default=None, sa_column=Column(Text))  # status entered_in_error


class FormResource(SQLModel, table=True):
    """Which form instance owns a resource its saves wrote (FormInstance.resources, indexed the other way),
    so a write of that resource through any door finds the form's lock and signatures in one lookup."""

    __tablename__ = "form_resource"
    __table_args__ = (Index("ix_form_resource_instance", "instance_id"),)

    resource_type: str = Field(primary_key=True, max_length=64)
    resource_id: str = Field(primary_key=True, max_length=64)
    instance_id: str = Field(max_length=32)
