"""JWT header and claim types checked before use (issue 17, findings 4 and 5): anything odd is 401, never 500.

Tokens here are built by hand (header and claims as raw JSON text, then signed with the right key), since
no JWT library writes a repeated key, a list `kid` or `exp: Infinity`: the signature is valid, the shape is not.
"""

import base64
import hashlib
import hmac
import json
import time

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from tests.test_jwt_hardening import RSA_KEY, idp_server  # noqa: F401 - the JWKS-mode server fixture

IDP = {"iss": "https://idp.hospital.example", "aud": "ecrf-prod"}


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()


def _claims_text(iss: str, aud: str, **raw: str) -> str:
    """Claims as JSON text; `raw` values are JSON fragments pasted in as written (so `1e309`, `Infinity`)."""
    now = int(time.time())
    fields = {
        "sub": '"dr-who"',
        "roles": '["investigator"]',
        "sites": '["S01"]',
        "iat": str(now),
        "exp": str(now + 300),
        "iss": json.dumps(iss),
        "aud": json.dumps(aud),
    }
    fields.update(raw)
    return "{" + ", ".join(f'"{key.rstrip("_")}": {value}' for key, value in fields.items()) + "}"


def _hs256(server, header_text: str, claims_text: str) -> str:
    signing_input = f"{_b64(header_text)}.{_b64(claims_text)}"
    signature = hmac.new(server.settings.jwt_secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"


def _rs256(header_text: str, claims_text: str) -> str:
    signing_input = f"{_b64(header_text)}.{_b64(claims_text)}"
    signature = RSA_KEY.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"


def _answer(server, token: str):
    with server.client() as http:
        return http.get("/api/v1/study", headers={"Authorization": f"Bearer {token}"})


def test_hand_built_tokens_are_accepted_when_well_formed(server, idp_server):  # noqa: F811
    """The builders themselves make good tokens: the refusals below are about the shape only."""
    dev = server.settings
    assert (
        _answer(
            server, _hs256(server, '{"alg": "HS256", "typ": "JWT"}', _claims_text(dev.jwt_issuer, dev.jwt_audience))
        ).status_code
        == 200
    )
    assert _answer(idp_server, _rs256('{"alg": "RS256", "kid": "rsa-1"}', _claims_text(**IDP))).status_code == 200


@pytest.mark.parametrize(
    "header",
    [
        '{"alg": "RS256", "kid": ["rsa-1"]}',
        '{"alg": "RS256", "kid": {"k": "rsa-1"}}',
        '{"alg": "RS256", "kid": 1}',
        '{"alg": ["RS256"], "kid": "rsa-1"}',
        '{"alg": {"a": 1}, "kid": "rsa-1"}',
        '{"alg": "RS256", "kid": null}',
        '{"alg": "RS256", "kid": "ec-1", "kid": "rsa-1"}',
        '["RS256"]',
        '{"alg": "RS256", "kid": NaN}',
    ],
    ids=[
        "kid-list",
        "kid-object",
        "kid-number",
        "alg-list",
        "alg-object",
        "kid-null",
        "kid-repeated",
        "header-array",
        "kid-nan",
    ],
)
def test_jwks_mode_odd_headers_are_401(idp_server, header):  # noqa: F811
    response = _answer(idp_server, _rs256(header, _claims_text(**IDP)))
    assert response.status_code == 401, response.text


@pytest.mark.parametrize(
    "claim",
    [
        {"exp": "Infinity"},
        {"exp": "-Infinity"},
        {"exp": "1e309"},
        {"iat": "1e309"},
        {"iat": "-Infinity"},
        {"iat": "Infinity"},
        {"nbf": "-1e309"},
        {"exp": "NaN"},
        {"exp": '"9999999999"'},
        {"iat": '"0"'},
        {"exp": "true"},
        {"exp": "99999999999999999999999"},
        {"exp": "1.0e10"},
        {"roles_": '["sponsor"]'},
        {"sub_": '"someone-else"'},
        {"exp_": "1"},
    ],
    ids=lambda claim: "-".join(f"{k}={v}" for k, v in claim.items()),
)
def test_signed_tokens_with_odd_claims_are_401(server, idp_server, claim):  # noqa: F811
    """A repeated key (`roles_` adds a second `roles` after the first) is refused, not read as its last copy."""
    dev = server.settings
    token = _hs256(server, '{"alg": "HS256", "typ": "JWT"}', _claims_text(dev.jwt_issuer, dev.jwt_audience, **claim))
    response = _answer(server, token)
    assert response.status_code == 401, response.text
    assert (
        _answer(idp_server, _rs256('{"alg": "RS256", "kid": "rsa-1"}', _claims_text(**IDP, **claim))).status_code == 401
    )
