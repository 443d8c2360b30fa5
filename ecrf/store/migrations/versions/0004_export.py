"""exports: asynchronous Bulk Data export jobs

Revision ID: 0004_export
Revises: 0001
Written by hand; tests/test_migrations.py checks it against ecrf/export/models.py.
"""

from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = "0004_export"
down_revision = "0001"
branch_labels = ("export",)
depends_on = None


def _text(length: int) -> sqlmodel.sql.sqltypes.AutoString:
    return sqlmodel.sql.sqltypes.AutoString(length=length)


def upgrade() -> None:
    moment = sqlmodel.sql.sqltypes.UTCDateTime
    op.create_table(
        "export_job",
        sa.Column("id", _text(32), nullable=False),
        sa.Column("status", _text(16), nullable=False),
        sa.Column("owner_sub", _text(200), nullable=False),
        sa.Column("owner_role", _text(64), nullable=False),
        sa.Column("owner_sites", _text(500), nullable=True),
        sa.Column("deidentified", sa.Boolean(), nullable=False),
        sa.Column("profile", _text(64), nullable=True),
        sa.Column("request_url", sa.Text(), nullable=False),
        sa.Column("group_id", _text(64), nullable=True),
        sa.Column("types", sa.Text(), nullable=False),
        sa.Column("since", moment(), nullable=True),
        sa.Column("transaction_time", moment(), nullable=False),
        sa.Column("directory", sa.Text(), nullable=False),
        sa.Column("created_at", moment(), nullable=False),
        sa.Column("started_at", moment(), nullable=True),
        sa.Column("finished_at", moment(), nullable=True),
        sa.Column("lease_owner", _text(64), nullable=True),
        sa.Column("lease_until", moment(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("cursor", sa.Text(), nullable=True),
        sa.Column("exported", sa.Integer(), nullable=False),
        sa.Column("output", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("export_job", schema=None) as batch_op:
        batch_op.create_index("ix_export_job_claim", ["status", "lease_until"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("export_job", schema=None) as batch_op:
        batch_op.drop_index("ix_export_job_claim")
    op.drop_table("export_job")
