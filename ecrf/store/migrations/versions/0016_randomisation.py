"""randomisation: allocation lists per stratum, their slots, allocations and counters

Revision ID: 0016_randomisation
Revises: 0001
Written by hand; tests/test_migrations.py checks it against ecrf/randomisation/models.py.
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0016_randomisation"
down_revision = "0001"
branch_labels = ("randomisation",)
depends_on = None


def _text(length: int) -> sqlmodel.sql.sqltypes.AutoString:
    return sqlmodel.sql.sqltypes.AutoString(length=length)


def upgrade() -> None:
    moment = sqlmodel.sql.sqltypes.UTCDateTime
    op.create_table(
        "randomisation_list",
        sa.Column("study_id", _text(64), nullable=False),
        sa.Column("stratum", _text(128), nullable=False),
        sa.Column("slots", sa.Integer(), nullable=False),
        sa.Column("checksum", _text(64), nullable=False),
        sa.Column("scheme_fingerprint", _text(64), nullable=False),
        sa.Column("generated_at", moment(), nullable=False),
        sa.Column("generated_by", _text(200), nullable=False),
        sa.PrimaryKeyConstraint("study_id", "stratum"),
    )
    op.create_table(
        "randomisation_slot",
        sa.Column("study_id", _text(64), nullable=False),
        sa.Column("stratum", _text(128), nullable=False),
        sa.Column("sequence", sa.Integer(), nullable=False),
        sa.Column("block", sa.Integer(), nullable=False),
        sa.Column("block_size", sa.Integer(), nullable=False),
        sa.Column("arm", _text(64), nullable=False),
        sa.PrimaryKeyConstraint("study_id", "stratum", "sequence"),
    )
    op.create_table(
        "randomisation_allocation",
        sa.Column("study_id", _text(64), nullable=False),
        sa.Column("stratum", _text(128), nullable=False),
        sa.Column("sequence", sa.Integer(), nullable=False),
        sa.Column("subject_id", _text(64), nullable=False),
        sa.Column("patient_id", _text(64), nullable=False),
        sa.Column("site", _text(32), nullable=True),
        sa.Column("number", _text(64), nullable=False),
        sa.Column("arm", _text(64), nullable=False),
        sa.Column("randomisation_date", sa.Date(), nullable=False),
        sa.Column("allocated_at", moment(), nullable=False),
        sa.Column("allocated_by", _text(200), nullable=False),
        sa.Column("allocated_role", _text(64), nullable=False),
        sa.PrimaryKeyConstraint("study_id", "stratum", "sequence"),
        sa.UniqueConstraint("study_id", "subject_id", name="uq_randomisation_allocation_subject"),
        sa.UniqueConstraint("study_id", "number", name="uq_randomisation_allocation_number"),
    )
    with op.batch_alter_table("randomisation_allocation", schema=None) as batch_op:
        batch_op.create_index("ix_randomisation_allocation_site", ["site"], unique=False)
    op.create_table(
        "randomisation_counter",
        sa.Column("study_id", _text(64), nullable=False),
        sa.Column("name", _text(160), nullable=False),
        sa.Column("value", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("study_id", "name"),
    )


def downgrade() -> None:
    op.drop_table("randomisation_counter")
    with op.batch_alter_table("randomisation_allocation", schema=None) as batch_op:
        batch_op.drop_index("ix_randomisation_allocation_site")
    op.drop_table("randomisation_allocation")
    op.drop_table("randomisation_slot")
    op.drop_table("randomisation_list")
