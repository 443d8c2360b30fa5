"""crf: entries of log forms and repeating forms (form_instance.entry_id, withdrawal as entered in error)

Revision ID: 0020_form_entries
Revises: 0010_form_resource
Written by hand; tests/test_migrations.py checks it against ecrf/crf/models.py. A visit's own form keeps
entry_id '' (so existing instances are unchanged); an entry of a log or repeating form has its own id, and
the unique key becomes (subject, form, visit, entry).
"""

from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = "0020_form_entries"
down_revision = "0010_form_resource"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("form_instance", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("entry_id", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False, server_default="")
        )
        batch_op.add_column(sa.Column("withdrawn_reason", sa.Text(), nullable=True))
        batch_op.drop_constraint("uq_form_instance", type_="unique")
        batch_op.create_unique_constraint("uq_form_instance", ["subject_id", "form_id", "visit_id", "entry_id"])


def downgrade() -> None:
    op.execute("DELETE FROM form_instance WHERE entry_id <> ''")
    with op.batch_alter_table("form_instance", schema=None) as batch_op:
        batch_op.drop_constraint("uq_form_instance", type_="unique")
        batch_op.create_unique_constraint("uq_form_instance", ["subject_id", "form_id", "visit_id"])
        batch_op.drop_column("withdrawn_reason")
        batch_op.drop_column("entry_id")
