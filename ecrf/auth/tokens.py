"""Bearer JWTs: dev tokens signed HS256 with a local secret; production tokens checked against a JWKS.

The accepted algorithms come from configuration and are never taken from the token: a token whose
header names another algorithm, no algorithm (`none`), or an unknown `kid` is refused.
"""
import json
import os
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from jose import JWTError, jwk, jwt

from ecrf.auth.actor import ROLES, STUDY_WIDE_ROLES, Actor
from ecrf.config import Settings

HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
ASYMMETRIC_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256"})


class TokenError(Exception):
    """Why a bearer token was refused; the message is safe to return to the caller."""


def dev_secret(settings: Settings) -> str:
    """ECRF_JWT_SECRET, else a random secret generated once and kept in a 0600 file."""
    if settings.jwt_secret:
        return settings.jwt_secret
    path: Path = settings.secret_file
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(secret)
    return secret


def issue_dev_token(
    settings: Settings, *, role: str, sites: list[str] | None = None, sub: str | None = None,
    ttl_minutes: int = 60, scopes: list[str] | None = None,
) -> str:
    if role not in ROLES:
        raise TokenError(f"unknown role {role!r}; roles are {', '.join(ROLES)}")
    now = datetime.now(UTC)
    claims: dict[str, Any] = {
        "sub": sub or f"dev-{role}",
        "roles": [role],
        "iat": int(now.timestamp()),
        "exp": int((now + timedelta(minutes=ttl_minutes)).timestamp()),
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
    }
    if role not in STUDY_WIDE_ROLES and sites:
        claims["sites"] = sites
    if scopes:
        claims["scope"] = " ".join(scopes)
    return jwt.encode(claims, dev_secret(settings), algorithm="HS256")


class TokenVerifier:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.algorithms = list(settings.algorithms)
        families = {"hmac" if alg in HMAC_ALGORITHMS else "asym" for alg in self.algorithms}
        unknown = set(self.algorithms) - HMAC_ALGORITHMS - ASYMMETRIC_ALGORITHMS
        if unknown or len(families) != 1:
            raise ValueError(f"ECRF_JWT_ALGORITHMS must be one family of known algorithms, got {self.algorithms}")
        self.uses_hmac = families == {"hmac"}
        self.hmac_secret = dev_secret(settings) if self.uses_hmac else None
        self.jwks = self._load_jwks(settings.jwks_file) if not self.uses_hmac else {}
        self.smart = None  # this server's own access tokens (ecrf/smart), set by the app: checked by their kid

    @staticmethod
    def _load_jwks(path: Path | None) -> dict[str, dict[str, Any]]:
        if path is None:
            raise ValueError("asymmetric JWT algorithms need ECRF_JWKS_FILE")
        keys = json.loads(Path(path).read_text())["keys"]
        return {key["kid"]: key for key in keys if "kid" in key}

    def verify(self, token: str) -> Actor:
        if len(token) > self.settings.jwt_max_bytes:
            raise TokenError("token is too large")
        try:
            header = jwt.get_unverified_header(token)
        except JWTError as error:
            raise TokenError("token is malformed") from error
        if self.smart is not None and self.smart.owns(header):
            return self.smart.verify(token, header, TokenError)
        algorithm = header.get("alg")
        if algorithm not in self.algorithms:
            raise TokenError(f"token algorithm {algorithm!r} is not accepted")
        key = self._key_for(header, algorithm)
        try:
            claims = jwt.decode(
                token, key, algorithms=[algorithm], audience=self.settings.jwt_audience,
                issuer=self.settings.jwt_issuer,
                options={"require_exp": True, "require_iat": True, "require_aud": True, "require_iss": True,
                         "require_sub": True, "leeway": self.settings.jwt_leeway_seconds},
            )
        except JWTError as error:
            raise TokenError(f"token refused: {error}") from error
        return _actor(claims, self.settings.jwt_leeway_seconds)

    def _key_for(self, header: dict[str, Any], algorithm: str) -> Any:
        if self.uses_hmac:
            return self.hmac_secret
        kid = header.get("kid")
        if kid not in self.jwks:
            raise TokenError("token key id (kid) is not known")
        key = self.jwks[kid]
        expected_type = "EC" if algorithm.startswith("ES") else "RSA"
        if key.get("kty") != expected_type:
            raise TokenError("token algorithm does not match its key")
        return jwk.construct(key, algorithm=algorithm)


def _actor(claims: dict[str, Any], leeway: int) -> Actor:
    issued = claims.get("iat")
    if not isinstance(issued, (int, float)) or issued > datetime.now(UTC).timestamp() + leeway:
        raise TokenError("token issued-at (iat) is in the future")
    roles = claims.get("roles")
    if not isinstance(roles, list) or not roles or any(role not in ROLES for role in roles):
        raise TokenError("token roles claim is missing or names an unknown role")
    sites = claims.get("sites")
    if sites is not None and (not isinstance(sites, list) or not all(isinstance(s, str) for s in sites)):
        raise TokenError("token sites claim must be a list of site ids")
    if sites is None and not set(roles) <= STUDY_WIDE_ROLES | {"monitor"}:
        raise TokenError("a site role needs a sites claim")
    scopes = claims.get("scope", "")
    return Actor(
        sub=str(claims["sub"]),
        roles=frozenset(roles),
        sites=frozenset(sites) if sites is not None else None,
        scopes=frozenset(scopes.split()) if isinstance(scopes, str) else frozenset(),
    )
