"""store: `patient` search tokens that repeat the subject's are no longer stored; the value index holds references only

Revision ID: 0012_patient_tokens
Revises: 0011_pushed_by
Written by hand; tests/test_migrations.py checks it against ecrf/store/models.py.

Where `patient` reads the element another parameter already indexes (subject, or a ResearchSubject's
individual), searches answer it from that parameter's tokens, Patient references only
(ecrf.store.indexing.SEARCHED_THROUGH); the duplicate rows go. Immunization keeps its own `patient` tokens.
ix_search_token_value becomes partial (value IS NOT NULL): only reference tokens have a value, and only
reference searches use that index.
"""

import sqlalchemy as sa
from alembic import op

revision = "0012_patient_tokens"
down_revision = "0011_pushed_by"
branch_labels = None
depends_on = None

# resource type -> the parameter whose tokens `patient` repeated (as ecrf.store.indexing.SEARCHED_THROUGH)
SEARCHED_THROUGH = {
    "ResearchSubject": "individual",
    "Observation": "subject",
    "Condition": "subject",
    "Procedure": "subject",
    "MedicationStatement": "subject",
    "Specimen": "subject",
}


VALUE_INDEX = ("ix_search_token_value", "search_token", ["resource_type", "param", "value"])


def upgrade() -> None:
    types = ", ".join(f"'{resource_type}'" for resource_type in SEARCHED_THROUGH)
    op.execute(f"DELETE FROM search_token WHERE param = 'patient' AND resource_type IN ({types})")
    op.drop_index("ix_search_token_value", table_name="search_token")
    references = sa.text("value IS NOT NULL")
    op.create_index(*VALUE_INDEX, sqlite_where=references, postgresql_where=references)


def downgrade() -> None:
    op.drop_index("ix_search_token_value", table_name="search_token")
    op.create_index(*VALUE_INDEX)
    for resource_type, param in SEARCHED_THROUGH.items():
        op.execute(
            "INSERT INTO search_token (resource_type, resource_id, param, system, code, value, number, moment) "
            "SELECT resource_type, resource_id, 'patient', system, code, value, number, moment "
            f"FROM search_token WHERE resource_type = '{resource_type}' AND param = '{param}'"
        )
