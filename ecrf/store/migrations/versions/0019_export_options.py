"""export options: _typeFilter, _elements, patient and lenient-handling warnings of a Bulk Data job

Revision ID: 0019_export_options
Revises: 0004_export
"""

from alembic import op
import sqlalchemy as sa


revision = "0019_export_options"
down_revision = "0004_export"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("export_job", schema=None) as batch_op:
        batch_op.add_column(sa.Column("options", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("export_job", schema=None) as batch_op:
        batch_op.drop_column("options")
