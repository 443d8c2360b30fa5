"""Role combinations (issue 17, finding 3): one rule in the policy, checked when the token is verified.

A token's roles are granted as a union, so two pairs would widen access: `ehr` (a system that reads back only
what it pushed) with any other role, and `sponsor` (de-identified data only) with a role that reads
identifiers. Such a token is refused with 401 naming the reason, on both doors; other combinations work.
"""

import time

import pytest
from jose import jwt

from ecrf.auth.policy import PERMISSIONS, combination_refusal


def _token(server, roles, sites=("S01",)):
    now = int(time.time())
    claims = {
        "sub": "mixed",
        "roles": list(roles),
        "iat": now,
        "exp": now + 300,
        "iss": server.settings.jwt_issuer,
        "aud": server.settings.jwt_audience,
    }
    if sites:
        claims["sites"] = list(sites)
    return jwt.encode(claims, server.settings.jwt_secret, algorithm="HS256")


REFUSED = [
    ["ehr", "sponsor"],
    ["ehr", "admin"],
    ["ehr", "investigator"],
    ["ehr", "coordinator"],
    ["ehr", "monitor"],
    ["ehr", "data_manager"],
    ["sponsor", "investigator"],
    ["sponsor", "data_manager"],
    ["sponsor", "coordinator"],
    ["sponsor", "monitor"],
    ["sponsor", "admin", "monitor"],
]


@pytest.mark.parametrize("roles", REFUSED, ids="+".join)
def test_widening_combinations_are_refused_with_the_reason(server, roles):
    token = _token(server, roles)
    with server.client() as http:
        for path in ("/api/v1/study", "/fhir/Patient?_count=1", "/api/v1/subjects?site=S01"):
            response = http.get(path, headers={"Authorization": f"Bearer {token}"})
            assert response.status_code == 401, (path, response.text)
            assert "cannot be combined" in response.text


@pytest.mark.parametrize(
    "roles",
    [["investigator", "coordinator"], ["monitor", "data_manager"], ["sponsor", "admin"], ["investigator", "admin"]],
    ids="+".join,
)
def test_other_combinations_are_accepted(server, roles):
    with server.client() as http:
        response = http.get("/api/v1/study", headers={"Authorization": f"Bearer {_token(server, roles)}"})
    assert response.status_code == 200, response.text


def test_the_rule_follows_the_policy_table():
    """`sponsor` is refused with exactly the roles the policy lets read identifiers, whatever they are."""
    for role in PERMISSIONS["identifiers.read"]:
        assert combination_refusal({"sponsor", role})
    assert combination_refusal({"sponsor", "admin"}) is None
    assert combination_refusal({"ehr"}) is None and combination_refusal({"sponsor"}) is None
