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
        connection.execute(text(
            "INSERT INTO search_token (resource_type, resource_id, param, value) VALUES "
            "('Observation', 'o1', 'subject', 'Patient/p1'), ('Observation', 'o1', 'patient', 'Patient/p1'), "
            "('ResearchSubject', 'r1', 'individual', 'Patient/p1'), ('ResearchSubject', 'r1', 'patient', 'Patient/p1'), "
            "('Immunization', 'i1', 'patient', 'Patient/p1')"))

    def tokens() -> set[tuple[str, str, str]]:
        with engine.connect() as connection:
            return set(connection.execute(text("SELECT resource_type, param, value FROM search_token")).all())

    before = tokens()
    upgrade(engine)
    assert tokens() == before - {("Observation", "patient", "Patient/p1"), ("ResearchSubject", "patient", "Patient/p1")}
    command.downgrade(alembic_config(engine), "0012_patient_tokens-1")
    assert tokens() == before
    engine.dispose()
