"""Tables of the versioned clinical store. Versions are append-only; heads and indexes are derived."""

from datetime import date, datetime

from sqlalchemy import BigInteger, Column, Index, Text, UniqueConstraint, text
from sqlmodel import Field, SQLModel

from ecrf.common.columns import BIG_ID


class ResourceVersion(SQLModel, table=True):
    """One immutable version of a FHIR resource: never updated, never deleted."""

    __tablename__ = "resource_version"
    __table_args__ = (
        UniqueConstraint("resource_type", "resource_id", "version_id", name="uq_resource_version"),
        Index("ix_resource_version_patient", "patient_id"),
    )

    pk: int | None = Field(default=None, sa_column=Column(BIG_ID, primary_key=True, autoincrement=True))
    resource_type: str = Field(max_length=64)
    resource_id: str = Field(max_length=64)
    version_id: int
    last_updated: datetime
    deleted: bool = False
    patient_id: str | None = Field(default=None, max_length=64)
    site: str | None = Field(default=None, max_length=32)
    content: str = Field(sa_column=Column(Text, nullable=False))
    author_sub: str = Field(max_length=200)
    author_role: str = Field(max_length=32)
    reason: str | None = Field(default=None, sa_column=Column(Text))
    source: str = Field(max_length=16)


class ResourceHead(SQLModel, table=True):
    """Pointer to the current version of each resource (a cache of max(version_id), kept in step)."""

    __tablename__ = "resource_head"
    __table_args__ = (
        Index("ix_resource_head_patient", "resource_type", "patient_id"),
        Index("ix_resource_head_updated", "resource_type", "last_updated"),
    )

    resource_type: str = Field(primary_key=True, max_length=64)
    resource_id: str = Field(primary_key=True, max_length=64)
    version_id: int
    version_pk: int = Field(sa_type=BigInteger)
    last_updated: datetime
    deleted: bool = False
    patient_id: str | None = Field(default=None, max_length=64)
    site: str | None = Field(default=None, max_length=32)


class SearchToken(SQLModel, table=True):
    """Search parameters of current versions, so searches never parse JSON."""

    __tablename__ = "search_token"
    __table_args__ = (
        Index("ix_search_token_lookup", "resource_type", "param", "code", "system"),
        Index("ix_search_token_resource", "resource_type", "resource_id"),
        # References only: the other tokens (codes, dates: most rows) have no value to look up.
        Index(
            "ix_search_token_value",
            "resource_type",
            "param",
            "value",
            sqlite_where=text("value IS NOT NULL"),
            postgresql_where=text("value IS NOT NULL"),
        ),
    )

    pk: int | None = Field(default=None, sa_column=Column(BIG_ID, primary_key=True, autoincrement=True))
    resource_type: str = Field(max_length=64)
    resource_id: str = Field(max_length=64)
    param: str = Field(max_length=64)
    system: str | None = Field(default=None, max_length=255)
    code: str | None = Field(default=None, max_length=255)
    value: str | None = Field(default=None, max_length=255)
    number: float | None = None
    moment: datetime | None = None
    text: str | None = Field(default=None, max_length=255)  # a coding's display, folded (`:text` searches)


class ItemFact(SQLModel, table=True):
    """A study item value carried by a current resource version, in canonical units.

    Both doors and the eligibility engine read clinical facts from here.
    """

    __tablename__ = "item_fact"
    __table_args__ = (
        Index("ix_item_fact_patient_item", "patient_id", "item_id", "effective"),
        Index("ix_item_fact_resource", "resource_type", "resource_id"),
    )

    pk: int | None = Field(default=None, sa_column=Column(BIG_ID, primary_key=True, autoincrement=True))
    resource_type: str = Field(max_length=64)
    resource_id: str = Field(max_length=64)
    version_id: int
    patient_id: str | None = Field(default=None, max_length=64)
    form_id: str = Field(max_length=64)
    item_id: str = Field(max_length=64)
    value_number: float | None = None
    value_text: str | None = Field(default=None, sa_column=Column(Text))
    unit: str | None = Field(default=None, max_length=64)
    original_value: str | None = Field(default=None, max_length=64)
    original_unit: str | None = Field(default=None, max_length=64)
    uln: float | None = None
    effective: datetime | None = None  # the exact instant (UTC), for ordering
    effective_date: date | None = None  # the date as sent (the sender's local date): windows, visits, intervals
    error: str | None = Field(default=None, sa_column=Column(Text))
    source: str = Field(max_length=16)  # the door of the write that set this value (form, fhir, system)
    set_in_version: int | None = None  # the resource version that set this value; later versions may carry it


class ConditionalKey(SQLModel, table=True):
    """Unique key behind conditional create, so two concurrent identical requests give one resource."""

    __tablename__ = "conditional_key"

    resource_type: str = Field(primary_key=True, max_length=64)
    criteria: str = Field(primary_key=True, max_length=512)
    resource_id: str = Field(max_length=64)


class PushedBy(SQLModel, table=True):
    """Which ehr client (token `sub`) pushed each resource, or linked it to itself by its site's MRN: what an
    ehr-only client may read back. Written by the store for every write of such a client."""

    __tablename__ = "pushed_by"

    resource_type: str = Field(primary_key=True, max_length=64)
    resource_id: str = Field(primary_key=True, max_length=64)
    sub: str = Field(primary_key=True, max_length=200)
