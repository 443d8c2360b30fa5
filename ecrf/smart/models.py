"""Registered machine clients (SMART Backend Services) and the assertion ids (jti) already used."""

from datetime import datetime

from sqlalchemy import Column, Index, Text
from sqlmodel import Field, SQLModel


class SmartClient(SQLModel, table=True):
    """A machine client: its role (and site), the scopes it may be granted, and its public keys."""

    __tablename__ = "smart_client"

    id: str = Field(primary_key=True, max_length=64)
    name: str = Field(max_length=200)
    role: str = Field(max_length=32)
    site: str | None = Field(default=None, max_length=64)
    scopes: str = Field(sa_column=Column(Text, nullable=False))  # space-separated SMART scopes
    jwks: str | None = Field(default=None, sa_column=Column(Text))  # JSON JWKS (public keys only)
    jwks_uri: str | None = Field(default=None, sa_column=Column(Text))
    enabled: bool = True
    created_at: datetime
    updated_at: datetime


class UsedAssertion(SQLModel, table=True):
    """A client assertion's jti, kept until the assertion expires: a second use is a replay."""

    __tablename__ = "smart_used_assertion"
    __table_args__ = (Index("ix_smart_used_assertion_expires", "expires_at"),)

    client_id: str = Field(primary_key=True, max_length=64)
    jti: str = Field(primary_key=True, max_length=255)
    expires_at: datetime
