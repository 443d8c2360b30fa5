"""Service settings, read from ECRF_* environment variables (see the README's configuration table)."""

import os
import secrets
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_FORMS_DIR = Path(__file__).resolve().parent.parent / "forms"
REPO_DEIDENTIFICATION_PROFILE = Path(__file__).resolve().parent / "export" / "profiles" / "safe_harbor.yaml"


def secret_in_file(path: Path) -> bytes:
    """The secret kept in `path`, generated there once (0600, created exclusively so concurrent instances agree)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another instance wrote it first
        else:
            with os.fdopen(descriptor, "w") as handle:
                handle.write(secrets.token_urlsafe(48))
    return path.read_text().strip().encode()


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ECRF_", extra="ignore")

    database_url: str = "sqlite:///./ecrf.db"
    study_dir: Path = REPO_FORMS_DIR

    jwt_secret: str | None = None
    jwt_secret_file: Path | None = None  # None: $XDG_CONFIG_HOME/ecrf/dev-jwt-secret (the same for every checkout)
    jwks_file: Path | None = None
    jwt_algorithms: list[str] = Field(default_factory=list)
    jwt_issuer: str = "ecrf-dev"
    jwt_audience: str = "ecrf"
    jwt_leeway_seconds: int = 30
    jwt_max_bytes: int = 8192
    smart_key_file: Path | None = None  # JWKS of this server's ES256 signing keys; None: generated into a 0600 file
    smart_token_minutes: int = Field(default=5, ge=1, le=60)  # lifetime of access tokens from /auth/token

    max_body_bytes: int = 20 * 1024 * 1024
    max_bundle_entries: int = 10_000
    stream_bundle_bytes: int = Field(default=2 * 1024 * 1024, ge=0)  # larger Bundles are read one entry at a time
    max_json_depth: int = Field(default=64, ge=2, le=1000)  # orjson itself stops at 1024
    max_json_elements: int = 1_000_000  # JSON values in one body (a 10,000-entry lab Bundle has ~260,000)
    rate_limit_per_minute: int = 6000  # per client (bearer token or address); 0 turns it off
    max_query_parameters: int = Field(default=100, ge=1)  # query-string parameters of one request; more: 400
    max_repeated_parameter: int = Field(default=16, ge=1)  # copies of one parameter name; more: 400
    statement_timeout_ms: int = Field(default=15_000, ge=0)  # a search's statements; over it: 503; 0: none
    page_size_default: int = 50
    page_size_max: int = 500

    export_dir: Path | None = None  # None: .ecrf-exports/ next to the SQLite file, else in the working dir
    study_secret: str | None = None  # HMAC key of pseudonyms and date shifts; None: generated into a 0600 file
    export_profile: Path = REPO_DEIDENTIFICATION_PROFILE
    export_worker: bool = True
    export_batch_size: int = 1000
    export_lease_seconds: int = 60
    export_retention_hours: int = 24
    export_batch_pause_seconds: float = 0.0

    web_idle_minutes: int = Field(default=30, ge=1)  # browser sessions end after this long without a request
    web_absolute_hours: int = Field(default=12, ge=1)  # ... and this long after sign-in in any case
    web_reauth_seconds: int = Field(default=300, ge=0)  # signing in the browser needs an authentication this recent
    web_dev_login: bool | None = None  # None: on in dev mode (HS256 dev tokens), off with a JWKS
    oidc_issuer: str | None = None  # the hospital's OpenID Connect provider (browser sign-in)
    oidc_client_id: str | None = None
    oidc_client_secret: str | None = None
    oidc_roles_claim: str = "roles"  # claims of the ID token/userinfo mapped as for API tokens
    oidc_sites_claim: str = "sites"
    # allocation lists' generator key (CRF-SPEC 6), never the study or JWT secret; None: generated into a 0600 file
    randomisation_secret: str | None = None

    report_min_cell: int = Field(default=5, ge=0)  # sponsors' aggregate reports: counts 1..n-1 hidden; 0 or 1: off

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
        """Where a generated dev signing secret is kept: ECRF_JWT_SECRET_FILE, else the user's config dir
        (`$XDG_CONFIG_HOME/ecrf/dev-jwt-secret`, default `~/.config/...`), so that `ecrf token` and
        `ecrf serve` find the same secret whatever the working directory or database."""
        if self.jwt_secret_file is not None:
            return self.jwt_secret_file.expanduser().resolve()
        config_home = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
        return Path(config_home).expanduser().resolve() / "ecrf" / "dev-jwt-secret"

    @property
    def study_secret_file(self) -> Path:
        """Where a generated study secret (pseudonyms, date shifts) is kept, like the dev signing secret."""
        return self._state_dir() / ".ecrf-study-secret"

    @property
    def randomisation_secret_file(self) -> Path:
        """Where a generated randomisation secret is kept, like the study secret."""
        return self._state_dir() / ".ecrf-randomisation-secret"

    @property
    def exports_path(self) -> Path:
        if self.export_dir is not None:
            return self.export_dir.resolve()
        return self._state_dir() / ".ecrf-exports"

    def _state_dir(self) -> Path:
        if self.is_sqlite and "///" in self.database_url:
            db_path = Path(self.database_url.split("///", 1)[1])
            if str(db_path) not in ("", ":memory:"):
                return db_path.resolve().parent
        return Path.cwd()
