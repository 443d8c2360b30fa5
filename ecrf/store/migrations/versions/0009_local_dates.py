"""store: item facts keep the calendar date their effective time was sent with

Revision ID: 0009_local_dates
Revises: 0001
Written by hand; tests/test_migrations.py checks it against ecrf/store/models.py.

`effective` stays the exact instant in UTC (for ordering); `effective_date` is the date as sent
(2026-11-12T07:00+08:00 is 2026-11-12, not the UTC 2026-11-11), used for windows, visits and intervals.
Existing facts are filled from the stored resource version they were indexed from (the first date element
that the indexer reads for that resource type), else from the UTC date of `effective`.
"""

from datetime import UTC, date, datetime

import orjson
import sqlalchemy as sa
from alembic import op

revision = "0009_local_dates"
down_revision = "0001"
branch_labels = None
depends_on = None

BATCH = 1000
# Where a resource's effective time is, in the order the indexer (fhir_mappings.from_fhir) looks.
DATE_PATHS = {
    "Observation": (("effectiveDateTime",), ("effectivePeriod", "start"), ("effectiveInstant",)),
    "Procedure": (("performedDateTime",), ("performedPeriod", "start")),
    "Condition": (("onsetDateTime",), ("onsetPeriod", "start"), ("recordedDate",)),
    "Immunization": (("occurrenceDateTime",),),
}


def upgrade() -> None:
    with op.batch_alter_table("item_fact") as table:
        table.add_column(sa.Column("effective_date", sa.Date(), nullable=True))
    _fill(op.get_bind())


def downgrade() -> None:
    with op.batch_alter_table("item_fact") as table:
        table.drop_column("effective_date")


def _fill(bind) -> None:
    facts = sa.table(
        "item_fact",
        sa.column("pk", sa.BigInteger),
        sa.column("resource_type", sa.String),
        sa.column("resource_id", sa.String),
        sa.column("version_id", sa.Integer),
        sa.column("effective", sa.String),
        sa.column("effective_date", sa.Date),
    )
    versions = sa.table(
        "resource_version",
        sa.column("resource_type", sa.String),
        sa.column("resource_id", sa.String),
        sa.column("version_id", sa.Integer),
        sa.column("content", sa.Text),
    )
    update = facts.update().where(facts.c.pk == sa.bindparam("fact_pk")).values(effective_date=sa.bindparam("day"))
    after = 0
    while True:
        rows = bind.execute(
            sa.select(facts.c.pk, facts.c.resource_type, facts.c.effective, versions.c.content)
            .select_from(
                facts.outerjoin(
                    versions,
                    (versions.c.resource_type == facts.c.resource_type)
                    & (versions.c.resource_id == facts.c.resource_id)
                    & (versions.c.version_id == facts.c.version_id),
                )
            )
            .where(facts.c.effective.is_not(None), facts.c.pk > after)
            .order_by(facts.c.pk)
            .limit(BATCH)
        ).all()
        if not rows:
            return
        after = rows[-1].pk
        changes = [
            {"fact_pk": row.pk, "day": _sent_date(row.resource_type, row.content) or _utc_date(row.effective)}
            for row in rows
        ]
        changes = [change for change in changes if change["day"] is not None]
        if changes:
            bind.execute(update, changes)


def _sent_date(resource_type: str, content: str | None) -> date | None:
    if not content:
        return None
    resource = orjson.loads(content)
    for path in DATE_PATHS.get(resource_type, ()):
        node = resource
        for name in path:
            node = node.get(name) if isinstance(node, dict) else None
        if isinstance(node, str) and len(node) >= 10:
            try:
                return date.fromisoformat(node[:10])
            except ValueError:
                return None
    return None


def _utc_date(moment) -> date | None:
    if isinstance(moment, datetime):  # PostgreSQL
        return (moment.astimezone(UTC) if moment.tzinfo else moment).date()
    if isinstance(moment, str) and len(moment) >= 10:  # SQLite: stored as UTC text
        return date.fromisoformat(moment[:10])
    return None
