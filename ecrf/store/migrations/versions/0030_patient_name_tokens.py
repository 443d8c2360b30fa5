"""store: Patient `name`, `family` and `given` search tokens for the Patients already stored (as sent in `code`, folded in `value`)

Revision ID: 0030_patient_name_tokens
Revises: 0012_patient_tokens
Written by hand. New versions get these tokens from ecrf.store.indexing (string parameters of R4 Patient);
this fills them in for the current versions written before, from their stored content. No schema change.
"""

import json
import unicodedata

import sqlalchemy as sa
from alembic import op

revision = "0030_patient_name_tokens"
down_revision = "0012_patient_tokens"
branch_labels = None
depends_on = None

# as ecrf.store.indexing.SEARCH_PARAMS["Patient"] for the string parameters, at the time of writing
NAME_PARTS = {"name": ("family", "given", "text", "prefix", "suffix"), "family": ("family",), "given": ("given",)}
BATCH = 1000


def _folded(text: str) -> str:  # as ecrf.store.indexing.folded
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c)).casefold()


def _parts(name: dict, part: str) -> list[str]:
    value = name.get(part)
    values = value if isinstance(value, list) else [value]
    return [item[:255] for item in values if isinstance(item, str)]


def upgrade() -> None:
    bind = op.get_bind()
    tokens = sa.table(
        "search_token",
        sa.column("resource_type"),
        sa.column("resource_id"),
        sa.column("param"),
        sa.column("code"),
        sa.column("value"),
    )
    rows = bind.execute(
        sa.text(
            "SELECT h.resource_id, v.content FROM resource_head h JOIN resource_version v ON v.pk = h.version_pk "
            "WHERE h.resource_type = 'Patient' AND h.deleted = :deleted"
        ),
        {"deleted": False},
    )
    pending = []
    for resource_id, content in rows:
        names = json.loads(content).get("name") or []
        for name in (n for n in names if isinstance(n, dict)):
            for param, parts in NAME_PARTS.items():
                for part in parts:
                    pending += [
                        {
                            "resource_type": "Patient",
                            "resource_id": resource_id,
                            "param": param,
                            "code": code,
                            "value": _folded(code)[:255],
                        }
                        for code in _parts(name, part)
                    ]
        if len(pending) >= BATCH:
            bind.execute(tokens.insert(), pending)
            pending = []
    if pending:
        bind.execute(tokens.insert(), pending)


def downgrade() -> None:
    op.execute("DELETE FROM search_token WHERE resource_type = 'Patient' AND param IN ('name', 'family', 'given')")
