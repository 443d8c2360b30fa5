"""Browser sessions: workflow state of the web door, never clinical facts.

The cookie carries a random token; the table keeps only its SHA-256, so a copy of the database opens no
session. A session ends at sign-out (row deleted), after `web_idle_minutes` without a request, or
`web_absolute_hours` after sign-in, whichever comes first.
"""

from datetime import datetime

from sqlalchemy import Index
from sqlmodel import Field, SQLModel


class WebSession(SQLModel, table=True):
    __tablename__ = "web_session"
    __table_args__ = (Index("ix_web_session_expires", "expires_at"),)

    token_hash: str = Field(primary_key=True, max_length=64)
    sub: str = Field(max_length=200)
    roles: str = Field(max_length=200)  # comma-separated
    sites: str | None = Field(default=None, max_length=500)  # comma-separated; None: every site
    method: str = Field(max_length=16)  # "dev" or "oidc"
    csrf: str = Field(max_length=64)
    created_at: datetime
    last_seen_at: datetime
    authenticated_at: datetime  # the last (re-)authentication: signing needs a recent one
    expires_at: datetime  # absolute expiry
