"""crf: where an entry came from (form_instance.source): 'form' (the eCRF door) or 'fhir' (a resource an EHR
pushed through /fhir that landed in its log form)

Revision ID: 0034_form_instance_source
Revises: 0020_form_entries
Written by hand; tests/test_migrations.py checks it against ecrf/crf/models.py. Existing instances were all
made by the eCRF door: they get 'form'.
"""

from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = "0034_form_instance_source"
down_revision = "0020_form_entries"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("form_instance", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("source", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False, server_default="form")
        )


def downgrade() -> None:
    with op.batch_alter_table("form_instance", schema=None) as batch_op:
        batch_op.drop_column("source")
