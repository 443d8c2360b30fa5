"""SMART's own tools against a real `ecrf serve` with SMART Backend Services (issue 13): the Bulk Data Tester
(BDT) and the reference bulk-data-client, from ../shared/tools (copied out, `npm ci`-ed once into
.pytest_cache/d/smart-tools/). Each authenticates with its own registered key: no pre-issued token.

Without node and npm these tests skip, except under CI=true, where they must run. BDT tests still failing are
listed in TOOL_DEFECTS with the reason each is the tool's (README, "SMART Backend Services").
"""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from smart_support import KeyPair

from testkit.databases import fresh_database
from testkit.net import free_port
from testkit.servers import wait_until_healthy

TOOLS = Path(__file__).resolve().parent.parent.parent / "shared" / "tools"
STUDY = "NCT04163237"
TOOL_DEFECTS = {
    # BDT's own regular expression for application/fhir+json leaves the "+" unescaped (shared/tools/README.md)
    "Exports can be canceled",
    # BDT posts the same client assertion (one jti) for every scope in its loop; SMART Backend Services has
    # the server refuse a jti seen before, so from the second request on it gets invalid_client
    "Handles V1 scopes correctly",
    "Handles V2 scopes correctly",
    # BDT looks for OperationOutcome resources inline in the manifest's error array; the Bulk Data IG's
    # manifest lists error *files* ({type, url, count}), which is what this server sends
    "Includes lenient errors in the payload errors array",
}
NOT_APPLICABLE = {"Supports binary file attachments in DocumentReference resources"}  # no DocumentReference kept


def _node_or_skip() -> None:
    if shutil.which("node") and shutil.which("npm"):
        return
    if os.environ.get("CI") == "true":
        pytest.fail("node and npm are needed in CI for BDT and bulk-data-client")
    pytest.skip("node and npm are not on this machine")


def _install(cache: Path, name: str, patch: Path | None = None) -> Path:
    source = TOOLS / name
    stamp = hashlib.sha256(
        (source / "package-lock.json").read_bytes() + (patch.read_bytes() if patch else b"")
    ).hexdigest()
    target = cache / name
    if (target / ".installed").is_file() and (target / ".installed").read_text() == stamp:
        return target
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target)
    subprocess.run(
        ["npm", "ci", "--omit=dev", "--engine-strict=false", "--no-audit", "--no-fund"],
        cwd=target,
        check=True,
        capture_output=True,
        timeout=900,
    )
    if patch:
        subprocess.run(["patch", "-p0"], stdin=patch.open("rb"), cwd=target, check=True, capture_output=True)
    (target / ".installed").write_text(stamp)
    return target


