"""crf: which form instance owns each resource its saves wrote (form_instance.resources, indexed by resource)

Revision ID: 0010_form_resource
Revises: 0002_crf
Written by hand; tests/test_migrations.py checks it against ecrf/crf/models.py. Existing form instances
are indexed from their `resources` JSON.
"""

import json

from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = "0010_form_resource"
down_revision = "0002_crf"
branch_labels = None
depends_on = None


def _text(length: int) -> sqlmodel.sql.sqltypes.AutoString:
    return sqlmodel.sql.sqltypes.AutoString(length=length)


def upgrade() -> None:
    table = op.create_table(
        "form_resource",
        sa.Column("resource_type", _text(64), nullable=False),
        sa.Column("resource_id", _text(64), nullable=False),
        sa.Column("instance_id", _text(32), nullable=False),
        sa.PrimaryKeyConstraint("resource_type", "resource_id"),
    )
    with op.batch_alter_table("form_resource", schema=None) as batch_op:
        batch_op.create_index("ix_form_resource_instance", ["instance_id"], unique=False)
    instances = op.get_bind().execute(sa.text("SELECT id, resources FROM form_instance")).all()
    rows = [
        {"resource_type": reference.split("/", 1)[0], "resource_id": reference.split("/", 1)[1], "instance_id": id_}
        for id_, resources in instances
        for reference in json.loads(resources or "{}").values()
    ]
    if rows:
        op.bulk_insert(table, rows)


def downgrade() -> None:
    with op.batch_alter_table("form_resource", schema=None) as batch_op:
        batch_op.drop_index("ix_form_resource_instance")
    op.drop_table("form_resource")
