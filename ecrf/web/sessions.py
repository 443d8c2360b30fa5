"""Browser sessions: a random cookie token (HttpOnly, SameSite=Strict, Secure behind TLS), its SHA-256 in
`web_session`, idle and absolute expiry, a CSRF token required on every state-changing request it
authenticates, and a recent authentication required to sign (21 CFR 11.200).

The session only says who the caller is: what they may do is decided by the same policy as for bearer
tokens (`ecrf.auth.dependencies.requires`)."""

import hashlib
import hmac
import secrets
from datetime import UTC, datetime, timedelta

from fastapi import HTTPException, Request, Response
from sqlmodel import Session, delete

from ecrf.auth.actor import Actor
from ecrf.web.models import WebSession

COOKIE = "ecrf_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SIGN_ACTIONS = frozenset({"form.sign"})
TOUCH_EVERY = timedelta(seconds=30)  # last_seen_at is written at most this often per session


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _now() -> datetime:
    return datetime.now(UTC)


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def start(request: Request, response: Response, actor: Actor, method: str) -> WebSession:
    """A new session for `actor` (any session the browser had is ended first), with its cookie set."""
    runtime = request.app.state.runtime
    settings = runtime.settings
    end(request, response)
    token, now = secrets.token_urlsafe(32), _now()
    row = WebSession(
        token_hash=_hash(token),
        sub=actor.sub,
        roles=",".join(sorted(actor.roles)),
        sites=",".join(sorted(actor.sites)) if actor.sites is not None else None,
        method=method,
        csrf=secrets.token_urlsafe(32),
        created_at=now,
        last_seen_at=now,
        authenticated_at=now,
        expires_at=now + timedelta(hours=settings.web_absolute_hours),
    )
    with _session(runtime.engine) as session:
        session.add(row)
        session.execute(delete(WebSession).where(WebSession.expires_at < now))  # sweep the long expired
        session.commit()
        session.refresh(row)
    response.set_cookie(
        COOKIE,
        token,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
        max_age=settings.web_absolute_hours * 3600,
    )
    return row


def _session(engine) -> Session:
    """Session rows are written as well as read: on SQLite the transaction takes the write lock at BEGIN, so a
    concurrent writer makes it wait (busy_timeout) instead of failing to upgrade a read lock ('database is locked')."""
    return Session(engine.execution_options(writes=True))


def forget(request: Request, token_hash: str) -> None:
    with _session(request.app.state.runtime.engine) as session:
        session.execute(delete(WebSession).where(WebSession.token_hash == token_hash))
        session.commit()


def end(request: Request, response: Response) -> None:
    token = request.cookies.get(COOKIE)
    if token:
        with _session(request.app.state.runtime.engine) as session:
            session.execute(delete(WebSession).where(WebSession.token_hash == _hash(token)))
            session.commit()
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict", secure=request.url.scheme == "https")


def current(request: Request) -> WebSession | None:
    """The browser's live session, or None (no cookie, unknown, expired: an expired one is deleted)."""
    token = request.cookies.get(COOKIE)
    if not token:
        return None
    runtime = request.app.state.runtime
    now = _now()
    idle = timedelta(minutes=runtime.settings.web_idle_minutes)
    with _session(runtime.engine) as session:
        row = session.get(WebSession, _hash(token))
        if row is None:
            return None
        if _utc(row.expires_at) <= now or _utc(row.last_seen_at) + idle <= now:
            session.delete(row)
            session.commit()
            return None
        if now - _utc(row.last_seen_at) >= TOUCH_EVERY:
            row.last_seen_at = now
            session.add(row)
            session.commit()
            session.refresh(row)
        session.expunge(row)
        return row


def actor_of(row: WebSession) -> Actor:
    return Actor(
        sub=row.sub,
        roles=frozenset(row.roles.split(",")),
        sites=frozenset(row.sites.split(",")) if row.sites is not None else None,
    )


def cookie_actor(request: Request) -> Actor | None:
    """The cookie fallback of `current_actor` (no bearer token sent): the session's actor, after CSRF."""
    if COOKIE not in request.cookies:
        return None
    row = current(request)
    if row is None:
        raise HTTPException(
            401,
            "the browser session has ended (signed out or expired): sign in again",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if request.method not in SAFE_METHODS:
        sent = request.headers.get(CSRF_HEADER, "")
        if not hmac.compare_digest(sent.encode(), row.csrf.encode()):
            raise HTTPException(403, f"a state-changing request of a browser session needs its {CSRF_HEADER} header")
    reauth = timedelta(seconds=request.app.state.runtime.settings.web_reauth_seconds)

    def fresh(action: str) -> None:
        if action in SIGN_ACTIONS and _now() - _utc(row.authenticated_at) > reauth:
            raise HTTPException(
                401,
                "signing needs you to confirm who you are: sign in again to sign (21 CFR 11.200)",
                headers={"WWW-Authenticate": 'Bearer error="reauthenticate"'},
            )

    request.state.session_check = fresh
    request.state.web_session = row
    return actor_of(row)


def csrf_check(request: Request, row: WebSession) -> None:
    sent = request.headers.get(CSRF_HEADER, "")
    if not hmac.compare_digest(sent.encode(), row.csrf.encode()):
        raise HTTPException(403, f"a state-changing request of a browser session needs its {CSRF_HEADER} header")
