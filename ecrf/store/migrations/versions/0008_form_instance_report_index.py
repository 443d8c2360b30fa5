"""crf: covering index of form instances by site, form, visit and status, for the enrolment report

Revision ID: 0008_form_instance_report_index
Revises: 0002_crf
Written by hand; tests/test_migrations.py checks it against ecrf/crf/models.py. The report's
GROUP BY site, form, visit, status reads this index alone (in order on SQLite), and a site-scoped
caller's report reads only its sites' part of it.
"""

from alembic import op


revision = "0008_form_instance_report_index"
down_revision = "0002_crf"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_form_instance_report", "form_instance", ["site", "form_id", "visit_id", "status"])


def downgrade() -> None:
    op.drop_index("ix_form_instance_report", table_name="form_instance")
