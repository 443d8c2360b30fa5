"""SMART Backend Services (issue 13): discovery, the token endpoint and every way it must refuse, the client
registry, and this server's access tokens on the FHIR door. Real key pairs, real signed JWTs, real HTTP."""

import json
import os
import stat
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from jose import jwt
from smart_support import ASSERTION_TYPE, KeyPair, assertion, register, token_request, unsigned
from sqlalchemy import func, select

from ecrf.smart import keys
from ecrf.smart.models import UsedAssertion

FHIR_JSON = {"Content-Type": "application/fhir+json"}


def token_url(server) -> str:
    return f"{server.base_url}/auth/token"


def used(server) -> int:
    with server.runtime.engine.connect() as connection:
        return connection.execute(select(func.count()).select_from(UsedAssertion)).scalar_one()


def refused(response: httpx.Response, error: str, status: int = 401) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == error, body
    assert "access_token" not in body
    assert response.headers["cache-control"] == "no-store"


def test_discovery_names_the_token_endpoint(server):
    config = httpx.get(f"{server.base_url}/fhir/.well-known/smart-configuration").json()
    assert config["token_endpoint"] == token_url(server)
    assert config["grant_types_supported"] == ["client_credentials"]
    assert config["token_endpoint_auth_methods_supported"] == ["private_key_jwt"]
    assert config["token_endpoint_auth_signing_alg_values_supported"] == ["RS384", "ES384"]
    assert {"client-confidential-asymmetric", "permission-v2"} <= set(config["capabilities"])
    assert "system/*.rs" in config["scopes_supported"]
    metadata = httpx.get(f"{server.base_url}/fhir/metadata").json()
    security = metadata["rest"][0]["security"]
    uris = next(
        e
        for e in security["extension"]
        if e["url"] == "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
    )
    assert {"url": "token", "valueUri": token_url(server)} in uris["extension"]
    assert "http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data" in metadata["instantiates"]


def test_server_keys_are_kept_private_and_only_public_parts_published(server):
    published = httpx.get(f"{server.base_url}/auth/jwks").json()["keys"]
    assert published and all("d" not in key and key["kty"] == "EC" and key["kid"] for key in published)
    path = keys.key_file(server.settings)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


