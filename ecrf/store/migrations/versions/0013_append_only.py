"""store, audit: resource versions, the audit trail and the access log refuse UPDATE and DELETE

Revision ID: 0013_append_only
Revises: 0006_access_log (the three tables exist from there on)
Written by hand. The hash chain shows that a row was changed or removed; these triggers make the database
itself refuse it, so a bug or a stray statement cannot, and a change needs the table owner to drop or disable
a trigger first (which `ecrf audit verify` would still catch). A later migration that must rewrite rows of
these tables disables the triggers for its own transaction.
"""

from alembic import op

revision = "0013_append_only"
down_revision = "0006_access_log"
branch_labels = None
depends_on = None

TABLES = ("resource_version", "audit_entry", "access_event")
MESSAGE = "is append-only: its rows are never changed or removed"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"""
            CREATE FUNCTION ecrf_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION '% {MESSAGE}', TG_TABLE_NAME USING ERRCODE = 'restrict_violation';
            END $$""")
        for table in TABLES:
            op.execute(
                f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION ecrf_append_only()"
            )
            op.execute(
                f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
                "FOR EACH STATEMENT EXECUTE FUNCTION ecrf_append_only()"
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
        op.execute("DROP FUNCTION ecrf_append_only()")
        return
    for table in TABLES:
        for event in ("update", "delete"):
            op.execute(f"DROP TRIGGER {table}_no_{event}")
