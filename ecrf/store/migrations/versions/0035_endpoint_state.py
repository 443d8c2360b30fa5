"""endpoints: the latest derived RFS and OS of every randomised subject (CRF-SPEC 8)

Revision ID: 0035_endpoint_state
Revises: 0001
Written by hand; tests/test_migrations.py checks it against ecrf/endpoints/models.py. Existing subjects get
their row at the next write that touches them.
"""

from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = "0035_endpoint_state"
down_revision = "0001"
branch_labels = ("endpoints",)
depends_on = None


def _text(length: int) -> sqlmodel.sql.sqltypes.AutoString:
    return sqlmodel.sql.sqltypes.AutoString(length=length)


def upgrade() -> None:
    op.create_table(
        "endpoint_state",
        sa.Column("subject_id", _text(64), nullable=False),
        sa.Column("patient_id", _text(64), nullable=False),
        sa.Column("site", _text(32), nullable=True),
        sa.Column("arm", _text(64), nullable=False),
        sa.Column("stratum", _text(128), nullable=False),
        sa.Column("randomisation_date", sa.Date(), nullable=False),
        sa.Column("rfs_event", sa.Boolean(), nullable=False),
        sa.Column("rfs_days", sa.Integer(), nullable=False),
        sa.Column("os_event", sa.Boolean(), nullable=False),
        sa.Column("os_days", sa.Integer(), nullable=False),
        sa.Column("result", sa.Text(), nullable=False),
        sa.Column("computed_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("subject_id"),
    )
    op.create_index("ix_endpoint_state_patient", "endpoint_state", ["patient_id"])
    op.create_index("ix_endpoint_state_site", "endpoint_state", ["site"])


def downgrade() -> None:
    op.drop_index("ix_endpoint_state_site", table_name="endpoint_state")
    op.drop_index("ix_endpoint_state_patient", table_name="endpoint_state")
    op.drop_table("endpoint_state")
