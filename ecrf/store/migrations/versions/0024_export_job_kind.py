"""export jobs of several kinds: FHIR Bulk Data (bulk), CDISC ODM (odm) and SDTM (sdtm), with their parameters

Revision ID: 0024_export_job_kind
Revises: 0004_export
Written by hand; tests/test_migrations.py checks it against ecrf/export/models.py.
"""

from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = "0024_export_job_kind"
down_revision = "0004_export"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("export_job", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("kind", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False, server_default="bulk")
        )
        batch_op.add_column(sa.Column("params", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("export_job", schema=None) as batch_op:
        batch_op.drop_column("params")
        batch_op.drop_column("kind")
