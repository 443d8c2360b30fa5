"""SMART Backend Services: the client registry, the token endpoint's checks, and this server's access tokens.

A token request carries a client assertion (a JWT the client signed with its private key, RS384 or ES384).
It is accepted only when: the client is registered and enabled; `iss` = `sub` = the client id; `aud` is the
token URL; `exp` is in the future and at most five minutes ahead; its `jti` was never used (kept in the
database until the assertion expires, so a replay is refused on every instance); and its signature verifies
with a key of the client's JWKS (registered inline, or fetched from its JWKS URL with a timeout and cached;
a `jku` header must name that URL). The access token is signed by this server's own key
(ecrf/smart/keys.py), carries the client's role, site and granted scopes, and is verified by the same path
as every bearer token; it stops working the moment its client is disabled.
"""

import json
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from jose import JWTError, jwk, jwt
from sqlalchemy import delete, insert
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from ecrf.audit import service as audit
from ecrf.common.errors import Invalid
from ecrf.auth.actor import ROLES, STUDY_WIDE_ROLES, Actor
from ecrf.db import reading, transaction
from ecrf.smart import grants, keys
from ecrf.smart.models import SmartClient, UsedAssertion

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_ALGORITHMS = ("RS384", "ES384")
MAX_ASSERTION_SECONDS = 300
MAX_ASSERTION_BYTES = 16384
CLIENT_ROLES = ("ehr", "sponsor", "data_manager")
ISSUER_SUFFIX = "/auth"
JWKS_TIMEOUT_SECONDS = 5.0
JWKS_CACHE_SECONDS = 300
JWKS_REFRESH_SECONDS = 10
JWKS_MAX_BYTES = 65536


class OAuthError(Exception):
    """An RFC 6749 error answer: `error` code and a description safe to return (ecrf/errors.py answers it,
    invalid_client as the failed client authentication it is)."""

    def __init__(self, error: str, description: str):
        super().__init__(description)
        self.error, self.description = error, description


class RegistrationError(Invalid, ValueError):
    """A client registration that cannot be accepted; names the field."""

    def __init__(self, item: str, message: str):
        super().__init__(message)
        self.item = item
        self.errors = [{"item": item, "rule": "client", "message": message}]


def now() -> datetime:
    return datetime.now(UTC)


# ---------------------------------------------------------------- registry


def describe(client: SmartClient) -> dict[str, Any]:
    """What may be shown of a client: never key material (the JWKS URL is an address, not a secret)."""
    return {
        "id": client.id,
        "name": client.name,
        "role": client.role,
        "site": client.site,
        "scopes": client.scopes.split(),
        "jwks_uri": client.jwks_uri,
        "keys": len(json.loads(client.jwks)["keys"]) if client.jwks else None,
        "enabled": client.enabled,
        "created_at": client.created_at.isoformat().replace("+00:00", "Z"),
        "updated_at": client.updated_at.isoformat().replace("+00:00", "Z"),
    }


def _public_jwks(jwks: Any) -> str:
    if isinstance(jwks, str):
        try:
            jwks = json.loads(jwks)
        except ValueError as error:
            raise RegistrationError("jwks", "jwks is not JSON") from error
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list) or not jwks["keys"]:
        raise RegistrationError("jwks", 'jwks must be a JWK Set: {"keys": [...]} with at least one key')
    public = []
    for key in jwks["keys"]:
        if not isinstance(key, dict) or key.get("kty") not in ("RSA", "EC"):
            raise RegistrationError("jwks", "every key must be an RSA or EC public key (kty RSA or EC)")
        if any(member in key for member in ("d", "p", "q", "dp", "dq", "qi", "k")):
            raise RegistrationError(
                "jwks", "jwks must hold public keys only; a private key was sent (and was not stored)"
            )
        try:
            jwk.construct(key, algorithm="ES384" if key["kty"] == "EC" else "RS384")
        except Exception as error:  # noqa: BLE001 - any construction failure is a bad key
            raise RegistrationError("jwks", "a key of the jwks is not a valid public key") from error
        public.append(key)
    return json.dumps({"keys": public}, sort_keys=True)


