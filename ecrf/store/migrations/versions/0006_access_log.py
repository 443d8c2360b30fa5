"""audit: the access log, who saw which subject's identifiers

Revision ID: 0006_access_log
Revises: 0001
Written by hand; tests/test_migrations.py checks it against ecrf/audit/access/models.py.
"""

from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = "0006_access_log"
down_revision = "0001"
branch_labels = ("access_log",)
depends_on = None


def _text(length: int) -> sqlmodel.sql.sqltypes.AutoString:
    return sqlmodel.sql.sqltypes.AutoString(length=length)


def upgrade() -> None:
    op.create_table(
        "access_event",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("request_id", _text(32), nullable=False),
        sa.Column("actor_sub", _text(200), nullable=False),
        sa.Column("actor_role", _text(64), nullable=False),
        sa.Column("actor_site", _text(32), nullable=True),
        sa.Column("patient_id", _text(64), nullable=False),
        sa.Column("route", _text(200), nullable=False),
        sa.Column("interaction", _text(32), nullable=False),
        sa.Column("kind", _text(32), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("access_event", schema=None) as batch_op:
        batch_op.create_index("ix_access_event_patient", ["patient_id", "id"], unique=False)
        batch_op.create_index("ix_access_event_actor", ["actor_sub", "id"], unique=False)
        batch_op.create_index("ix_access_event_at", ["at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("access_event", schema=None) as batch_op:
        batch_op.drop_index("ix_access_event_at")
        batch_op.drop_index("ix_access_event_actor")
        batch_op.drop_index("ix_access_event_patient")
    op.drop_table("access_event")
