"""`ecrf demo` fills synthetic subjects through the public API, in process or against a server."""
import os
import subprocess
import sys

from sqlmodel import select

from ecrf.crf.models import FormInstance
from ecrf.db import make_engine, reading
from ecrf.demo import run_demo
from ecrf.store.models import ResourceHead


def test_demo_command_on_a_fresh_sqlite_database(tmp_path):
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    env = {**os.environ, "ECRF_DATABASE_URL": url}
    env.pop("ECRF_JWT_SECRET", None)
    result = subprocess.run([sys.executable, "-m", "ecrf.cli", "demo"], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("subject ") == 3 and result.stdout.strip().endswith("demo: done")
    engine = make_engine(url)
    with reading(engine) as session:
        subjects = session.exec(select(ResourceHead).where(ResourceHead.resource_type == "ResearchSubject")).all()
        forms = session.exec(select(FormInstance)).all()
    engine.dispose()
    assert len(subjects) == 3 and {s.site for s in subjects} == {"S01"}
    assert len(forms) == 15 and {f.status for f in forms} == {"complete"}
    assert {f.form_id for f in forms} == {"demographics", "baseline", "labs", "surgery", "pathology"}
    verify = subprocess.run([sys.executable, "-m", "ecrf.cli", "audit", "verify"], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert verify.returncode == 0, verify.stderr


def test_demo_against_a_running_server(server, capsys):
    assert run_demo(server.settings, server.base_url) == 0
    assert capsys.readouterr().out.count("complete") == 15