def add_client(
    engine: Engine,
    actor: Actor,
    study: Any,
    *,
    name: str,
    role: str,
    site: str | None,
    scopes: str,
    jwks: Any = None,
    jwks_uri: str | None = None,
) -> SmartClient:
    if not name or len(name) > 200:
        raise RegistrationError("name", "name is required (at most 200 characters)")
    if role not in CLIENT_ROLES:
        raise RegistrationError("role", f"role must be one of {', '.join(CLIENT_ROLES)}")
    site_ids = {item.id for item in getattr(study, "sites", [])}
    if role == "ehr":
        if not site or site not in site_ids:
            raise RegistrationError(
                "site", f"an ehr client needs one site of the study ({', '.join(sorted(site_ids))})"
            )
    elif site:
        raise RegistrationError("site", f"a {role} client is study-wide and takes no site")
    scopes = " ".join((scopes or "").split())
    wrong = grants.valid_registration(scopes)
    if not scopes or wrong:
        raise RegistrationError(
            "scopes",
            "scopes must be SMART system scopes (system/<Type|*>.<cruds> or "
            f".read|write|*); not valid: {', '.join(wrong) or '(none given)'}",
        )
    if (jwks is None) == (not jwks_uri):
        raise RegistrationError("jwks", "give exactly one of jwks (the public keys) and jwks_uri")
    if jwks_uri and not jwks_uri.startswith(("https://", "http://")):
        raise RegistrationError("jwks_uri", "jwks_uri must be an http(s) URL")
    moment = now()
    client = SmartClient(
        id=uuid.uuid4().hex,
        name=name,
        role=role,
        site=site or None,
        scopes=scopes,
        jwks=_public_jwks(jwks) if jwks is not None else None,
        jwks_uri=jwks_uri or None,
        enabled=True,
        created_at=moment,
        updated_at=moment,
    )
    with transaction(engine) as session:
        session.add(client)
        audit.append(
            session,
            actor,
            "client.add",
            source="api",
            resource=f"Client/{client.id}",
            new_value=json.dumps(
                {k: v for k, v in describe(client).items() if k not in ("created_at", "updated_at")}, sort_keys=True
            ),
        )
    return client


def list_clients(engine: Engine) -> list[SmartClient]:
    from sqlmodel import select

    with reading(engine) as session:
        return list(session.exec(select(SmartClient).order_by(SmartClient.created_at, SmartClient.id)).all())


def get_client(engine: Engine, client_id: str) -> SmartClient | None:
    with reading(engine) as session:
        return session.get(SmartClient, client_id[:64])


def set_enabled(
    engine: Engine, actor: Actor, client_id: str, enabled: bool, reason: str | None = None
) -> SmartClient | None:
    with transaction(engine) as session:
        client = session.get(SmartClient, client_id[:64])
        if client is None:
            return None
        if client.enabled != enabled:
            client.enabled, client.updated_at = enabled, now()
            session.add(client)
            audit.append(
                session,
                actor,
                "client.enable" if enabled else "client.disable",
                source="api",
                resource=f"Client/{client.id}",
                old_value=json.dumps({"enabled": not enabled}),
                new_value=json.dumps({"enabled": enabled}),
                reason=reason,
            )
        return client


# ---------------------------------------------------------------- client keys


class JwksCache:
    """Keys fetched from clients' JWKS URLs: cached for minutes; a key id not in the cache refetches (rotation),
    at most every few seconds per URL."""

    def __init__(self):
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[float, list[dict[str, Any]]]] = {}

    def keys(self, uri: str, kid: str | None) -> list[dict[str, Any]]:
        moment = time.monotonic()
        with self._lock:
            entry = self._entries.get(uri)
        if entry is not None:
            fetched, found = entry
            fresh = moment - fetched < JWKS_CACHE_SECONDS
            known = kid is None or any(key.get("kid") == kid for key in found)
            if fresh and (known or moment - fetched < JWKS_REFRESH_SECONDS):
                return found
        found = self._fetch(uri)
        with self._lock:
            self._entries[uri] = (time.monotonic(), found)
        return found

    @staticmethod
    def _fetch(uri: str) -> list[dict[str, Any]]:
        try:
            with httpx.Client(timeout=JWKS_TIMEOUT_SECONDS, follow_redirects=False) as client:
                response = client.get(uri, headers={"Accept": "application/json"})
            if response.status_code != 200 or len(response.content) > JWKS_MAX_BYTES:
                raise OAuthError("invalid_client", "the client's JWKS URL did not answer a JWK Set")
            found = response.json().get("keys")
        except (httpx.HTTPError, ValueError, AttributeError) as error:
            raise OAuthError("invalid_client", "the client's JWKS URL could not be read") from error
        if not isinstance(found, list):
            raise OAuthError("invalid_client", "the client's JWKS URL did not answer a JWK Set")
        return [key for key in found if isinstance(key, dict) and "d" not in key]


