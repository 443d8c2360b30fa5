"""Cost of eligibility recomputation, on SQLite and PostgreSQL.

1. Added latency per write: the same labs-form save (PUT over HTTP, values changing every time, a fully
   documented subject) with the eligibility hook on and off, interleaved in blocks in the same run.
2. Recomputing 1,000 subjects in one transaction: evaluation alone (load + evaluate), the first recompute
   (state rows, ResearchSubject.status candidate -> eligible, audit entries) and a steady-state one.

    .venv/bin/python bench/eligibility.py [--saves 60] [--subjects 1000] [--backend sqlite|postgresql|both]
"""

import argparse
import secrets
import statistics
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from datetime import UTC, date, datetime
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ecrf.app import create_app  # noqa: E402
from ecrf.auth.actor import Actor  # noqa: E402
from ecrf.auth.tokens import issue_dev_token  # noqa: E402
from ecrf.config import Settings  # noqa: E402
from ecrf.crf.checks import check_items  # noqa: E402
from ecrf.eligibility.engine import evaluate  # noqa: E402
from ecrf.eligibility.patient_data import load  # noqa: E402
from ecrf.eligibility.service import recompute  # noqa: E402
from ecrf.runtime import Runtime  # noqa: E402
from ecrf.store.migrate import upgrade  # noqa: E402
from ecrf.store.service import WriteContext  # noqa: E402
from ecrf.store.unit import writing  # noqa: E402
from fhir_mappings.mapping import form_to_resources  # noqa: E402
from testkit.databases import fresh_database  # noqa: E402
from testkit.patients import compose, push, save_form  # noqa: E402
from testkit.servers import serving_in_thread  # noqa: E402

ACTOR = Actor(sub="bench", roles=frozenset({"coordinator"}), sites=frozenset({"S01"}))


@contextmanager
def database(backend: str):
    with tempfile.TemporaryDirectory() as directory, fresh_database(backend, Path(directory), "ecrf_bench") as url:
        yield url


@contextmanager
def serving(runtime: Runtime):
    with serving_in_thread(create_app(runtime=runtime)) as url:
        yield url


