"""HTTP of SMART Backend Services: discovery, the token endpoint, this server's public keys, and the
admin's client registry (/api/v1/admin/clients)."""

from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from ecrf.auth.actor import Actor
from ecrf.auth.dependencies import public, requires
from ecrf.common.errors import NotFound
from ecrf.responses import FHIR_PREFIX, NO_STORE, JSONBody, server_root
from ecrf.smart import keys, service

TOKEN_PATH = "/auth/token"
JWKS_PATH = "/auth/jwks"
SCOPES_SUPPORTED = ["system/*.rs", "system/*.read", "system/*.cruds", "system/<Type>.<cruds>"]

router = APIRouter(tags=["smart"])
admin_router = APIRouter(prefix="/admin/clients", tags=["admin"])
MANAGE = Depends(requires("client.manage"))


def token_url(request: Request) -> str:
    return server_root(request) + TOKEN_PATH


def smart_configuration(request: Request) -> dict[str, Any]:
    return {
        "issuer": server_root(request) + service.ISSUER_SUFFIX,
        "jwks_uri": server_root(request) + JWKS_PATH,
        "token_endpoint": token_url(request),
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": list(service.ASSERTION_ALGORITHMS),
        "scopes_supported": SCOPES_SUPPORTED,
        "capabilities": ["client-confidential-asymmetric", "permission-v2", "permission-v1"],
    }


@router.get(
    FHIR_PREFIX + "/.well-known/smart-configuration",
    dependencies=[Depends(public)],
    summary="SMART discovery: the token endpoint and what it supports (Backend Services)",
)
def well_known(request: Request):
    return JSONBody(smart_configuration(request))


@router.get(JWKS_PATH, dependencies=[Depends(public)], summary="This server's public signing keys (access tokens)")
def jwks(request: Request):
    return JSONBody(keys.load(request.app.state.runtime.settings).public_jwks())


@router.post(
    TOKEN_PATH,
    dependencies=[Depends(public)],
    summary="OAuth 2.0 client credentials with a signed JWT assertion (SMART Backend Services)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/x-www-form-urlencoded": {
                    "schema": {
                        "type": "object",
                        "required": ["grant_type", "client_assertion_type", "client_assertion", "scope"],
                        "properties": {
                            "grant_type": {"type": "string", "enum": ["client_credentials"]},
                            "client_assertion_type": {"type": "string"},
                            "client_assertion": {"type": "string"},
                            "scope": {"type": "string"},
                        },
                    }
                }
            },
        }
    },
)
async def token(request: Request):
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise service.OAuthError("invalid_request", "the body must be application/x-www-form-urlencoded")
    body = await request.body()
    try:
        form = dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False, max_num_fields=20))
    except (UnicodeDecodeError, ValueError) as error:
        raise service.OAuthError("invalid_request", "the form body cannot be read") from error
    runtime = request.app.state.runtime
    issued = await run_in_threadpool(service.token, runtime.engine, runtime.settings, form, token_url(request))
    return JSONBody(issued.body(), headers=NO_STORE)


class ClientIn(BaseModel):
    name: str = Field(description="a name people recognise (e.g. lab-engine)")
    role: str = Field(description="ehr (with one site), sponsor, or data_manager (identified exports)")
    site: str | None = Field(default=None, description="the one site of an ehr client")
    scopes: str = Field(description="space-separated SMART system scopes the client may be granted")
    jwks: dict[str, Any] | None = Field(default=None, description="the client's public keys (a JWK Set)")
    jwks_uri: str | None = Field(default=None, description="or: where its JWK Set is published")


class EnableIn(BaseModel):
    reason: str | None = None


@admin_router.get("", summary="Registered machine clients (no key material)")
def list_clients(request: Request, actor: Actor = MANAGE) -> list[dict[str, Any]]:
    return [service.describe(client) for client in service.list_clients(request.app.state.runtime.engine)]


@admin_router.post("", status_code=201, summary="Register a machine client (SMART Backend Services)")
def add_client(request: Request, body: ClientIn, actor: Actor = MANAGE):
    runtime = request.app.state.runtime
    client = service.add_client(
        runtime.engine,
        actor,
        runtime.study,
        name=body.name,
        role=body.role,
        site=body.site,
        scopes=body.scopes,
        jwks=body.jwks,
        jwks_uri=body.jwks_uri,
    )
    return JSONBody(
        service.describe(client), status_code=201, headers={"Location": f"/api/v1/admin/clients/{client.id}"}
    )


@admin_router.get("/{client_id}", summary="One registered client")
def get_client(request: Request, client_id: str, actor: Actor = MANAGE):
    client = service.get_client(request.app.state.runtime.engine, client_id)
    if client is None:
        raise NotFound(f"client {client_id} is not registered")
    return service.describe(client)


def _set(request: Request, client_id: str, enabled: bool, actor: Actor, body: EnableIn | None):
    client = service.set_enabled(
        request.app.state.runtime.engine, actor, client_id, enabled, body.reason if body else None
    )
    if client is None:
        raise NotFound(f"client {client_id} is not registered")
    return service.describe(client)


@admin_router.post("/{client_id}/disable", summary="Disable a client: no new token, its tokens stop working at once")
def disable_client(request: Request, client_id: str, body: EnableIn | None = None, actor: Actor = MANAGE):
    return _set(request, client_id, False, actor, body)


@admin_router.post("/{client_id}/enable", summary="Enable a disabled client again")
def enable_client(request: Request, client_id: str, body: EnableIn | None = None, actor: Actor = MANAGE):
    return _set(request, client_id, True, actor, body)
