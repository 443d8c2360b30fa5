"""Production token verification against a JWKS: each known attack on JWTs is refused with 401."""

import json
import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jose import jwk, jwt

from ecrf.config import Settings
from tests.conftest import running_server


def _pem(private_key) -> bytes:
    return private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _public_pem(private_key) -> bytes:
    return private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
OTHER_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def idp_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("idp")
    keys = [
        {**jwk.construct(_public_pem(RSA_KEY), "RS256").to_dict(), "kid": "rsa-1", "use": "sig"},
        {**jwk.construct(_public_pem(EC_KEY), "ES256").to_dict(), "kid": "ec-1", "use": "sig"},
    ]
    (folder / "jwks.json").write_text(json.dumps({"keys": keys}))
    settings = Settings(
        database_url=f"sqlite:///{folder / 'idp.db'}",
        jwks_file=folder / "jwks.json",
        jwt_issuer="https://idp.hospital.example",
        jwt_audience="ecrf-prod",
        _env_file=None,
    )
    with running_server(settings) as running:
        yield running


def _claims(**overrides):
    now = int(time.time())
    claims = {
        "sub": "dr-who",
        "roles": ["investigator"],
        "sites": ["S01"],
        "iat": now,
        "exp": now + 300,
        "iss": "https://idp.hospital.example",
        "aud": "ecrf-prod",
    }
    claims.update(overrides)
    return {key: value for key, value in claims.items() if value is not None}


def _status(server, token: str) -> int:
    with server.client() as http:
        return http.get("/api/v1/study", headers={"Authorization": f"Bearer {token}"}).status_code


def test_rs256_and_es256_tokens_with_known_keys_are_accepted(idp_server):
    assert _status(idp_server, jwt.encode(_claims(), _pem(RSA_KEY), "RS256", headers={"kid": "rsa-1"})) == 200
    assert _status(idp_server, jwt.encode(_claims(), _pem(EC_KEY), "ES256", headers={"kid": "ec-1"})) == 200


@pytest.mark.parametrize(
    "attack",
    [
        "unknown_kid",
        "no_kid",
        "foreign_key",
        "hs256_with_public_key",
        "alg_none",
        "kid_of_other_key_type",
        "future_nbf",
        "future_iat",
        "expired",
        "no_audience",
        "oversized",
    ],
)
def test_attacks_are_refused(idp_server, attack):
    rsa_pem = _pem(RSA_KEY)
    token = {
        "unknown_kid": lambda: jwt.encode(_claims(), rsa_pem, "RS256", headers={"kid": "rsa-9"}),
        "no_kid": lambda: jwt.encode(_claims(), rsa_pem, "RS256"),
        "foreign_key": lambda: jwt.encode(_claims(), _pem(OTHER_RSA_KEY), "RS256", headers={"kid": "rsa-1"}),
        # the classic confusion: an HMAC token keyed with the server's own public key
        "hs256_with_public_key": lambda: _hmac_with_public_key(),
        "alg_none": lambda: _unsigned(),
        "kid_of_other_key_type": lambda: jwt.encode(_claims(), rsa_pem, "RS256", headers={"kid": "ec-1"}),
        "future_nbf": lambda: jwt.encode(
            _claims(nbf=int(time.time()) + 3600), rsa_pem, "RS256", headers={"kid": "rsa-1"}
        ),
        "future_iat": lambda: jwt.encode(
            _claims(iat=int(time.time()) + 3600), rsa_pem, "RS256", headers={"kid": "rsa-1"}
        ),
        "expired": lambda: jwt.encode(_claims(exp=int(time.time()) - 120), rsa_pem, "RS256", headers={"kid": "rsa-1"}),
        "no_audience": lambda: jwt.encode(_claims(aud=None), rsa_pem, "RS256", headers={"kid": "rsa-1"}),
        "oversized": lambda: jwt.encode(_claims(padding="x" * 9000), rsa_pem, "RS256", headers={"kid": "rsa-1"}),
    }[attack]()
    assert _status(idp_server, token) == 401


def _hmac_with_public_key() -> str:
    import base64
    import hashlib
    import hmac

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = (
        f"{b64(json.dumps({'alg': 'HS256', 'typ': 'JWT', 'kid': 'rsa-1'}).encode())}."
        f"{b64(json.dumps(_claims()).encode())}"
    )
    signature = hmac.new(_public_pem(RSA_KEY), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def _unsigned() -> str:
    import base64

    def b64(data: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{b64({'alg': 'none', 'typ': 'JWT', 'kid': 'rsa-1'})}.{b64(_claims())}."


def test_mixing_hmac_and_asymmetric_algorithms_is_a_configuration_error(tmp_path):
    from ecrf.auth.tokens import TokenVerifier

    with pytest.raises(ValueError, match="one family"):
        TokenVerifier(Settings(database_url="sqlite://", jwt_algorithms="HS256,RS256", jwt_secret="s", _env_file=None))
