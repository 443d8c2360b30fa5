"""The web door: the single-page app at `/`, its static files, and browser sign-in (dev and OpenID Connect).

Every page calls /api/v1 with the session cookie; no rule of the study lives here."""

import mimetypes
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import FileResponse, RedirectResponse
from pydantic import BaseModel, Field

from ecrf.auth.actor import ROLES, STUDY_WIDE_ROLES, Actor
from ecrf.auth.dependencies import public
from ecrf.auth.policy import PERMISSIONS, can
from ecrf.responses import JSONBody
from ecrf.web import oidc, sessions

STATIC = Path(__file__).resolve().parent / "static"
router = APIRouter(tags=["web"], include_in_schema=False)
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-cache",
}


class DevLogin(BaseModel):
    role: str = Field(max_length=32)
    site: str | None = Field(default=None, max_length=32)
    sub: str | None = Field(default=None, max_length=200)


def dev_login_enabled(request: Request) -> bool:
    settings = request.app.state.runtime.settings
    if settings.web_dev_login is not None:
        return settings.web_dev_login
    return request.app.state.verifier.uses_hmac  # dev mode: the generated (or set) HS256 dev secret


@router.get("/", dependencies=[Depends(public)])
def index() -> FileResponse:
    """The clinicians' screens (a static page; it signs in and calls /api/v1)."""
    return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)


@router.get("/web/{asset:path}", dependencies=[Depends(public)])
def asset(asset: str) -> FileResponse:
    """One static file of the page (scripts, styles, message catalogues), nothing outside its folder."""
    path = (STATIC / asset).resolve()
    if STATIC not in path.parents or not path.is_file():
        raise HTTPException(404, "no such file of the web interface")
    media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    if media_type.startswith("text/") or path.suffix in (".js", ".json"):
        media_type += "; charset=utf-8"
    return FileResponse(path, media_type=media_type, headers=PAGE_HEADERS)


@router.get("/web-auth/session", dependencies=[Depends(public)])
def session_info(request: Request) -> dict[str, Any]:
    """Who the browser is signed in as (with the CSRF token its page sends back), and how it can sign in."""
    runtime = request.app.state.runtime
    study = runtime.study
    body: dict[str, Any] = {
        "signed_in": False,
        "dev_login": dev_login_enabled(request),
        "oidc": oidc.configured(runtime.settings),
        "study": study.id,
        "roles": list(ROLES),
        "sites": [{"id": site.id, "name": site.name, "time_zone": site.time_zone} for site in study.sites],
    }
    row = sessions.current(request)
    if row is not None:
        body.update(
            signed_in=True,
            sub=row.sub,
            user_roles=row.roles.split(","),
            user_sites=row.sites.split(",") if row.sites is not None else None,
            csrf=row.csrf,
            method=row.method,
            expires_at=row.expires_at.isoformat(),
            authenticated_at=row.authenticated_at.isoformat(),
            reauth_seconds=runtime.settings.web_reauth_seconds,
            # what the page offers: the one policy's answer, so a button exists only where the API allows
            actions=sorted(action for action in PERMISSIONS if can(sessions.actor_of(row), action)),
        )
    return body


@router.post("/web-auth/dev-login", dependencies=[Depends(public)])
def dev_login(body: DevLogin, request: Request) -> JSONBody:
    """Dev mode only (HS256 dev secret): sign in as any role and site, as `ecrf token` would issue."""
    if not dev_login_enabled(request):
        raise HTTPException(404, "dev sign-in is off: sign in with the hospital's identity provider")
    if body.role not in ROLES:
        raise HTTPException(422, f"unknown role {body.role!r}")
    study_sites = _site_ids(request)
    if body.site is not None and body.site not in study_sites:
        raise HTTPException(422, f"unknown site {body.site!r}")
    if body.role not in STUDY_WIDE_ROLES | {"monitor"} and body.site is None:
        raise HTTPException(422, f"role {body.role} signs in for a site")
    sites = None if body.role in STUDY_WIDE_ROLES or body.site is None else frozenset({body.site})
    actor = Actor(sub=body.sub or f"dev-{body.role}", roles=frozenset({body.role}), sites=sites)
    response = JSONBody({"signed_in": True, "sub": actor.sub})
    sessions.start(request, response, actor, "dev")
    return response


@router.post("/web-auth/logout", dependencies=[Depends(public)])
def logout(request: Request) -> JSONBody:
    """Sign out: the session row is deleted and the cookie cleared (needs the CSRF token of a live session)."""
    row = sessions.current(request)
    if row is not None:
        sessions.csrf_check(request, row)
    response = JSONBody({"signed_in": False})
    sessions.end(request, response)
    return response


@router.get("/web-auth/oidc/login", dependencies=[Depends(public)])
async def oidc_login(request: Request, reauth: bool = False) -> RedirectResponse:
    """To the hospital's OpenID Connect provider (authorization code with PKCE); `reauth=true` asks it to
    authenticate the user again (prompt=login, max_age=0), as signing needs."""
    return await oidc.login(request, reauth=reauth)


@router.get("/web-auth/oidc/callback", dependencies=[Depends(public)])
async def oidc_callback(request: Request) -> RedirectResponse:
    """Back from the provider: the code is exchanged, the ID token checked, its role and site claims mapped
    as for API tokens, and a session started (or, on re-authentication, refreshed)."""
    return await oidc.callback(request)


def _site_ids(request: Request) -> set[str]:
    return {site.id for site in request.app.state.runtime.study.sites}
