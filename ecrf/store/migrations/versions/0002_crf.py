"""eCRF door: form instances (workflow state only; clinical values stay in the store)

Revision ID: 0002_crf
Revises: 0001
Written by hand; tests/test_migrations.py checks it against ecrf/crf/models.py.
"""

from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = "0002_crf"
down_revision = "0001"
branch_labels = ("crf",)
depends_on = None


def _text(length: int) -> sqlmodel.sql.sqltypes.AutoString:
    return sqlmodel.sql.sqltypes.AutoString(length=length)


def upgrade() -> None:
    op.create_table(
        "form_instance",
        sa.Column("id", _text(32), nullable=False),
        sa.Column("subject_id", _text(64), nullable=False),
        sa.Column("patient_id", _text(64), nullable=False),
        sa.Column("site", _text(32), nullable=True),
        sa.Column("form_id", _text(64), nullable=False),
        sa.Column("visit_id", _text(64), nullable=False),
        sa.Column("status", _text(16), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("visit_date", sa.Date(), nullable=False),
        sa.Column("deviation", sa.Text(), nullable=True),
        sa.Column("resources", sa.Text(), nullable=False),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("created_by", _text(200), nullable=False),
        sa.Column("updated_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("updated_by", _text(200), nullable=False),
        sa.Column("updated_role", _text(32), nullable=False),
        sa.Column("verified_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.Column("verified_by", _text(200), nullable=True),
        sa.Column("signed_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.Column("signed_by", _text(200), nullable=True),
        sa.Column("signature_meaning", sa.Text(), nullable=True),
        sa.Column("signature_hash", _text(64), nullable=True),
        sa.Column("locked_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.Column("locked_by", _text(200), nullable=True),
        sa.Column("eligibility_basis", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("subject_id", "form_id", "visit_id", name="uq_form_instance"),
    )
    with op.batch_alter_table("form_instance", schema=None) as batch_op:
        batch_op.create_index("ix_form_instance_patient", ["patient_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("form_instance", schema=None) as batch_op:
        batch_op.drop_index("ix_form_instance_patient")
    op.drop_table("form_instance")
