"""/api/v1/admin: the effective configuration and the audit chain check."""

from fastapi import APIRouter, Depends, Request

from ecrf.admin import service
from ecrf.admin.schemas import ChainCheck, EffectiveSettings
from ecrf.auth.actor import Actor
from ecrf.auth.dependencies import requires
from ecrf.db import snapshot

router = APIRouter(prefix="/admin", tags=["admin"])


@router.get("/settings", response_model=EffectiveSettings)
def settings(request: Request, actor: Actor = Depends(requires("settings.read"))) -> dict:
    """The settings in force (ECRF_* variables and their defaults), without any secret: the database as
    backend, host and name only; for secrets, where they come from."""
    return service.effective_settings(request.app.state.runtime)


@router.get("/audit/verify", response_model=ChainCheck)
def audit_verify(request: Request, actor: Actor = Depends(requires("audit.verify"))) -> dict:
    """Walk the whole audit hash chain in one snapshot, as `ecrf audit verify` does: `ok`, the entries
    walked, the first altered, missing or unlinked entry and what is wrong with it."""
    with snapshot(request.app.state.runtime.engine) as session:
        return service.verify_chain(session)