JWKS_CACHE = JwksCache()


def _client_keys(client: SmartClient, header: dict[str, Any]) -> list[dict[str, Any]]:
    jku = header.get("jku")
    if jku is not None and jku != client.jwks_uri:
        raise OAuthError("invalid_client", "the assertion's jku header is not the client's registered JWKS URL")
    if client.jwks_uri:
        return JWKS_CACHE.keys(client.jwks_uri, header.get("kid"))
    return json.loads(client.jwks)["keys"] if client.jwks else []


# ---------------------------------------------------------------- token endpoint


@dataclass(frozen=True)
class Issued:
    access_token: str
    expires_in: int
    scope: str
    client: SmartClient

    def body(self) -> dict[str, Any]:
        return {
            "access_token": self.access_token,
            "token_type": "bearer",
            "expires_in": self.expires_in,
            "scope": self.scope,
        }


def token(engine: Engine, settings: Any, form: dict[str, str], token_url: str) -> Issued:
    """Answer one token request (the form's fields), or raise OAuthError; nothing is issued on any failure."""
    grant_type = form.get("grant_type")
    if not grant_type:
        raise OAuthError("invalid_request", "grant_type is required")
    if grant_type != "client_credentials":
        raise OAuthError("unsupported_grant_type", "only grant_type=client_credentials is supported")
    if form.get("client_assertion_type") != ASSERTION_TYPE:
        raise OAuthError(
            "invalid_request" if not form.get("client_assertion_type") else "invalid_client",
            f"client_assertion_type must be {ASSERTION_TYPE}",
        )
    assertion = form.get("client_assertion")
    if not assertion:
        raise OAuthError("invalid_request", "client_assertion is required")
    if "scope" not in form:
        raise OAuthError("invalid_request", "scope is required")
    if len(assertion) > MAX_ASSERTION_BYTES:
        raise OAuthError("invalid_client", "client_assertion is too large")
    client, claims = _verify_assertion(engine, settings, assertion, token_url)
    granted = grants.grant(form.get("scope", ""), client.scopes)
    if not granted:
        raise OAuthError(
            "invalid_scope",
            "none of the requested scopes can be granted to this client (SMART system scopes within its registration)",
        )
    _use_jti(engine, client.id, claims["jti"], claims["exp"])
    return Issued(
        issue_access_token(settings, client, granted), settings.smart_token_minutes * 60, " ".join(granted), client
    )


def _verify_assertion(
    engine: Engine, settings: Any, assertion: str, token_url: str
) -> tuple[SmartClient, dict[str, Any]]:
    refused = OAuthError("invalid_client", "the client assertion is not valid")
    try:
        header = jwt.get_unverified_header(assertion)
        unverified = jwt.get_unverified_claims(assertion)
    except JWTError as error:
        raise OAuthError("invalid_client", "client_assertion is not a JWT") from error
    algorithm = header.get("alg")
    if algorithm not in ASSERTION_ALGORITHMS:
        raise OAuthError("invalid_client", f"the assertion must be signed RS384 or ES384, not {algorithm!r}")
    issuer, subject = unverified.get("iss"), unverified.get("sub")
    if not isinstance(issuer, str) or not issuer or issuer != subject:
        raise OAuthError("invalid_client", "the assertion's iss and sub must both be the client id")
    client = get_client(engine, issuer)
    if client is None or not client.enabled:
        raise OAuthError("invalid_client", "the client is not registered, or is disabled")
    if unverified.get("aud") != token_url and not (
        isinstance(unverified.get("aud"), list) and unverified["aud"] == [token_url]
    ):
        raise OAuthError("invalid_client", f"the assertion's aud must be the token URL {token_url}")
    expires = unverified.get("exp")
    moment = now().timestamp()
    leeway = settings.jwt_leeway_seconds
    if not isinstance(expires, (int, float)) or expires <= moment - leeway:
        raise OAuthError("invalid_client", "the assertion has no exp, or has expired")
    if expires > moment + MAX_ASSERTION_SECONDS + leeway:
        raise OAuthError("invalid_client", "the assertion's exp must be at most 5 minutes ahead")
    jti = unverified.get("jti")
    if not isinstance(jti, str) or not jti or len(jti) > 255:
        raise OAuthError("invalid_client", "the assertion needs a jti (at most 255 characters)")
    expected_kty = "EC" if algorithm.startswith("ES") else "RSA"
    candidates = [
        key
        for key in _client_keys(client, header)
        if key.get("kty") == expected_kty
        and ("kid" not in header or key.get("kid") == header["kid"])
        and key.get("alg") in (None, algorithm)
    ]
    for candidate in candidates:
        try:
            claims = jwt.decode(
                assertion,
                jwk.construct(candidate, algorithm=algorithm),
                algorithms=[algorithm],
                audience=token_url,
                issuer=client.id,
                options={
                    "require_exp": True,
                    "require_sub": True,
                    "require_jti": True,
                    "verify_at_hash": False,
                    "leeway": leeway,
                },
            )
        except (JWTError, ValueError):
            continue
        return client, claims
    raise refused


