"""Response bodies of the admin API."""

from pydantic import BaseModel, Field


class StudyView(BaseModel):
    id: str
    dir: str


class DatabaseView(BaseModel):
    backend: str = Field(description="sqlite or postgresql")
    driver: str
    host: str | None
    port: int | None
    database: str | None = Field(description="database name, or the SQLite file")


class TokensView(BaseModel):
    algorithms: list[str]
    issuer: str
    audience: str
    leeway_seconds: int
    max_bytes: int
    jwks_file: str | None
    signing_secret: str | None = Field(description="where the HS secret comes from, never its value; null with a JWKS")
    smart_key_file: str = Field(description="the file of the key that signs SMART access tokens (never the key)")
    smart_token_minutes: int = Field(description="lifetime of an access token of POST /auth/token")


class LimitsView(BaseModel):
    max_body_bytes: int
    max_bundle_entries: int
    stream_bundle_bytes: int = Field(description="POST /fhir Bundles larger than this are read one entry at a time")
    max_json_depth: int
    max_json_elements: int
    rate_limit_per_minute: int
    max_query_parameters: int = Field(description="query parameters per request; more: 400")
    max_repeated_parameter: int = Field(description="copies of one query parameter; more: 400")
    statement_timeout_ms: int = Field(description="a FHIR search's statements stop after this long (503)")


class PagingView(BaseModel):
    page_size_default: int
    page_size_max: int


class ExportsView(BaseModel):
    dir: str
    profile: str
    worker: bool
    batch_size: int
    lease_seconds: int
    retention_hours: int
    batch_pause_seconds: float
    study_secret: str | None = Field(description="where the pseudonym key comes from, never its value")


class ReportsView(BaseModel):
    min_cell: int


class WebView(BaseModel):
    idle_minutes: int
    absolute_hours: int
    reauth_seconds: int
    dev_login: bool = Field(description="the web dev sign-in is offered")
    oidc_issuer: str | None
    oidc_client_id: str | None
    oidc_client_secret: str | None = Field(description="where the client secret comes from, never its value")
    oidc_roles_claim: str
    oidc_sites_claim: str


class RandomisationView(BaseModel):
    scheme: str | None = Field(description="the study's randomisation scheme file, null: the system does not allocate")
    secret: str | None = Field(description="where the allocation lists' key comes from, never its value")


class EffectiveSettings(BaseModel):
    study: StudyView
    database: DatabaseView
    tokens: TokensView
    limits: LimitsView
    paging: PagingView
    exports: ExportsView
    reports: ReportsView
    web: WebView
    randomisation: RandomisationView


class ChainCheck(BaseModel):
    ok: bool
    entries: int = Field(description="audit entries walked")
    first_bad_seq: int | None = Field(description="the first altered, missing or unlinked entry")
    message: str
