"""The JavaScript client fhir-kit-client (npm) against the real server, in a Node script (issue 12, item 6):
capabilityStatement, CRUD, search + nextPage, transaction, history, patch. Runs when node and npm are on the
machine; under CI=true it must run (a missing node or a failed install fails, never skips)."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.fhir_builders import MRN

VERSION = "2.0.3"
SCRIPT = Path(__file__).parent / "js" / "fhir_kit_client.mjs"


@pytest.fixture(scope="session")
def fhir_kit(pytestconfig) -> Path:
    """The package, installed once into the pytest cache (npm only: nothing else to install)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        if os.environ.get("CI") == "true":
            pytest.fail("node and npm are needed for the fhir-kit-client test under CI")
        pytest.skip("node or npm is not on this machine")
    where = pytestconfig.cache.mkdir("fhir-kit")
    module = where / "node_modules" / "fhir-kit-client" / "dist" / "client.js"
    installed = where / "node_modules" / "fhir-kit-client" / "package.json"
    if not installed.exists() or json.loads(installed.read_text())["version"] != VERSION:
        done = subprocess.run(
            [
                npm,
                "install",
                "--prefix",
                str(where),
                "--no-audit",
                "--no-fund",
                "--silent",
                f"fhir-kit-client@{VERSION}",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, f"npm install fhir-kit-client failed: {done.stderr[-2000:]}"
    assert module.exists(), module
    return module


def test_fhir_kit_client_capability_crud_search_paging_transaction_history_patch(server, fhir_kit):
    token = server.token("ehr", "S01")
    done = subprocess.run(
        ["node", str(SCRIPT), str(fhir_kit), f"{server.base_url}/fhir", token, MRN["S01"]],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["done"] == [
        "capabilityStatement",
        "create",
        "read",
        "update",
        "transaction",
        "search",
        "nextPage",
        "patch",
        "history",
        "typeHistory",
        "systemHistory",
        "delete",
    ]