def _use_jti(engine: Engine, client_id: str, jti: str, expires: float) -> None:
    """Record the jti (until the assertion expires); one already there is a replay."""
    moment = now()
    try:
        with transaction(engine) as session:
            session.execute(delete(UsedAssertion).where(UsedAssertion.expires_at < moment - timedelta(minutes=10)))
            session.execute(
                insert(UsedAssertion).values(
                    client_id=client_id, jti=jti, expires_at=datetime.fromtimestamp(expires, UTC) + timedelta(minutes=1)
                )
            )
    except IntegrityError as error:
        raise OAuthError("invalid_client", "this client assertion (jti) was already used") from error


def issuer(settings: Any) -> str:
    return settings.jwt_issuer + ISSUER_SUFFIX


def issue_access_token(settings: Any, client: SmartClient, granted: list[str]) -> str:
    server = keys.load(settings)
    moment = now()
    claims: dict[str, Any] = {
        "iss": issuer(settings),
        "aud": settings.jwt_audience,
        "sub": client.id,
        "client_id": client.id,
        "roles": [client.role],
        "scope": " ".join(granted),
        "jti": uuid.uuid4().hex,
        "iat": int(moment.timestamp()),
        "exp": int((moment + timedelta(minutes=settings.smart_token_minutes)).timestamp()),
    }
    if client.role not in STUDY_WIDE_ROLES:
        claims["sites"] = [client.site]
    key = server.signing
    return jwt.encode(claims, key, algorithm=key.get("alg", keys.ALGORITHM), headers={"kid": key["kid"]})


# ---------------------------------------------------------------- verifying this server's access tokens


class SmartTokens:
    """Plugged into the TokenVerifier: tokens naming one of this server's key ids are checked here."""

    def __init__(self, settings: Any, engine: Engine):
        self.settings, self.engine = settings, engine

    def owns(self, header: dict[str, Any]) -> bool:
        return isinstance(header.get("kid"), str) and header["kid"] in keys.load(self.settings).kids

    def verify(self, token_text: str, header: dict[str, Any], error: type[Exception]) -> Actor:
        server = keys.load(self.settings)
        algorithm = header.get("alg")
        if algorithm != keys.ALGORITHM:
            raise error(f"token algorithm {algorithm!r} is not accepted")
        try:
            claims = jwt.decode(
                token_text,
                server.verifying_key(header["kid"]),
                algorithms=[keys.ALGORITHM],
                audience=self.settings.jwt_audience,
                issuer=issuer(self.settings),
                options={
                    "require_exp": True,
                    "require_iat": True,
                    "require_sub": True,
                    "leeway": self.settings.jwt_leeway_seconds,
                },
            )
        except JWTError as problem:
            raise error(f"token refused: {problem}") from problem
        client = get_client(self.engine, str(claims.get("client_id") or ""))
        if client is None or not client.enabled or client.id != claims["sub"]:
            raise error("token refused: its client is disabled or not registered")
        roles = claims.get("roles")
        if roles != [client.role] or client.role not in ROLES:
            raise error("token roles claim does not match its client")
        return Actor(
            sub=client.id,
            roles=frozenset(roles),
            sites=frozenset([client.site]) if client.role not in STUDY_WIDE_ROLES else None,
            scopes=frozenset(str(claims.get("scope", "")).split()),
        )
