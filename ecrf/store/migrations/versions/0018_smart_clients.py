"""SMART Backend Services: registered machine clients and used assertion ids

Revision ID: 0018_smart_clients
Revises: 0001
Written by hand; tests/test_migrations.py checks it against ecrf/smart/models.py.
"""

from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = "0018_smart_clients"
down_revision = "0001"
branch_labels = ("smart",)
depends_on = None


def _text(length: int) -> sqlmodel.sql.sqltypes.AutoString:
    return sqlmodel.sql.sqltypes.AutoString(length=length)


def upgrade() -> None:
    moment = sqlmodel.sql.sqltypes.UTCDateTime
    op.create_table(
        "smart_client",
        sa.Column("id", _text(64), nullable=False),
        sa.Column("name", _text(200), nullable=False),
        sa.Column("role", _text(32), nullable=False),
        sa.Column("site", _text(64), nullable=True),
        sa.Column("scopes", sa.Text(), nullable=False),
        sa.Column("jwks", sa.Text(), nullable=True),
        sa.Column("jwks_uri", sa.Text(), nullable=True),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", moment(), nullable=False),
        sa.Column("updated_at", moment(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "smart_used_assertion",
        sa.Column("client_id", _text(64), nullable=False),
        sa.Column("jti", _text(255), nullable=False),
        sa.Column("expires_at", moment(), nullable=False),
        sa.PrimaryKeyConstraint("client_id", "jti"),
    )
    with op.batch_alter_table("smart_used_assertion", schema=None) as batch_op:
        batch_op.create_index("ix_smart_used_assertion_expires", ["expires_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("smart_used_assertion", schema=None) as batch_op:
        batch_op.drop_index("ix_smart_used_assertion_expires")
    op.drop_table("smart_used_assertion")
    op.drop_table("smart_client")