@pytest.mark.parametrize("algorithm", ["ES384", "RS384"])
def test_a_registered_client_gets_a_short_token_that_works_on_the_fhir_door(server, algorithm):
    key = KeyPair.new(algorithm)
    client = register(
        server, key, role="ehr", site="S01", scopes="system/Patient.cs system/Observation.cs system/Observation.r"
    )
    answer = token_request(
        server.base_url,
        assertion(key, client["id"], token_url(server)),
        scope="system/Observation.crs system/Patient.cruds system/Condition.rs openid",
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["token_type"] == "bearer" and 0 < body["expires_in"] <= 300
    assert body["scope"].split() == ["system/Observation.crs", "system/Patient.cs"]  # requested ∩ registered
    header = jwt.get_unverified_header(body["access_token"])
    assert header["alg"] == "ES256" and header["kid"] in {
        k["kid"] for k in httpx.get(f"{server.base_url}/auth/jwks").json()["keys"]
    }
    bearer = {"Authorization": f"Bearer {body['access_token']}"}
    mrn = uuid.uuid4().hex[:10]
    patient = {"resourceType": "Patient", "identifier": [{"system": "urn:test:smart", "value": mrn}]}
    created = httpx.post(f"{server.base_url}/fhir/Patient", json=patient, headers=bearer | FHIR_JSON)
    assert created.status_code == 201, created.text
    # its role's rules hold: an ehr may not export, and its scopes do not grant Condition
    assert httpx.get(f"{server.base_url}/fhir/Condition", headers=bearer).status_code == 403
    assert httpx.get(f"{server.base_url}/fhir/$export", headers=bearer | {"Prefer": "respond-async"}).status_code == 403


def _attack(server, key, client_id, **kwargs):
    return assertion(key, client_id, token_url(server), **kwargs)


ATTACKS = {
    "wrong aud": lambda s, k, c: assertion(k, c, s.base_url + "/fhir"),
    "expired": lambda s, k, c: _attack(s, k, c, exp_in=-120),
    "exp too far ahead": lambda s, k, c: _attack(s, k, c, exp_in=3600),
    "no jti": lambda s, k, c: _attack(s, k, c, jti=""),
    "iss is not sub": lambda s, k, c: assertion(k, c, token_url(s), sub="someone-else"),
    "key not in the jwks": lambda s, k, c: assertion(KeyPair.new("ES384", kid=k.public_jwk["kid"]), c, token_url(s)),
    "unknown kid": lambda s, k, c: assertion(KeyPair.new("ES384"), c, token_url(s)),
    "alg none": lambda s, k, c: unsigned(
        {"alg": "none", "typ": "JWT", "kid": k.public_jwk["kid"]},
        {"iss": c, "sub": c, "aud": token_url(s), "exp": int(time.time()) + 200, "jti": uuid.uuid4().hex},
    ),
    "HS256 keyed with the public key": lambda s, k, c: unsigned(
        {"alg": "HS256", "typ": "JWT", "kid": k.public_jwk["kid"]},
        {"iss": c, "sub": c, "aud": token_url(s), "exp": int(time.time()) + 200, "jti": uuid.uuid4().hex},
        k.public_pem,
    ),
    "RS256 (not RS384/ES384)": lambda s, k, c: assertion(
        KeyPair.new("RS256", kid=k.public_jwk["kid"]), c, token_url(s)
    ),
    "bad jku": lambda s, k, c: _attack(s, k, c, headers={"jku": "https://attacker.example/jwks"}),
    "unregistered client": lambda s, k, c: assertion(k, "not-a-client", token_url(s)),
    "not a JWT": lambda s, k, c: "garbage",
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_token_endpoint_refuses_forged_or_unfit_assertions(server, attack):
    key = KeyPair.new("ES384")
    client = register(server, key)
    before = used(server)
    refused(token_request(server.base_url, ATTACKS[attack](server, key, client["id"])), "invalid_client")
    assert used(server) == before  # nothing recorded, nothing issued


def test_a_replayed_assertion_is_refused(server):
    key = KeyPair.new("RS384")
    client = register(server, key)
    signed = assertion(key, client["id"], token_url(server))
    assert token_request(server.base_url, signed).status_code == 200
    refused(token_request(server.base_url, signed), "invalid_client")


def test_a_disabled_client_gets_no_token_and_its_tokens_stop_at_once(server):
    key = KeyPair.new("ES384")
    client = register(server, key)
    issued = token_request(server.base_url, assertion(key, client["id"], token_url(server))).json()["access_token"]
    bearer = {"Authorization": f"Bearer {issued}", "Prefer": "respond-async"}
    assert httpx.get(f"{server.base_url}/fhir/$export?_type=Patient", headers=bearer).status_code == 202
    with server.client("admin") as admin:
        assert (
            admin.post(f"/api/v1/admin/clients/{client['id']}/disable", json={"reason": "key leaked"}).json()["enabled"]
            is False
        )
    assert httpx.get(f"{server.base_url}/fhir/$export?_type=Patient", headers=bearer).status_code == 401
    refused(token_request(server.base_url, assertion(key, client["id"], token_url(server))), "invalid_client")
    with server.client("admin") as admin:
        assert admin.post(f"/api/v1/admin/clients/{client['id']}/enable").json()["enabled"] is True
    assert httpx.get(f"{server.base_url}/fhir/$export?_type=Patient", headers=bearer).status_code == 202


@pytest.mark.parametrize(
    "scope",
    [
        "system/Observation.cruds",
        "system/Patient.write",
        "launch fhirUser",
        "",
        "system/UnknownResource.read",
        "system/Patient.xyz",
        "patient/*.rs",
    ],
)
def test_scopes_beyond_the_registration_are_invalid_scope(server, scope):
    key = KeyPair.new("ES384")
    client = register(server, key, scopes="system/Patient.rs")
    before = used(server)
    refused(
        token_request(server.base_url, assertion(key, client["id"], token_url(server)), scope=scope),
        "invalid_scope",
        400,
    )
    assert used(server) == before


@pytest.mark.parametrize(
    "scope, granted",
    [
        ("system/*.read", "system/*.read"),
        ("system/Patient.*", "system/Patient.rs"),
        ("system/*.rs", "system/*.rs"),
        ("system/Patient.read system/Observation.rs", "system/Observation.rs system/Patient.read"),
        ("system/*.cruds", "system/*.rs"),
        ("system/Patient.cruds", "system/Patient.rs"),
    ],
)
def test_v1_and_v2_scopes_are_granted_as_v2_within_the_registration(server, scope, granted):
    key = KeyPair.new("ES384")
    client = register(server, key)
    answer = token_request(server.base_url, assertion(key, client["id"], token_url(server)), scope=scope)
    assert answer.status_code == 200 and answer.json()["scope"] == granted


def test_form_errors_are_rfc6749(server):
    key = KeyPair.new("ES384")
    client = register(server, key)
    signed = assertion(key, client["id"], token_url(server))
    as_json = httpx.post(token_url(server), json={"grant_type": "client_credentials", "client_assertion": signed})
    refused(as_json, "invalid_request", 400)
    refused(token_request(server.base_url, signed, grant_type="password"), "unsupported_grant_type", 400)
    refused(token_request(server.base_url, signed, client_assertion_type="urn:other"), "invalid_client")
    form = {"grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE, "client_assertion": signed}
    refused(httpx.post(token_url(server), data=form), "invalid_request", 400)  # no scope


class _Jwks(BaseHTTPRequestHandler):
    document: dict = {}
    fetches = 0

    def do_GET(self):  # noqa: N802
        type(self).fetches += 1
        body = json.dumps(type(self).document).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_a_jwks_url_is_fetched_cached_and_refetched_for_a_new_key(server):
    first, second = KeyPair.new("ES384"), KeyPair.new("RS384")
    handler = type("Handler", (_Jwks,), {"document": first.jwks(), "fetches": 0})
    host = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=host.serve_forever, daemon=True).start()
    uri = f"http://127.0.0.1:{host.server_address[1]}/jwks.json"
    try:
        client = register(server, None, jwks_uri=uri)
        for _ in range(2):
            assert (
                token_request(
                    server.base_url, assertion(first, client["id"], token_url(server), headers={"jku": uri})
                ).status_code
                == 200
            )
        assert handler.fetches == 1  # cached
        handler.document = {"keys": [first.public_jwk, second.public_jwk]}  # rotation: a new key, a new kid
        time.sleep(10.5)
        assert token_request(server.base_url, assertion(second, client["id"], token_url(server))).status_code == 200
        assert handler.fetches == 2
    finally:
        host.shutdown()


def test_the_registry_is_admin_only_audited_and_never_shows_key_material(server):
    key = KeyPair.new("ES384")
    body = {"name": "lab", "role": "ehr", "site": "S01", "scopes": "system/Observation.cs", "jwks": key.jwks()}
    for role in ("data_manager", "sponsor", "ehr"):
        with server.client(role, "S01") as other:
            assert other.post("/api/v1/admin/clients", json=body).status_code == 403
            assert other.get("/api/v1/admin/clients").status_code == 403
    with server.client("admin") as admin:
        private = admin.post("/api/v1/admin/clients", json=body | {"jwks": {"keys": [key.private_jwk]}})
        assert private.status_code == 422 and private.json()["errors"][0]["item"] == "jwks"
        assert key.private_jwk["d"] not in private.text
        assert admin.post("/api/v1/admin/clients", json=body | {"site": None}).json()["errors"][0]["item"] == "site"
        assert admin.post("/api/v1/admin/clients", json=body | {"scopes": "system/Obs.xyz"}).status_code == 422
        created = admin.post("/api/v1/admin/clients", json=body)
        assert created.status_code == 201
        listed = admin.get("/api/v1/admin/clients")
        assert created.json()["id"] in {c["id"] for c in listed.json()}
        assert key.public_jwk["x"] not in listed.text and key.public_jwk["x"] not in created.text
        assert admin.post("/api/v1/admin/clients/nope/disable").status_code == 404
    with server.runtime.engine.connect() as connection:
        from sqlalchemy import text

        actions = (
            connection.execute(
                text("SELECT action FROM audit_entry WHERE resource = :r"), {"r": f"Client/{created.json()['id']}"}
            )
            .scalars()
            .all()
        )
    assert actions == ["client.add"]


def test_cli_registers_lists_and_disables(tmp_path):
    import subprocess
    import sys

    key = KeyPair.new("ES384")
    (tmp_path / "key.jwks").write_text(json.dumps(key.jwks()))
    env = os.environ | {"ECRF_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}"}
    ecrf = [sys.executable, "-m", "ecrf.cli", "client"]
    added = subprocess.run(
        [
            *ecrf,
            "add",
            "--name",
            "lab-engine",
            "--role",
            "ehr",
            "--site",
            "S01",
            "--scope",
            "system/Observation.cs system/Patient.cs",
            "--jwks-file",
            str(tmp_path / "key.jwks"),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    client_id = added.stdout.strip().splitlines()[-1]
    assert len(client_id) == 32 and key.public_jwk["x"] not in added.stdout
    listed = subprocess.run([*ecrf, "list"], env=env, capture_output=True, text=True, check=True).stdout
    assert f"{client_id}\tlab-engine\tehr\tS01\tenabled" in listed
    subprocess.run([*ecrf, "disable", client_id], env=env, check=True, capture_output=True)
    assert "\tdisabled\t" in subprocess.run([*ecrf, "list"], env=env, capture_output=True, text=True).stdout
    bad = subprocess.run(
        [
            *ecrf,
            "add",
            "--name",
            "x",
            "--role",
            "ehr",
            "--scope",
            "system/Patient.rs",
            "--jwks-file",
            str(tmp_path / "key.jwks"),
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "site" in bad.stderr
