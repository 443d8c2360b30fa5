"""Service settings, read from ECRF_* environment variables (see the README's configuration table)."""
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_FORMS_DIR = Path(__file__).resolve().parent.parent / "forms"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ECRF_", extra="ignore")

    database_url: str = "sqlite:///./ecrf.db"
    study_dir: Path = REPO_FORMS_DIR

    jwt_secret: str | None = None
    jwks_file: Path | None = None
    jwt_algorithms: list[str] = Field(default_factory=list)
    jwt_issuer: str = "ecrf-dev"
    jwt_audience: str = "ecrf"
    jwt_leeway_seconds: int = 30
    jwt_max_bytes: int = 8192

    max_body_bytes: int = 20 * 1024 * 1024
    max_bundle_entries: int = 10_000
    rate_limit_per_minute: int = 6000  # per client (bearer token or address); 0 turns it off
    page_size_default: int = 50
    page_size_max: int = 500

    @field_validator("jwt_algorithms", mode="before")
    @classmethod
    def _split_algorithms(cls, value):
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @property
    def algorithms(self) -> list[str]:
        """Algorithms accepted for bearer tokens; HS and RS/ES families are never mixed."""
        if self.jwt_algorithms:
            return self.jwt_algorithms
        return ["RS256", "ES256"] if self.jwks_file else ["HS256"]

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def secret_file(self) -> Path:
        """Where a generated dev signing secret is kept: next to the SQLite file, else the working dir."""
        if self.is_sqlite and "///" in self.database_url:
            db_path = Path(self.database_url.split("///", 1)[1])
            if str(db_path) not in ("", ":memory:"):
                return db_path.resolve().parent / ".ecrf-jwt-secret"
        return Path.cwd() / ".ecrf-jwt-secret"
