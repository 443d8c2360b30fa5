"""randomisation: lists, slots and allocations refuse UPDATE and DELETE

Revision ID: 0017_randomisation_append_only
Revises: 0016_randomisation
Written by hand, as 0013_append_only (whose PostgreSQL function it reuses when it exists). No undo of an
allocation (CRF-SPEC 6), and a generated list is never silently regenerated: the database itself refuses
it, short of the table owner dropping a trigger (which `ecrf randomisation verify` would still catch).
"""

from alembic import op

revision = "0017_randomisation_append_only"
down_revision = "0016_randomisation"
branch_labels = None
depends_on = None

TABLES = ("randomisation_list", "randomisation_slot", "randomisation_allocation")
MESSAGE = "is append-only: its rows are never changed or removed"
FUNCTION = "ecrf_randomisation_append_only"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"""
            CREATE FUNCTION {FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION '% {MESSAGE}', TG_TABLE_NAME USING ERRCODE = 'restrict_violation';
            END $$""")
        for table in TABLES:
            op.execute(
                f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
                f"FOR EACH ROW EXECUTE FUNCTION {FUNCTION}()"
            )
            op.execute(
                f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
                f"FOR EACH STATEMENT EXECUTE FUNCTION {FUNCTION}()"
            )
        return
    for table in TABLES:
        for event in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER {table}_no_{event.lower()} BEFORE {event} ON {table} "
                f"BEGIN SELECT RAISE(ABORT, '{table} {MESSAGE}'); END"
            )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in TABLES:
            op.execute(f"DROP TRIGGER {table}_append_only ON {table}")
            op.execute(f"DROP TRIGGER {table}_no_truncate ON {table}")
        op.execute(f"DROP FUNCTION {FUNCTION}()")
        return
    for table in TABLES:
        for event in ("update", "delete"):
            op.execute(f"DROP TRIGGER {table}_no_{event}")