@pytest.fixture(scope="session")
def tools(request) -> dict[str, Path]:
    if not TOOLS.is_dir():  # the tools come with ../shared (CI has it); a fresh clone alone skips them
        message = f"needs {TOOLS} (SMART's Bulk Data Tester and bulk-data-client, present in CI)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must have the shared tools: {message}")
        pytest.skip(message)
    _node_or_skip()
    cache = Path(request.config.cache.mkdir("smart-tools"))
    return {
        "bdt": _install(cache, "bdt"),
        "bdc": _install(cache, "bulk-data-client", TOOLS / "bulk-data-client-node20.patch"),
    }


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def deployment(database_url, tmp_path_factory, tools):
    """`ecrf serve` on its own database, a registered sponsor client whose JWKS is published at a URL, and the
    demo subjects loaded through the API."""
    tmp_path = tmp_path_factory.mktemp("smart-tools")
    key = KeyPair.new("ES384")
    (tmp_path / "jwks").mkdir()
    (tmp_path / "jwks" / "client.jwks").write_text(json.dumps(key.jwks()))
    (tmp_path / "private.json").write_text(json.dumps(key.private_jwk))
    handler = lambda *a, **k: _Quiet(*a, directory=str(tmp_path / "jwks"), **k)  # noqa: E731
    jwks_host = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=jwks_host.serve_forever, daemon=True).start()
    jwks_url = f"http://127.0.0.1:{jwks_host.server_address[1]}/client.jwks"
    with fresh_database(database_url, tmp_path) as url:
        env = os.environ | {
            "ECRF_DATABASE_URL": url,
            "ECRF_RATE_LIMIT_PER_MINUTE": "0",
            "ECRF_EXPORT_DIR": str(tmp_path / "exports"),
            "ECRF_JWT_SECRET": "t" * 48,
            "ECRF_STUDY_SECRET": "smart-tools-study-secret",
            # each batch of an export pauses, as a large export's batches take time: BDT checks
            # that the status URL answers 202 while an export runs, which a 3-subject export
            # otherwise finishes before it can ask (flaky on a fast, idle machine)
            "ECRF_EXPORT_BATCH_PAUSE_SECONDS": "0.4",
        }
        ecrf = [sys.executable, "-m", "ecrf.cli"]
        added = subprocess.run(
            [
                *ecrf,
                "client",
                "add",
                "--name",
                "smart-tools",
                "--role",
                "sponsor",
                "--scope",
                "system/*.rs",
                "--jwks-uri",
                jwks_url,
            ],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
        client_id = added.stdout.strip().splitlines()[-1]
        port = free_port()
        log = (tmp_path / "serve.log").open("wb")
        serve = subprocess.Popen(
            [*ecrf, "serve", "--port", str(port)], env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT
        )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_until_healthy(base, serve, seconds=90, log=(tmp_path / "serve.log").read_text, pause=0.3)
            subprocess.run(
                [*ecrf, "demo", "--url", base], env=env, cwd=tmp_path, check=True, capture_output=True, timeout=300
            )
            yield {"base": base, "client_id": client_id, "jwks_url": jwks_url, "dir": tmp_path, "key": key}
        finally:
            serve.terminate()
            serve.wait(30)
            log.close()
            jwks_host.shutdown()


def _counts(output: str) -> dict[str, int]:
    return {
        name: int(value) for name, value in re.findall(r"(succeeded|failed|not supported|skipped) tests: (\d+)", output)
    }


def test_bulk_data_tester(deployment, tools):
    config = deployment["dir"] / "bdt-config.js"
    config.write_text(f"""module.exports = {{
  baseURL: "{deployment["base"]}/fhir",
  authentication: {{
    type: "backend-services", optional: false, clientId: "{deployment["client_id"]}", scope: "system/*.rs",
    tokenEndpoint: "{deployment["base"]}/auth/token",
    privateKey: {json.dumps(deployment["key"].private_jwk)}, tokenSignAlgorithm: "ES384", tokenExpiresIn: "5m",
    jwksUrl: "{deployment["jwks_url"]}", customTokenHeaders: {{ jku: "{deployment["jwks_url"]}" }},
  }},
  requests: {{ strictSSL: false, timeout: 30000, customHeaders: {{}} }},
  systemExportEndpoint: "$export", patientExportEndpoint: "Patient/$export",
  groupExportEndpoint: "Group/{STUDY}/$export", fastestResource: "Patient",
  supportedResourceTypes: ["Patient", "Observation", "ResearchSubject", "Procedure"],
}};
""")
    run = subprocess.run(
        ["node", "build/lib/bin.js", "test", "-c", str(config), "-C", "-v", "never"],
        cwd=tools["bdt"],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    output = run.stdout.replace("\x1b[2K", "\n")
    counts = _counts(output)
    failed = {line.split("✘", 1)[1].split(" (")[0].strip() for line in output.splitlines() if "✘" in line}
    unsupported = {line.split("⊗", 1)[1].split(" (")[0].strip() for line in output.splitlines() if "⊗" in line}
    print(f"BDT: {counts}; failed: {sorted(failed)}; not supported: {sorted(unsupported)}")
    assert counts.get("succeeded", 0) >= 150, output[-3000:]
    assert failed <= TOOL_DEFECTS, (
        f"failing beyond BDT's own defects: {sorted(failed - TOOL_DEFECTS)}\n{output[-6000:]}"
    )
    assert unsupported <= NOT_APPLICABLE
    assert counts["failed"] == len(failed) and counts["not supported"] == len(unsupported)


@pytest.mark.parametrize("level", ["system", "group", "patient"])
def test_bulk_data_client_exports_with_its_own_key(deployment, tools, level):
    config = deployment["dir"] / f"bdc-{level}.js"
    config.write_text(f"""module.exports = {{
  fhirUrl: "{deployment["base"]}/fhir", tokenUrl: "", clientId: "{deployment["client_id"]}",
  privateKey: {json.dumps(deployment["key"].private_jwk)}, scope: "system/*.rs",
  global: {"true" if level == "system" else "false"}, group: "{STUDY if level == "group" else ""}",
  _type: "Patient,Observation", reporter: "text", saveManifest: true,
}};
""")
    destination = deployment["dir"] / f"out-{level}"
    destination.mkdir()
    run = subprocess.run(
        ["node", ".", "--config", str(config), "--reporter", "text", "-d", str(destination)],
        cwd=tools["bdc"],
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    files = sorted(path for path in destination.glob("*.ndjson") if path.name != "log.ndjson")
    by_type: dict[str, list[dict]] = {}
    for path in files:
        for line in path.read_text().splitlines():
            resource = json.loads(line)
            by_type.setdefault(resource["resourceType"], []).append(resource)
    assert set(by_type) == {"Patient", "Observation"}, (run.stdout[-3000:], [f.name for f in files])
    manifest = json.loads((destination / "manifest.json").read_text())
    expected = {entry["type"]: entry["count"] for entry in manifest["output"]}
    assert {name: len(resources) for name, resources in by_type.items()} == expected
    # a sponsor's client: de-identified, whatever the level
    assert all(
        p["meta"]["security"][0]["code"] == "PSEUDED" and "identifier" not in p and "name" not in p
        for p in by_type["Patient"]
    )
