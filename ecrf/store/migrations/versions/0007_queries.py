"""queries: data clarification queries and their append-only message threads

Revision ID: 0007_queries
Revises: 0001
Written by hand; tests/test_migrations.py checks it against ecrf/queries/models.py.
"""

from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = "0007_queries"
down_revision = "0001"
branch_labels = ("queries",)
depends_on = None


def _text(length: int) -> sqlmodel.sql.sqltypes.AutoString:
    return sqlmodel.sql.sqltypes.AutoString(length=length)


def upgrade() -> None:
    moment = sqlmodel.sql.sqltypes.UTCDateTime
    op.create_table(
        "data_query",
        sa.Column("id", _text(32), nullable=False),
        sa.Column("subject_id", _text(64), nullable=False),
        sa.Column("patient_id", _text(64), nullable=False),
        sa.Column("site", _text(32), nullable=True),
        sa.Column("form_id", _text(64), nullable=True),
        sa.Column("visit_id", _text(64), nullable=True),
        sa.Column("item_id", _text(64), nullable=True),
        sa.Column("status", _text(16), nullable=False),
        sa.Column("raised_at", moment(), nullable=False),
        sa.Column("raised_by", _text(200), nullable=False),
        sa.Column("raised_role", _text(32), nullable=False),
        sa.Column("updated_at", moment(), nullable=False),
        sa.Column("messages", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("data_query", schema=None) as batch_op:
        batch_op.create_index("ix_data_query_subject", ["subject_id", "form_id", "visit_id"], unique=False)
        batch_op.create_index("ix_data_query_site_status", ["site", "status", "raised_at"], unique=False)
    op.create_table(
        "data_query_message",
        sa.Column("pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("query_id", _text(32), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("action", _text(16), nullable=False),
        sa.Column("status", _text(16), nullable=False),
        sa.Column("at", moment(), nullable=False),
        sa.Column("author_sub", _text(200), nullable=False),
        sa.Column("author_role", _text(32), nullable=False),
        sa.Column("text", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["query_id"], ["data_query.id"]),
        sa.PrimaryKeyConstraint("pk"),
        sa.UniqueConstraint("query_id", "seq", name="uq_data_query_message"),
    )


def downgrade() -> None:
    op.drop_table("data_query_message")
    with op.batch_alter_table("data_query", schema=None) as batch_op:
        batch_op.drop_index("ix_data_query_site_status")
        batch_op.drop_index("ix_data_query_subject")
    op.drop_table("data_query")
