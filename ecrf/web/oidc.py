"""Browser sign-in with the hospital's OpenID Connect provider: authorization code flow with PKCE (S256),
state and nonce, by `authlib`'s OAuth 2.0 client; the ID token is checked against the provider's JWKS
(issuer, audience, nonce, signature) and its role and site claims are mapped exactly as an API token's.

What the flow must remember between the redirect and the callback (state, PKCE verifier, nonce) travels in a
short-lived HttpOnly cookie of its own; the session cookie is SameSite=Strict, so a callback from the
provider (a cross-site navigation) never carries it."""

import json
import secrets
import time
import warnings
from typing import Any

import httpx
from fastapi import HTTPException, Request
from fastapi.responses import RedirectResponse
from jose import JWTError, jwt

from ecrf.auth.tokens import TokenError, _actor
from ecrf.config import Settings
from ecrf.web import sessions

PENDING = "ecrf_oidc"
PENDING_SECONDS = 600
_discovery: dict[str, tuple[float, dict[str, Any]]] = {}


def configured(settings: Settings) -> bool:
    return bool(settings.oidc_issuer and settings.oidc_client_id)


async def _metadata(settings: Settings) -> dict[str, Any]:
    cached = _discovery.get(settings.oidc_issuer)
    if cached and cached[0] > time.monotonic():
        return cached[1]
    url = settings.oidc_issuer.rstrip("/") + "/.well-known/openid-configuration"
    async with httpx.AsyncClient(timeout=10) as client:
        metadata = (await client.get(url)).raise_for_status().json()
        metadata["jwks"] = (await client.get(metadata["jwks_uri"])).raise_for_status().json()
    _discovery[settings.oidc_issuer] = (time.monotonic() + 300, metadata)
    return metadata


def _client(request: Request):
    with warnings.catch_warnings():  # authlib 1.9 announces its httpx module's rename, not a problem of ours
        warnings.simplefilter("ignore")
        from authlib.integrations.httpx_client import AsyncOAuth2Client
    settings = request.app.state.runtime.settings
    return AsyncOAuth2Client(
        client_id=settings.oidc_client_id,
        client_secret=settings.oidc_client_secret,
        token_endpoint_auth_method="client_secret_basic" if settings.oidc_client_secret else "none",
        scope="openid profile " + " ".join(sorted({settings.oidc_roles_claim, settings.oidc_sites_claim})),
        redirect_uri=str(request.url_for("oidc_callback")),
        code_challenge_method="S256",
        timeout=10,
    )


async def login(request: Request, *, reauth: bool) -> RedirectResponse:
    settings = request.app.state.runtime.settings
    if not configured(settings):
        raise HTTPException(404, "OpenID Connect sign-in is not configured (ECRF_OIDC_ISSUER, ECRF_OIDC_CLIENT_ID)")
    metadata = await _metadata(settings)
    state, verifier, nonce = secrets.token_urlsafe(24), secrets.token_urlsafe(48), secrets.token_urlsafe(24)
    extra = {"prompt": "login", "max_age": 0} if reauth else {}
    async with _client(request) as client:
        url, _ = client.create_authorization_url(
            metadata["authorization_endpoint"], state=state, code_verifier=verifier, nonce=nonce, **extra
        )
    current = sessions.current(request) if reauth else None
    pending = {
        "state": state,
        "verifier": verifier,
        "nonce": nonce,
        "at": int(time.time()),
        "reauth_sub": current.sub if current else None,
        "replaces": current.token_hash if current else None,
    }
    response = RedirectResponse(url, status_code=302)
    response.set_cookie(
        PENDING,
        json.dumps(pending, separators=(",", ":")),
        max_age=PENDING_SECONDS,
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
        path="/web-auth/oidc/",
    )
    return response


async def callback(request: Request) -> RedirectResponse:
    settings = request.app.state.runtime.settings
    if not configured(settings):
        raise HTTPException(404, "OpenID Connect sign-in is not configured")
    try:
        pending = json.loads(request.cookies.get(PENDING, ""))
    except ValueError:
        pending = None
    state = request.query_params.get("state")
    if not pending or not state or not secrets.compare_digest(str(pending.get("state")), state):
        raise HTTPException(400, "this sign-in was not started here, or took too long: start again")
    if "error" in request.query_params:
        raise HTTPException(401, f"the identity provider refused the sign-in: {request.query_params['error']}")
    code = request.query_params.get("code")
    if not code:
        raise HTTPException(400, "the identity provider sent no authorization code")
    metadata = await _metadata(settings)
    async with _client(request) as client:
        try:
            token = await client.fetch_token(
                metadata["token_endpoint"],
                code=code,
                code_verifier=pending["verifier"],
                grant_type="authorization_code",
            )
        except Exception as error:  # noqa: BLE001 - authlib raises several kinds; the message names the reason
            raise HTTPException(401, f"the authorization code was refused: {error}") from error
        claims = _id_token_claims(token.get("id_token"), metadata, settings, pending["nonce"])
        if settings.oidc_roles_claim not in claims and metadata.get("userinfo_endpoint"):
            info = (await client.get(metadata["userinfo_endpoint"])).raise_for_status().json()
            if info.get("sub") == claims["sub"]:
                claims = {**info, **claims}
    if pending.get("reauth_sub") is not None:
        if claims["sub"] != pending["reauth_sub"]:
            raise HTTPException(403, "re-authentication must be by the user who is signed in")
        if not isinstance(claims.get("auth_time"), (int, float)) or claims["auth_time"] < pending["at"] - 5:
            raise HTTPException(401, "the identity provider did not authenticate the user again")
    try:
        actor = _actor(
            {
                "sub": claims["sub"],
                "iat": claims.get("iat", 0),
                "roles": claims.get(settings.oidc_roles_claim),
                "sites": claims.get(settings.oidc_sites_claim),
            },
            settings.jwt_leeway_seconds,
        )
    except TokenError as error:
        raise HTTPException(403, f"the identity provider's account cannot use the eCRF: {error}") from error
    response = RedirectResponse("/", status_code=303)
    if pending.get("replaces"):
        sessions.forget(request, str(pending["replaces"]))  # the session re-authenticated gives way to the new one
    sessions.start(request, response, actor, "oidc")
    response.delete_cookie(PENDING, path="/web-auth/oidc/")
    return response


def _id_token_claims(id_token: str | None, metadata: dict[str, Any], settings: Settings, nonce: str) -> dict[str, Any]:
    if not id_token:
        raise HTTPException(401, "the identity provider sent no ID token")
    try:
        algorithm = jwt.get_unverified_header(id_token).get("alg")
        allowed = metadata.get("id_token_signing_alg_values_supported") or ["RS256"]
        if algorithm not in allowed or algorithm.startswith("HS") or algorithm == "none":
            raise HTTPException(401, f"ID token algorithm {algorithm!r} is not accepted")
        claims = jwt.decode(
            id_token,
            metadata["jwks"],
            algorithms=[algorithm],
            audience=settings.oidc_client_id,
            issuer=metadata["issuer"],
            options={"verify_at_hash": False, "leeway": settings.jwt_leeway_seconds},
        )
    except JWTError as error:
        raise HTTPException(401, f"the ID token was refused: {error}") from error
    if not secrets.compare_digest(str(claims.get("nonce", "")), nonce):
        raise HTTPException(401, "the ID token's nonce does not match this sign-in")
    return claims
