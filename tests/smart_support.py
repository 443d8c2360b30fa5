"""Machine clients for the tests: real RSA/EC key pairs, JWKS, signed client assertions, token requests."""

import base64
import hashlib
import hmac
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jose import jwk, jwt

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@dataclass
class KeyPair:
    algorithm: str
    private_pem: bytes
    public_jwk: dict[str, Any]
    private_jwk: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def new(cls, algorithm: str = "ES384", kid: str | None = None) -> "KeyPair":
        if algorithm.startswith("ES"):
            private = ec.generate_private_key(ec.SECP384R1() if algorithm == "ES384" else ec.SECP256R1())
        else:
            private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        private_pem = private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        public_pem = private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        kid = kid or uuid.uuid4().hex
        public = jwk.construct(public_pem, algorithm=algorithm).to_dict()
        public = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in public.items()} | {
            "kid": kid,
            "alg": algorithm,
        }
        full = jwk.construct(private_pem, algorithm=algorithm).to_dict()
        full = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in full.items()} | {
            "kid": kid,
            "alg": algorithm,
        }
        return cls(algorithm, private_pem, public, full)

    @property
    def public_pem(self) -> bytes:
        return jwk.construct(self.public_jwk, algorithm=self.algorithm).to_pem()

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.public_jwk]}


def assertion(
    key: KeyPair,
    client_id: str,
    token_url: str,
    *,
    exp_in: int = 240,
    jti: str | None = None,
    headers: dict[str, Any] | None = None,
    **claims: Any,
) -> str:
    now = int(time.time())
    body = {
        "iss": client_id,
        "sub": client_id,
        "aud": token_url,
        "exp": now + exp_in,
        "jti": uuid.uuid4().hex if jti is None else jti,
        "iat": now,
    } | claims
    return jwt.encode(
        body,
        key.private_pem.decode(),
        algorithm=key.algorithm,
        headers={"kid": key.public_jwk["kid"], "typ": "JWT"} | (headers or {}),
    )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(header: dict[str, Any], claims: dict[str, Any], secret: bytes | None = None) -> str:
    """A JWT with `alg` none (no signature) or HS256 keyed with `secret` (e.g. the client's public key)."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    signature = b"" if secret is None else hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def token_request(base_url: str, client_assertion: str, scope: str = "system/*.rs", **extra: str) -> httpx.Response:
    form = {
        "grant_type": "client_credentials",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": client_assertion,
        "scope": scope,
    } | extra
    return httpx.post(f"{base_url}/auth/token", data=form, timeout=30)


def register(
    server,
    key: KeyPair | None,
    *,
    role: str = "sponsor",
    site: str | None = None,
    scopes: str = "system/*.rs",
    jwks_uri: str | None = None,
    name: str = "test-client",
) -> dict[str, Any]:
    body: dict[str, Any] = {"name": name, "role": role, "site": site, "scopes": scopes}
    if jwks_uri:
        body["jwks_uri"] = jwks_uri
    else:
        body["jwks"] = key.jwks()
    with server.client("admin") as admin:
        answer = admin.post("/api/v1/admin/clients", json=body)
    assert answer.status_code == 201, answer.text
    return answer.json()