def save_latency(runtime: Runtime, url: str, saves: int) -> dict[str, list[float]]:
    token = issue_dev_token(runtime.settings, role="coordinator", sites=["S01"], ttl_minutes=60)
    samples: dict[str, list[float]] = {"with hook": [], "without hook": []}
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as http:
        patient = compose()
        subject_id = push(http, patient)
        labs = {
            "visit": "SCR",
            "visit_date": patient["forms"]["demographics"]["visit_date"],
            "items": {
                "anc": 2.5,
                "platelets": 180,
                "hemoglobin": 132,
                "creatinine": 80,
                "creatinine_uln": 97,
                "ast": 30,
                "ast_uln": 40,
                "alt": 35,
                "alt_uln": 50,
                "bilirubin": 15,
                "bilirubin_uln": 21,
                "albumin": 40,
                "inr": 1.0,
                "inr_uln": 1.2,
                "aptt": 30,
                "aptt_uln": 36,
            },
        }
        save_form(http, subject_id, "labs", labs)
        hooks = list(runtime.derived_hooks)
        for block in range(saves // 10):
            for mode in ("with hook", "without hook") if block % 2 == 0 else ("without hook", "with hook"):
                runtime.derived_hooks[:] = hooks if mode == "with hook" else []
                for i in range(10):
                    labs["items"]["platelets"] = 150 + (block * 10 + i) % 50
                    labs["reason"] = "bench"
                    start = time.perf_counter()
                    save_form(http, subject_id, "labs", labs)
                    samples[mode].append((time.perf_counter() - start) * 1000)
        runtime.derived_hooks[:] = hooks
    return samples


def seed_subjects(runtime: Runtime, count: int) -> list[str]:
    """`count` fully documented subjects written in bulk with the hook off (their setup is not measured)."""
    hooks = list(runtime.derived_hooks)
    runtime.derived_hooks[:] = []
    patient_ids = []
    try:
        for start in range(0, count, 100):
            with writing(runtime, ACTOR) as store:
                batch = []
                for _ in range(min(100, count - start)):
                    patient = compose()
                    ids = {key: str(uuid.uuid4()) for key in patient["resources"]}
                    references = {key: f"{r['resourceType']}/{ids[key]}" for key, r in patient["resources"].items()}
                    for key, resource in patient["resources"].items():
                        batch.append((_resolve(resource, references), ids[key]))
                    for form_id, entry in patient["forms"].items():
                        values = check_items(runtime.study.form(form_id), entry["items"]).values
                        mapped = form_to_resources(
                            runtime.study,
                            form_id,
                            values,
                            patient_ref=references["patient"],
                            visit_date=date.fromisoformat(entry["visit_date"]),
                        )
                        batch.extend((resource, str(uuid.uuid4())) for _, resource in mapped.resources)
                    patient_ids.append(ids["patient"])
                store.create_many(batch, WriteContext(source="fhir"), site="S01")
                store.touched_patients.clear()
    finally:
        runtime.derived_hooks[:] = hooks
    return patient_ids


def _resolve(node, references):
    if isinstance(node, dict):
        return {key: _resolve(value, references) for key, value in node.items()}
    if isinstance(node, list):
        return [_resolve(value, references) for value in node]
    if isinstance(node, str) and node.startswith("@"):
        return references[node[1:]]
    return node


def recompute_times(runtime: Runtime, patient_ids: list[str]) -> dict[str, float]:
    times = {}
    with writing(runtime, ACTOR) as store:
        start = time.perf_counter()
        data = load(store.session, runtime.study, patient_ids)
        loaded = time.perf_counter()
        statuses = [evaluate(runtime.study, data[p], datetime.now(UTC)).status for p in patient_ids]
        times["load facts (all subjects)"] = loaded - start
        times["evaluate in memory"] = time.perf_counter() - loaded
        assert statuses.count("eligible") == len(patient_ids), set(statuses)
    for label in ("first recompute (states, ResearchSubject.status, audit)", "steady-state recompute"):
        start = time.perf_counter()
        with writing(runtime, ACTOR) as store:
            recompute(store, set(patient_ids))
            store.touched_patients.clear()
        times[label] = time.perf_counter() - start
    return times


def run(backend: str, saves: int, subjects: int) -> None:
    with database(backend) as url:
        settings = Settings(database_url=url, jwt_secret=secrets.token_urlsafe(32), _env_file=None)
        runtime = Runtime.start(settings)
        upgrade(runtime.engine)
        with serving(runtime) as base:
            samples = save_latency(runtime, base, saves)
        print(f"\n== {backend} ==")
        medians = {}
        for mode, values in samples.items():
            medians[mode] = statistics.median(values)
            p95 = sorted(values)[int(0.95 * (len(values) - 1))]
            print(f"labs form save {mode:13s}: median {medians[mode]:6.1f} ms  p95 {p95:6.1f} ms  (n={len(values)})")
        print(
            f"added by eligibility recomputation: {medians['with hook'] - medians['without hook']:+.1f} ms per save (median)"
        )
        patient_ids = seed_subjects(runtime, subjects)
        for label, seconds in recompute_times(runtime, patient_ids).items():
            print(f"{subjects} subjects, {label:55s}: {seconds:6.2f} s  ({seconds / subjects * 1000:.2f} ms/subject)")
        runtime.engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--saves", type=int, default=60, help="saves per mode (multiple of 10)")
    parser.add_argument("--subjects", type=int, default=1000)
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    arguments = parser.parse_args()
    for backend in ["sqlite", "postgresql"] if arguments.backend == "both" else [arguments.backend]:
        run(backend, arguments.saves, arguments.subjects)


if __name__ == "__main__":
    main()
