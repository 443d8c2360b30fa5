"""`ecrf demo` makes an eligible, an ineligible and an incomplete subject through the public API and one EHR
Bundle, in process or against a server, and says for each what to open and why it has its status."""

import os
import re
import subprocess
import sys

from sqlmodel import select

from ecrf.crf.models import FormInstance
from ecrf.db import make_engine, reading
from ecrf.demo import run_demo
from ecrf.store.models import ResourceHead


def test_demo_command_on_a_fresh_sqlite_database(tmp_path):
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    env = {**os.environ, "ECRF_DATABASE_URL": url, "XDG_CONFIG_HOME": str(tmp_path / "config")}
    env.pop("ECRF_JWT_SECRET", None)
    result = subprocess.run(
        [sys.executable, "-m", "ecrf.cli", "demo"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("  subject ") == 3 and result.stdout.strip().endswith("demo: done")
    _check_statuses_and_links(result.stdout, "http://127.0.0.1:8000")
    engine = make_engine(url)
    with reading(engine) as session:
        subjects = session.exec(select(ResourceHead).where(ResourceHead.resource_type == "ResearchSubject")).all()
        forms = session.exec(select(FormInstance)).all()
    engine.dispose()
    assert len(subjects) == 3 and {s.site for s in subjects} == {"S01"}
    assert len(forms) == 17 and {f.status for f in forms} == {"complete"}
    assert {f.form_id for f in forms} == {"demographics", "baseline", "labs", "surgery", "pathology", "history"}
    verify = subprocess.run(
        [sys.executable, "-m", "ecrf.cli", "audit", "verify"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert verify.returncode == 0, verify.stderr


def _check_statuses_and_links(out: str, base: str) -> None:
    statuses = re.findall(r"^    status: (\w+)$", out, flags=re.M)
    assert statuses == ["eligible", "ineligible", "incomplete"], out
    assert "why: I08_platelets not_met: platelets 42" in out  # from the EHR Bundle
    assert "EHR Bundle: Patient matched by MRN" in out
    assert re.search(r"why: \d+ criteria unknown: .*E08_autoimmune", out) and "fill form history at SCR" in out
    for subject in re.findall(r"^  subject \d \(\w+\): ([0-9a-f-]{36})", out, flags=re.M):
        assert f"{base}/api/v1/subjects/{subject}/eligibility" in out and f"{base}/fhir/Patient/{subject}" in out


def test_demo_against_a_running_server(server, capsys):
    assert run_demo(server.settings, server.base_url) == 0
    out = capsys.readouterr().out
    assert out.count("complete  v") == 17
    _check_statuses_and_links(out, server.base_url)
    # the links answer what the demo printed, for the token it names
    subjects = re.findall(r"^  subject \d \((\w+)\): ([0-9a-f-]{36})", out, flags=re.M)
    with server.client("investigator", "S01") as http:
        for intent, subject in subjects:
            assert http.get(f"/api/v1/subjects/{subject}/eligibility").json()["status"] == intent
            assert http.get(f"/fhir/Patient/{subject}").status_code == 200
