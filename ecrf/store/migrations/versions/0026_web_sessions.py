"""web sessions: browser sessions of the clinicians' screens (cookie token hashed, CSRF token, expiry)

Revision ID: 0026_web_sessions
Revises: 0001
Written by hand; tests/test_migrations.py checks it against ecrf/web/models.py.
"""

from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = "0026_web_sessions"
down_revision = "0001"
branch_labels = ("web",)
depends_on = None


def _text(length: int) -> sqlmodel.sql.sqltypes.AutoString:
    return sqlmodel.sql.sqltypes.AutoString(length=length)


def upgrade() -> None:
    op.create_table(
        "web_session",
        sa.Column("token_hash", _text(64), nullable=False),
        sa.Column("sub", _text(200), nullable=False),
        sa.Column("roles", _text(200), nullable=False),
        sa.Column("sites", _text(500), nullable=True),
        sa.Column("method", _text(16), nullable=False),
        sa.Column("csrf", _text(64), nullable=False),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("last_seen_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("authenticated_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("expires_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("token_hash"),
    )
    with op.batch_alter_table("web_session", schema=None) as batch_op:
        batch_op.create_index("ix_web_session_expires", ["expires_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("web_session", schema=None) as batch_op:
        batch_op.drop_index("ix_web_session_expires")
    op.drop_table("web_session")
