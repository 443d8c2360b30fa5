"""The Alembic migrations build exactly the schema the models describe."""

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel

import ecrf.models  # noqa: F401


def test_migrated_schema_matches_the_models(server):
    with server.runtime.engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), SQLModel.metadata)
    assert differences == []


def test_patient_tokens_that_repeat_the_subject_go_and_come_back_on_downgrade(tmp_path):
    from alembic import command
    from sqlalchemy import create_engine, text

    from ecrf.store.migrate import alembic_config, upgrade

    engine = create_engine(f"sqlite:///{tmp_path / 'tokens.db'}")
    upgrade(engine, "0011_pushed_by")
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO search_token (resource_type, resource_id, param, value) VALUES "
                "('Observation', 'o1', 'subject', 'Patient/p1'), ('Observation', 'o1', 'patient', 'Patient/p1'), "
                "('ResearchSubject', 'r1', 'individual', 'Patient/p1'), ('ResearchSubject', 'r1', 'patient', 'Patient/p1'), "
                "('Immunization', 'i1', 'patient', 'Patient/p1')"
            )
        )

    def tokens() -> set[tuple[str, str, str]]:
        with engine.connect() as connection:
            return set(connection.execute(text("SELECT resource_type, param, value FROM search_token")).all())

    before = tokens()
    upgrade(engine)
    assert tokens() == before - {("Observation", "patient", "Patient/p1"), ("ResearchSubject", "patient", "Patient/p1")}
    command.downgrade(alembic_config(engine), "0012_patient_tokens-1")
    assert tokens() == before
    engine.dispose()


def test_append_only_triggers_come_and_go_with_their_migration(tmp_path):
    import pytest
    from alembic import command
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import DBAPIError

    from ecrf.store.migrate import alembic_config, upgrade

    engine = create_engine(f"sqlite:///{tmp_path / 'append.db'}")
    upgrade(engine)
    insert = (
        "INSERT INTO access_event (at, request_id, actor_sub, actor_role, patient_id, route, interaction, kind) "
        "VALUES ('2026-11-26 10:00:00', 'r', 's', 'monitor', 'p', '/fhir/Patient/{id}', 'read', 'patient')"
    )
    with engine.begin() as connection:
        connection.execute(text(insert))
    with pytest.raises(DBAPIError, match="append-only"), engine.begin() as connection:
        connection.execute(text("DELETE FROM access_event"))
    command.downgrade(alembic_config(engine), "0013_append_only-1")
    with engine.begin() as connection:
        assert connection.execute(text("DELETE FROM access_event")).rowcount == 1
    engine.dispose()
