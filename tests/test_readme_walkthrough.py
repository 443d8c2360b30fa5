"""The README's coordinator walk-through, run as written: its shell blocks, in order, against `ecrf serve` on a
fresh SQLite database with the demo's subjects (the README's first command and `ecrf demo`), real curl, real
tokens from `ecrf token`. A step the README shows that the service no longer answers as described fails here."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from testkit.servers import ROOT, ServeProcess

SECTION = "## A subject from randomisation to end of study"

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="the walk-through's commands use curl")


def _blocks() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    assert SECTION in readme, "the README has lost its walk-through"
    section = readme.split(SECTION, 1)[1].split("\n## ", 1)[0]
    blocks = [
        "\n".join(line[3:] if line.startswith("   ") else line for line in block.splitlines())
        for block in re.findall(r"```sh\n(.*?)```", section, flags=re.S)
    ]
    assert len(blocks) >= 5, blocks
    return blocks


def _script(url: str) -> str:
    """The blocks as one script (variables carry from block to block, as in a reader's shell), each block's output
    after a marker line; `.venv/bin/ecrf` is this interpreter's ecrf."""
    steps = [f"printf '\\n@@%s\\n' {index}\n{block}" for index, block in enumerate(_blocks())]
    script = 'set -euo pipefail\necrf() { "$ECRF_PYTHON" -m ecrf.cli "$@"; }\n' + "\n".join(steps) + "\necho\n"
    return script.replace(".venv/bin/ecrf", "ecrf").replace("http://127.0.0.1:8000", url)


def _json_lines(text: str) -> list[dict]:
    found = []
    for chunk in re.split(r"(?<=})(?=\{)|\n", text):
        chunk = chunk.strip()
        if chunk.startswith("{"):
            found.append(json.loads(chunk))
    return found


def test_the_walk_through_runs_as_written(tmp_path: Path):
    with ServeProcess(f"sqlite:///{tmp_path / 'walk.db'}") as server:
        env = {**server.env, "ECRF_PYTHON": sys.executable}
        demo = subprocess.run(
            [sys.executable, "-m", "ecrf.cli", "demo", "--url", server.url],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert demo.returncode == 0, demo.stderr[-2000:]
        run = subprocess.run(
            ["bash", "-c", _script(server.url)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
        )
    assert run.returncode == 0, (run.stdout[-3000:], run.stderr[-3000:])
    outputs = {
        int(index): _json_lines(text) for index, text in re.findall(r"@@(\d+)\n(.*?)(?=\n@@\d+\n|\Z)", run.stdout, re.S)
    }
    randomised = outputs[1][0]
    assert randomised["randomised"] is True and randomised["method"] == "system", randomised
    assert re.fullmatch(r"R-S01-\d{4}", randomised["randomisation_number"])
    exposure = outputs[2][0]
    assert exposure["form_id"] == "exposure" and exposure["status"] == "complete", exposure
    assert exposure["items"]["drug"]["resource"].startswith("MedicationStatement/")
    due, reported = outputs[3]
    assert [sae["status"] for sae in due["items"]] == ["due"], due
    assert reported["status"] == "reported" and reported["reference"] == "SAE-2026-001", reported
    ended, subject = outputs[4]
    assert ended["form_id"] == "end_of_study" and ended["status"] == "complete", ended
    assert subject["status"] == "off-study", subject
    endpoints = outputs[5][0]
    assert endpoints["randomised"] is True and endpoints["arm"] == randomised["arm"], endpoints
    assert endpoints["os"]["event"] is False and endpoints["os"]["days"] == 0, endpoints
    assert endpoints["rfs"]["event"] is False and endpoints["open_items"] == [], endpoints
