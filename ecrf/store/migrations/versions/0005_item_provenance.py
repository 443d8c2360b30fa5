"""store: item facts remember the resource version (and door) that set their value

Revision ID: 0005_item_provenance
Revises: 0001
Written by hand; tests/test_migrations.py checks it against ecrf/store/models.py. Existing facts keep
a NULL set_in_version, read as their own version.
"""

from alembic import op
import sqlalchemy as sa


revision = "0005_item_provenance"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("item_fact") as table:
        table.add_column(sa.Column("set_in_version", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("item_fact") as table:
        table.drop_column("set_in_version")
