"""Randomisation tables: lists (one row per stratum), their slots, the allocations, and two counters.

Lists, slots and allocations are append-only (migration 0017 makes the database refuse UPDATE and DELETE).
No route reads `randomisation_slot` but the randomisation manager's; the allocation takes its slot by number.
"""

from datetime import date, datetime

from sqlalchemy import Index, UniqueConstraint
from sqlmodel import Field, SQLModel


class RandomisationList(SQLModel, table=True):
    __tablename__ = "randomisation_list"

    study_id: str = Field(primary_key=True, max_length=64)
    stratum: str = Field(primary_key=True, max_length=128)
    slots: int
    checksum: str = Field(max_length=64)  # SHA-256 of the list's canonical text, at generation
    scheme_fingerprint: str = Field(max_length=64)
    generated_at: datetime
    generated_by: str = Field(max_length=200)


class RandomisationSlot(SQLModel, table=True):
    __tablename__ = "randomisation_slot"

    study_id: str = Field(primary_key=True, max_length=64)
    stratum: str = Field(primary_key=True, max_length=128)
    sequence: int = Field(primary_key=True)
    block: int
    block_size: int
    arm: str = Field(max_length=64)


class RandomisationAllocation(SQLModel, table=True):
    """One subject's allocation: the slot it took (unique), its number (unique), who and when."""

    __tablename__ = "randomisation_allocation"
    __table_args__ = (
        UniqueConstraint("study_id", "subject_id", name="uq_randomisation_allocation_subject"),
        UniqueConstraint("study_id", "number", name="uq_randomisation_allocation_number"),
        Index("ix_randomisation_allocation_site", "site"),
    )

    study_id: str = Field(primary_key=True, max_length=64)
    stratum: str = Field(primary_key=True, max_length=128)
    sequence: int = Field(primary_key=True)
    subject_id: str = Field(max_length=64)
    patient_id: str = Field(max_length=64)
    site: str | None = Field(default=None, max_length=32)
    number: str = Field(max_length=64)
    arm: str = Field(max_length=64)
    randomisation_date: date
    allocated_at: datetime
    allocated_by: str = Field(max_length=200)
    allocated_role: str = Field(max_length=64)


class RandomisationCounter(SQLModel, table=True):
    """Next-number counters, `stratum:<id>` and `site:<id>`: the row lock that orders concurrent allocations."""

    __tablename__ = "randomisation_counter"

    study_id: str = Field(primary_key=True, max_length=64)
    name: str = Field(primary_key=True, max_length=160)
    value: int
