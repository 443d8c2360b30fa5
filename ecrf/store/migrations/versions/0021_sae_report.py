"""safety: the SAE reporting clock of each serious entry (CRF-SPEC 7.2)

Revision ID: 0021_sae_report
Revises: 0001
Written by hand; tests/test_migrations.py checks it against ecrf/safety/models.py.
"""

from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = "0021_sae_report"
down_revision = "0001"
branch_labels = ("safety",)
depends_on = None


def _text(length: int) -> sqlmodel.sql.sqltypes.AutoString:
    return sqlmodel.sql.sqltypes.AutoString(length=length)


def upgrade() -> None:
    op.create_table(
        "sae_report",
        sa.Column("instance_id", _text(32), nullable=False),
        sa.Column("subject_id", _text(64), nullable=False),
        sa.Column("patient_id", _text(64), nullable=False),
        sa.Column("site", _text(32), nullable=True),
        sa.Column("form_id", _text(64), nullable=False),
        sa.Column("entry_id", _text(32), nullable=False),
        sa.Column("aware_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("aware_by", _text(200), nullable=False),
        sa.Column("serious", sa.Boolean(), nullable=False),
        sa.Column("reported_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.Column("reported_by", _text(200), nullable=True),
        sa.Column("report_reference", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("instance_id"),
    )
    op.create_index("ix_sae_report_site", "sae_report", ["site", "reported_at"])


def downgrade() -> None:
    op.drop_index("ix_sae_report_site", table_name="sae_report")
    op.drop_table("sae_report")
