"""Cost of the derived endpoints (RFS, OS: ecrf/endpoints) per write, on SQLite and PostgreSQL.

A subject randomised through the API with a year's follow-up (disease assessments, adverse events) has one of
its adverse event entries saved again and again (PUT over HTTP, the grade changing every time), with every
derived hook on and with all of them but the endpoints hook, interleaved in blocks in the same run: the
difference of the medians is what endpoint recomputation adds to a write, the ratio its share. Then the hook
alone, called in process on the same subject (load, compute, compare with the kept row).

    .venv/bin/python bench/endpoints.py [--saves 60] [--assessments 4] [--events 20] [--backend sqlite|postgresql|both]
"""

import argparse
import secrets
import statistics
import sys
import time
from datetime import date, timedelta
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.eligibility import ACTOR, database, serving  # noqa: E402
from ecrf.auth.tokens import issue_dev_token  # noqa: E402
from ecrf.config import Settings  # noqa: E402
from ecrf.runtime import Runtime  # noqa: E402
from ecrf.store.migrate import upgrade  # noqa: E402
from ecrf.store.unit import writing  # noqa: E402
from testkit.patients import compose, push  # noqa: E402

ON, OFF = "with endpoints", "without endpoints"


def _ok(response: httpx.Response, status: int = 201) -> dict:
    if response.status_code != status:
        raise SystemExit(f"{response.request.method} {response.request.url}: {response.status_code} {response.text}")
    return response.json()


def subject_with_follow_up(http: httpx.Client, assessments: int, events: int) -> tuple[str, str, str]:
    """(subject id, patient id, the entries URL of one adverse event) of a randomised subject with follow-up."""
    subject_id = push(http, compose())
    allocation = _ok(http.post(f"/api/v1/subjects/{subject_id}/randomise"))
    # randomised today: the follow-up is dated before it (the endpoints' cost does not depend on the dates)
    today = date.fromisoformat(allocation["randomisation_date"])
    base = f"/api/v1/subjects/{subject_id}/forms"
    for i in range(assessments):
        when = (today - timedelta(days=10 * (assessments - i))).isoformat()
        _ok(
            http.post(
                f"{base}/disease_assessment/M{[3, 6, 9, 12][i % 4]}/entries",
                json={"items": {"status": "ned", "assessment_date": when, "method": "ct"}},
            )
        )
    entry = None
    for i in range(events):
        onset = (today - timedelta(days=1 + i % 20)).isoformat()
        entry = _ok(
            http.post(
                f"{base}/adverse_event/entries",
                json={
                    "items": {
                        "ctcae_term": "rash",
                        "onset_date": onset,
                        "grade": 1,
                        "serious": False,
                        "outcome": "recovering",
                    }
                },
            )
        )
    research_subject = _ok(http.get(f"/fhir/ResearchSubject/{subject_id}"), 200)
    patient_id = research_subject["individual"]["reference"].split("/")[1]
    return subject_id, patient_id, f"{base}/adverse_event/entries/{entry['id']}"


def save_latency(runtime: Runtime, url: str, saves: int, assessments: int, events: int) -> tuple[dict, str]:
    token = issue_dev_token(runtime.settings, role="coordinator", sites=["S01"], ttl_minutes=60)
    samples: dict[str, list[float]] = {ON: [], OFF: []}
    hooks = list(runtime.derived_hooks)
    without = [hook for hook in hooks if not hook.__qualname__.startswith("endpoints_hook")]
    if len(without) != len(hooks) - 1:
        raise SystemExit("the endpoints hook is not registered once in Runtime.start")
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as http:
        subject_id, patient_id, entry_url = subject_with_follow_up(http, assessments, events)
        current = _ok(http.get(entry_url), 200)
        items = {key: value["value"] for key, value in current["items"].items() if value.get("value") is not None}
        items.pop("severity", None)  # derived from the grade
        for block in range(saves // 10):
            for mode in (ON, OFF) if block % 2 == 0 else (OFF, ON):
                runtime.derived_hooks[:] = hooks if mode == ON else without
                for i in range(10):
                    items["grade"] = 1 + (block * 10 + i) % 2
                    start = time.perf_counter()
                    _ok(http.put(entry_url, json={"items": items, "reason": "bench"}), 200)
                    samples[mode].append((time.perf_counter() - start) * 1000)
        runtime.derived_hooks[:] = hooks
        view = _ok(http.get(f"/api/v1/subjects/{subject_id}/endpoints"), 200)
        if view["os"]["event"] or not view["randomised"]:
            raise SystemExit(f"unexpected endpoints: {view}")
    return samples, patient_id


def hook_alone(runtime: Runtime, patient_id: str, calls: int) -> float:
    [hook] = [hook for hook in runtime.derived_hooks if hook.__qualname__.startswith("endpoints_hook")]
    times = []
    for _ in range(calls):
        with writing(runtime, ACTOR) as store:
            start = time.perf_counter()
            hook(store, {patient_id})
            times.append((time.perf_counter() - start) * 1000)
            store.touched_patients.clear()
    return statistics.median(times)


def run(backend: str, saves: int, assessments: int, events: int) -> None:
    with database(backend) as url:
        settings = Settings(database_url=url, jwt_secret=secrets.token_urlsafe(32), _env_file=None)
        runtime = Runtime.start(settings)
        upgrade(runtime.engine)
        with serving(runtime) as base:
            samples, patient_id = save_latency(runtime, base, saves, assessments, events)
        print(f"\n== {backend} == (a randomised subject, {assessments} disease assessments, {events} adverse events)")
        medians = {}
        for mode, values in samples.items():
            medians[mode] = statistics.median(values)
            p95 = sorted(values)[int(0.95 * (len(values) - 1))]
            print(
                f"adverse event save {mode:18s}: median {medians[mode]:6.1f} ms  p95 {p95:6.1f} ms  (n={len(values)})"
            )
        added = medians[ON] - medians[OFF]
        print(
            f"added by endpoint recomputation: {added:+.1f} ms per save (median); "
            f"ratio with/without {medians[ON] / medians[OFF]:.2f}"
        )
        print(f"the endpoints hook alone, in process: median {hook_alone(runtime, patient_id, 50):.2f} ms per write")
        runtime.engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--saves", type=int, default=60, help="saves per mode (multiple of 10)")
    parser.add_argument("--assessments", type=int, default=4)
    parser.add_argument("--events", type=int, default=20)
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    arguments = parser.parse_args()
    for backend in ["sqlite", "postgresql"] if arguments.backend == "both" else [arguments.backend]:
        run(backend, arguments.saves, arguments.assessments, arguments.events)


if __name__ == "__main__":
    main()
