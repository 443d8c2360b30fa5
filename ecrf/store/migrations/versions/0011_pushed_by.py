"""store: which ehr client pushed which resource (pushed_by), what an ehr-only client may read back

Revision ID: 0011_pushed_by
Revises: 0001
Written by hand; tests/test_migrations.py checks it against ecrf/store/models.py. Resources that ehr-only
clients already wrote are taken from the versions they authored (a Patient an ehr only matched by its
MRN, without a new version, is not known from them: that client pushes it again to see it).
"""

from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = "0011_pushed_by"
down_revision = "0001"
branch_labels = None
depends_on = None


def _text(length: int) -> sqlmodel.sql.sqltypes.AutoString:
    return sqlmodel.sql.sqltypes.AutoString(length=length)


def upgrade() -> None:
    op.create_table(
        "pushed_by",
        sa.Column("resource_type", _text(64), nullable=False),
        sa.Column("resource_id", _text(64), nullable=False),
        sa.Column("sub", _text(200), nullable=False),
        sa.PrimaryKeyConstraint("resource_type", "resource_id", "sub"),
    )
    op.execute(
        "INSERT INTO pushed_by (resource_type, resource_id, sub) "
        "SELECT DISTINCT resource_type, resource_id, author_sub FROM resource_version "
        "WHERE author_role = 'ehr'"
    )


def downgrade() -> None:
    op.drop_table("pushed_by")
