"""store: the text of a coded search token (search_token.text), for the `:text` modifier of token parameters

Revision ID: 0031_search_token_text
Revises: 0030_patient_name_tokens
Written by hand; tests/test_migrations.py checks it against ecrf/store/models.py. New versions get the folded
display (or CodeableConcept.text) of each coding from ecrf.store.indexing; versions written before have none
until they are written again. No index: a `:text` search narrows by resource type and parameter first.
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0031_search_token_text"
down_revision = "0030_patient_name_tokens"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("search_token", schema=None) as batch_op:
        batch_op.add_column(sa.Column("text", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("search_token", schema=None) as batch_op:
        batch_op.drop_column("text")
