"""FastAPI dependencies: authenticate the bearer token, then check the route's declared action."""

from collections.abc import Callable

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ecrf.auth.actor import Actor
from ecrf.auth.policy import PERMISSIONS, PUBLIC, can
from ecrf.auth.tokens import TokenError, dev_secret_source

bearer = HTTPBearer(auto_error=False, description="A JWT from `ecrf token` (dev) or your identity provider")


def current_actor(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Actor:
    cookie_actor = getattr(request.app.state, "cookie_actor", None)  # the web door's sessions (ecrf/web)
    if credentials is None and cookie_actor is not None and (actor := cookie_actor(request)) is not None:
        request.state.actor = actor
        return actor
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(401, "a bearer token is required", headers={"WWW-Authenticate": "Bearer"})
    try:
        actor = request.app.state.verifier.verify(credentials.credentials)
    except TokenError as error:
        message = str(error)
        verifier = request.app.state.verifier
        if verifier.uses_hmac and "Signature verification failed" in message:
            message = f"{message}: {dev_secret_source(verifier.settings)}"
        raise HTTPException(401, message, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}) from error
    request.state.actor = actor
    return actor


def requires(action: str) -> Callable[..., Actor]:
    """The dependency a route declares: who may call it. Unknown actions fail at import time."""
    if action not in PERMISSIONS:
        raise ValueError(f"unknown action {action!r}")

    def check(request: Request, actor: Actor = Depends(current_actor)) -> Actor:
        if not can(actor, action):
            raise HTTPException(403, f"role {actor.role} may not {action}")
        if (fresh := getattr(request.state, "session_check", None)) is not None:
            fresh(action)  # a browser session: signing needs a recent (re-)authentication
        return actor

    check.action = action  # read by the test that walks every route
    return check


def public() -> None:
    """Declares a route open without a token (health checks, capability statement)."""


public.action = PUBLIC
