"""What an admin may see of the running service: its non-secret settings, and the audit chain's health."""

from pathlib import Path
from typing import Any

from sqlalchemy import func
from sqlalchemy.engine import make_url
from sqlmodel import Session, select

from ecrf.audit.models import AuditEntry
from ecrf.audit.service import verify
from ecrf.services import Services as Runtime  # the protocol; ecrf.runtime has the one running
from ecrf.smart import keys as smart_keys

# Every setting is either shown (allow-list) or withheld; tests/test_admin.py fails on one that is neither,
# so a new setting is classified deliberately instead of leaking by default.
SHOWN = frozenset(
    {
        "study_dir",
        "jwks_file",
        "jwt_secret_file",
        "jwt_algorithms",
        "jwt_issuer",
        "jwt_audience",
        "jwt_leeway_seconds",
        "jwt_max_bytes",
        "max_body_bytes",
        "max_bundle_entries",
        "stream_bundle_bytes",
        "max_json_depth",
        "max_json_elements",
        "rate_limit_per_minute",
        "page_size_default",
        "page_size_max",
        "export_dir",
        "export_profile",
        "export_worker",
        "export_batch_size",
        "export_lease_seconds",
        "export_retention_hours",
        "export_batch_pause_seconds",
        "report_min_cell",
        "web_idle_minutes",
        "web_absolute_hours",
        "web_reauth_seconds",
        "web_dev_login",
        "oidc_issuer",
        "oidc_client_id",
        "oidc_roles_claim",
        "oidc_sites_claim",
        "max_query_parameters",
        "max_repeated_parameter",
        "statement_timeout_ms",
        "smart_key_file",
        "smart_token_minutes",
    }
)
WITHHELD = frozenset(
    {
        "jwt_secret",  # only where it comes from
        "study_secret",  # only where it comes from
        "randomisation_secret",  # only where it comes from
        "database_url",  # shown as backend, host, port and database, never user, password or query
        "oidc_client_secret",  # only whether one is set
    }
)


def effective_settings(runtime: Runtime) -> dict[str, Any]:
    settings = runtime.settings
    return {
        "study": {"id": runtime.study.id, "dir": str(settings.study_dir)},
        "database": database_view(settings.database_url),
        "tokens": {
            "algorithms": list(runtime.verifier.algorithms),
            "issuer": settings.jwt_issuer,
            "audience": settings.jwt_audience,
            "leeway_seconds": settings.jwt_leeway_seconds,
            "max_bytes": settings.jwt_max_bytes,
            "jwks_file": str(settings.jwks_file) if settings.jwks_file else None,
            "signing_secret": _secret_source(
                runtime.verifier.uses_hmac, settings.jwt_secret, "ECRF_JWT_SECRET", settings.secret_file
            ),
            "smart_key_file": str(smart_keys.key_file(settings)),
            "smart_token_minutes": settings.smart_token_minutes,
        },
        "limits": {
            "max_body_bytes": settings.max_body_bytes,
            "max_bundle_entries": settings.max_bundle_entries,
            "stream_bundle_bytes": settings.stream_bundle_bytes,
            "max_json_depth": settings.max_json_depth,
            "max_json_elements": settings.max_json_elements,
            "rate_limit_per_minute": settings.rate_limit_per_minute,
            "max_query_parameters": settings.max_query_parameters,
            "max_repeated_parameter": settings.max_repeated_parameter,
            "statement_timeout_ms": settings.statement_timeout_ms,
        },
        "paging": {"page_size_default": settings.page_size_default, "page_size_max": settings.page_size_max},
        "exports": {
            "dir": str(settings.exports_path),
            "profile": str(settings.export_profile),
            "worker": settings.export_worker,
            "batch_size": settings.export_batch_size,
            "lease_seconds": settings.export_lease_seconds,
            "retention_hours": settings.export_retention_hours,
            "batch_pause_seconds": settings.export_batch_pause_seconds,
            "study_secret": _secret_source(
                True, settings.study_secret, "ECRF_STUDY_SECRET", settings.study_secret_file
            ),
        },
        "reports": {"min_cell": settings.report_min_cell},
        "web": {
            "idle_minutes": settings.web_idle_minutes,
            "absolute_hours": settings.web_absolute_hours,
            "reauth_seconds": settings.web_reauth_seconds,
            "dev_login": settings.web_dev_login if settings.web_dev_login is not None else runtime.verifier.uses_hmac,
            "oidc_issuer": settings.oidc_issuer,
            "oidc_client_id": settings.oidc_client_id,
            "oidc_client_secret": "ECRF_OIDC_CLIENT_SECRET" if settings.oidc_client_secret else None,
            "oidc_roles_claim": settings.oidc_roles_claim,
            "oidc_sites_claim": settings.oidc_sites_claim,
        },
        "randomisation": {
            "scheme": "randomisation.yaml" if runtime.randomisation is not None else None,
            "secret": _secret_source(
                runtime.randomisation is not None,
                settings.randomisation_secret,
                "ECRF_RANDOMISATION_SECRET",
                settings.randomisation_secret_file,
            ),
        },
    }


def database_view(url: str) -> dict[str, Any]:
    """Backend, driver, host, port and database of a SQLAlchemy URL; no user, password or query string."""
    parsed = make_url(url)
    return {
        "backend": parsed.get_backend_name(),
        "driver": parsed.get_driver_name(),
        "host": parsed.host,
        "port": parsed.port,
        "database": parsed.database,
    }


def _secret_source(used: bool, configured: str | None, variable: str, generated_file: Path) -> str | None:
    """Where a secret comes from, never the secret."""
    if not used:
        return None
    return variable if configured else f"generated, kept in {generated_file}"


def verify_chain(session: Session) -> dict[str, Any]:
    """Walk the whole chain (ecrf.audit.service.verify, batch by batch) in one snapshot; keep only the first
    break and the number of breaks, so memory stays bounded however long the chain is."""
    entries = session.exec(select(func.count()).select_from(AuditEntry)).one()
    first = None
    problems = 0
    for problem in verify(session):
        problems += 1
        first = first or problem
    if first is None:
        return {"ok": True, "entries": entries, "first_bad_seq": None, "message": f"chain intact: {entries} entries"}
    more = f"; {problems} problems in all" if problems > 1 else ""
    return {
        "ok": False,
        "entries": entries,
        "first_bad_seq": first.seq,
        "message": f"entry {first.seq}: {first.problem}{more}",
    }
