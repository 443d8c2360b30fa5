"""Schema migrations with Alembic, run from code (`ecrf db upgrade`, and by `ecrf serve` at start)."""

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Engine

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine, revision: str = "heads") -> None:
    """Each domain owns a branch of migrations from the base revision; all heads are applied."""
    command.upgrade(alembic_config(engine), revision)
