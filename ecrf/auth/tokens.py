"""Bearer JWTs: dev tokens signed HS256 with a local secret; production tokens checked against a JWKS.

The accepted algorithms come from configuration and are never taken from the token: a token whose
header names another algorithm, no algorithm (`none`), or an unknown `kid` is refused.
"""

import base64
import binascii
import json
import os
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from jose import JWTError, jwk, jwt

from ecrf.auth.actor import ROLES, STUDY_WIDE_ROLES, Actor
from ecrf.auth.policy import combination_refusal
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
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(secret)
    return secret


def dev_secret_source(settings: Settings) -> str:
    """Where the HS256 secret comes from, and how to mint a token this server accepts (never the secret)."""
    if settings.jwt_secret:
        return (
            "this server verifies HS256 tokens with ECRF_JWT_SECRET from its environment; mint one with the "
            "same ECRF_JWT_SECRET set: ecrf token --role ROLE --site SITE"
        )
    return (
        f"this server verifies HS256 tokens with the dev secret in {settings.secret_file}; mint one that "
        f"matches with: ECRF_JWT_SECRET_FILE={settings.secret_file} ecrf token --role ROLE --site SITE"
    )


def needs_site(role: str) -> bool:
    """A role whose tokens must name their sites (the verifier refuses them without a sites claim)."""
    return role not in STUDY_WIDE_ROLES | {"monitor"}


def issue_dev_token(
    settings: Settings,
    *,
    role: str,
    sites: list[str] | None = None,
    sub: str | None = None,
    ttl_minutes: int = 60,
    scopes: list[str] | None = None,
) -> str:
    if role not in ROLES:
        raise TokenError(f"unknown role {role!r}; roles are {', '.join(ROLES)}")
    if needs_site(role) and not sites:
        raise TokenError(f"role {role} works at a site: give it one with --site (e.g. --site S01)")
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


NUMERIC_DATE_CLAIMS = ("exp", "iat", "nbf")
NUMERIC_DATE_LIMIT = 2**53  # a NumericDate beyond this is no date any clock reaches (and no double holds it exactly)


def _json_part(part: str, what: str) -> dict[str, Any]:
    """One base64url JSON part of a compact JWS, parsed strictly: an object, no repeated key, no NaN/Infinity."""

    def no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [key for key, _ in pairs]
        repeated = sorted({key for key in keys if keys.count(key) > 1})
        if repeated:
            raise TokenError(f"token {what} repeats the key {', '.join(map(repr, repeated))}")
        return dict(pairs)

    def no_constant(name: str) -> Any:
        raise TokenError(f"token {what} holds {name}, which is not JSON")

    try:
        raw = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
        value = json.loads(raw.decode("utf-8"), object_pairs_hook=no_repeats, parse_constant=no_constant)
    except TokenError:
        raise
    except (ValueError, UnicodeDecodeError, binascii.Error) as error:
        raise TokenError("token is malformed") from error
    if not isinstance(value, dict):
        raise TokenError(f"token {what} is not a JSON object")
    return value


def check_token_shape(token: str) -> None:
    """Types of the header and claims, checked before any library reads them (anything odd is a TokenError,
    answered 401): header `alg` and `kid` strings; `exp`, `iat`, `nbf` integers of a reachable size (not
    strings, booleans, fractions, ±Infinity or 1e309); no key repeated in the header or the claims (JSON
    parsers disagree on which copy wins, so a token could mean two things)."""
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenError("token is malformed")
    header = _json_part(parts[0], "header")
    claims = _json_part(parts[1], "claims")
    if not isinstance(header.get("alg"), str):
        raise TokenError("token header alg must be a string")
    if "kid" in header and not isinstance(header["kid"], str):
        raise TokenError("token header kid must be a string")
    for name in NUMERIC_DATE_CLAIMS:
        if name in claims:
            value = claims[name]
            if isinstance(value, bool) or not isinstance(value, int) or abs(value) >= NUMERIC_DATE_LIMIT:
                raise TokenError(f"token claim {name} must be an integer NumericDate (seconds since 1970)")


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
        check_token_shape(token)
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
                token,
                key,
                algorithms=[algorithm],
                audience=self.settings.jwt_audience,
                issuer=self.settings.jwt_issuer,
                options={
                    "require_exp": True,
                    "require_iat": True,
                    "require_aud": True,
                    "require_iss": True,
                    "require_sub": True,
                    "leeway": self.settings.jwt_leeway_seconds,
                },
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
    refusal = combination_refusal(frozenset(roles))
    if refusal:
        raise TokenError(f"token refused: {refusal}")
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
