"""eligibility: persisted per-subject eligibility state (live and frozen results)

Revision ID: 0003_eligibility
Revises: 0001
Written by hand; tests/test_migrations.py checks it against ecrf/eligibility/models.py.
"""

from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = "0003_eligibility"
down_revision = "0001"
branch_labels = ("eligibility",)
depends_on = None


def _text(length: int) -> sqlmodel.sql.sqltypes.AutoString:
    return sqlmodel.sql.sqltypes.AutoString(length=length)


def upgrade() -> None:
    moment = sqlmodel.sql.sqltypes.UTCDateTime
    op.create_table(
        "eligibility_state",
        sa.Column("subject_id", _text(64), nullable=False),
        sa.Column("patient_id", _text(64), nullable=False),
        sa.Column("site", _text(32), nullable=True),
        sa.Column("status", _text(16), nullable=False),
        sa.Column("live_status", _text(16), nullable=False),
        sa.Column("blocking", sa.Text(), nullable=False),
        sa.Column("result", sa.Text(), nullable=False),
        sa.Column("frozen_result", sa.Text(), nullable=True),
        sa.Column("frozen_at", moment(), nullable=True),
        sa.Column("changed_since_randomisation", sa.Boolean(), nullable=False),
        sa.Column("evaluated_at", moment(), nullable=False),
        sa.PrimaryKeyConstraint("subject_id"),
    )
    with op.batch_alter_table("eligibility_state", schema=None) as batch_op:
        batch_op.create_index("ix_eligibility_state_site_status", ["site", "status"], unique=False)
        batch_op.create_index("ix_eligibility_state_patient", ["patient_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("eligibility_state", schema=None) as batch_op:
        batch_op.drop_index("ix_eligibility_state_patient")
        batch_op.drop_index("ix_eligibility_state_site_status")
    op.drop_table("eligibility_state")
