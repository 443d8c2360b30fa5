"""De-identified Bulk Data export throughput and peak server memory, next to the floor of the same run.

    .venv/bin/python bench/export.py [--sizes 10000,100000] [--subjects 500] [--backend sqlite|postgresql|both]

For each size it bulk-inserts N lab Observations for 500 subjects straight into a fresh database
(resource_version + resource_head, as the store writes them), starts `ecrf serve` in a subprocess, and runs
`GET /fhir/$export?_type=Observation` as a sponsor (de-identified) until the manifest is ready. The floor
is reading the same rows with the same keyset-paged query and writing them to a file untouched, in this
process. "export" is kick-off to manifest over HTTP (polling included); "job" is the worker's own time
(claimed to completed, from the job row). Peak memory is the server's VmHWM from /proc after the export,
next to its resident memory before it.
"""

import argparse
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import orjson
from sqlalchemy import select

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ecrf.auth.tokens import issue_dev_token  # noqa: E402
from ecrf.db import make_engine  # noqa: E402
from ecrf.export.models import ExportJob  # noqa: E402
from ecrf.export.source import Scope, batches  # noqa: E402
from ecrf.store.migrate import upgrade  # noqa: E402
from ecrf.store.models import ResourceHead, ResourceVersion, SearchToken  # noqa: E402
from testkit.databases import fresh_database  # noqa: E402
from testkit.servers import ServeProcess  # noqa: E402

STUDY = "ResearchStudy/NCT04163237"
LOINC = "http://loinc.org"
LABS = [
    ("718-7", "Hemoglobin", "g/dL", "g/L", 10, 13.2),
    ("777-3", "Platelets", "10*3/uL", "10*9/L", 1, 180),
    ("1920-8", "AST", "U/L", "U/L", 1, 31),
    ("1975-2", "Bilirubin", "mg/dL", "umol/L", 17.1, 0.9),
]


def observation(patient_id: str, n: int, moment: str) -> dict:
    code, display, unit, canonical, factor, base = LABS[n % len(LABS)]
    value = round(base * (1 + (n % 13) / 50), 2)
    return {
        "resourceType": "Observation",
        "id": uuid.uuid4().hex,
        "meta": {"versionId": "1", "lastUpdated": moment},
        "identifier": [{"system": "urn:oid:2.16.840.1.113883.3.9999.1.77", "value": f"LAB-{n:08d}"}],
        "status": "final",
        "category": [
            {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}
        ],
        "code": {"coding": [{"system": LOINC, "code": code, "display": display}], "text": display},
        "subject": {"reference": f"Patient/{patient_id}", "display": "Jane Doe"},
        "effectiveDateTime": f"2025-{1 + n % 12:02d}-{1 + n % 28:02d}T08:30:00Z",
        "valueQuantity": {
            "value": value,
            "unit": unit,
            "system": "http://unitsofmeasure.org",
            "code": unit,
            "extension": [
                {
                    "url": "http://example.org/fhir/StructureDefinition/canonical-quantity",
                    "valueQuantity": {
                        "value": round(value * factor, 4),
                        "unit": canonical,
                        "system": "http://unitsofmeasure.org",
                        "code": canonical,
                    },
                }
            ],
        },
        "referenceRange": [
            {
                "high": {"value": base * 1.3, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit},
                "text": "site range",
            }
        ],
        "note": [{"text": "drawn after breakfast, patient anxious"}],
    }


def load(database_url: str, count: int, subjects: int) -> None:
    engine = make_engine(database_url)
    upgrade(engine)
    patients = [uuid.uuid4().hex for _ in range(subjects)]
    now = datetime.now(UTC) - timedelta(minutes=1)
    moment = now.isoformat().replace("+00:00", "Z")
    chunk = 5000
    with engine.begin() as connection:
        for start in range(0, count, chunk):
            versions, heads = [], []
            for n in range(start, min(count, start + chunk)):
                patient_id = patients[n % subjects]
                content = observation(patient_id, n, moment)
                versions.append(
                    {
                        "pk": n + 1,
                        "resource_type": "Observation",
                        "resource_id": content["id"],
                        "version_id": 1,
                        "last_updated": now,
                        "deleted": False,
                        "patient_id": patient_id,
                        "site": "S01",
                        "content": orjson.dumps(content).decode(),
                        "author_sub": "bench",
                        "author_role": "ehr",
                        "reason": None,
                        "source": "fhir",
                    }
                )
                heads.append(
                    {
                        "resource_type": "Observation",
                        "resource_id": content["id"],
                        "version_id": 1,
                        "version_pk": n + 1,
                        "last_updated": now,
                        "deleted": False,
                        "patient_id": patient_id,
                        "site": "S01",
                    }
                )
            connection.execute(ResourceVersion.__table__.insert(), versions)
            connection.execute(ResourceHead.__table__.insert(), heads)
        _enrol(connection, patients, count, now)
    engine.dispose()


def _enrol(connection, patients: list[str], first_pk: int, now: datetime) -> None:
    """A ResearchSubject of the study per patient: a sponsor's de-identified export holds study subjects' data only."""
    versions, heads, tokens = [], [], []
    for n, patient_id in enumerate(patients, start=first_pk + 1):
        subject_id = uuid.uuid4().hex
        content = {
            "resourceType": "ResearchSubject",
            "id": subject_id,
            "status": "candidate",
            "study": {"reference": STUDY},
            "individual": {"reference": f"Patient/{patient_id}"},
        }
        row = {
            "resource_type": "ResearchSubject",
            "resource_id": subject_id,
            "version_id": 1,
            "last_updated": now,
            "deleted": False,
            "patient_id": patient_id,
            "site": "S01",
        }
        versions.append(
            {
                **row,
                "pk": n,
                "content": orjson.dumps(content).decode(),
                "author_sub": "bench",
                "author_role": "coordinator",
                "reason": None,
                "source": "form",
            }
        )
        heads.append({**row, "version_pk": n})
        tokens.append({"resource_type": "ResearchSubject", "resource_id": subject_id, "param": "study", "value": STUDY})
    connection.execute(ResourceVersion.__table__.insert(), versions)
    connection.execute(ResourceHead.__table__.insert(), heads)
    connection.execute(SearchToken.__table__.insert(), tokens)


def floor(database_url: str, directory: Path) -> tuple[int, float]:
    """Read the same rows the same way and write them out unchanged: what any export costs at least."""
    engine = make_engine(database_url)
    began = time.perf_counter()
    written = 0
    with (directory / "floor.ndjson").open("wb") as out:
        for _, rows in batches(engine, Scope("Observation", until=datetime.now(UTC)), size=1000):
            out.write(b"".join(row.content.encode() + b"\n" for row in rows))
            written += len(rows)
    elapsed = time.perf_counter() - began
    engine.dispose()
    return written, elapsed


def serve(database_url: str, directory: Path) -> ServeProcess:
    return ServeProcess(
        database_url,
        study_secret="bench-study-secret",
        export_dir=str(directory / "exports"),
        rate_limit_per_minute="0",
    )


def export(server: ServeProcess) -> tuple[int, float]:
    token = issue_dev_token(server.settings, role="sponsor", ttl_minutes=30)
    with httpx.Client(base_url=server.url, timeout=600, headers={"Authorization": f"Bearer {token}"}) as http:
        began = time.perf_counter()
        response = http.get("/fhir/$export", params={"_type": "Observation"}, headers={"Prefer": "respond-async"})
        assert response.status_code == 202, response.text
        while (status := http.get(response.headers["Content-Location"])).status_code == 202:
            time.sleep(0.02)
        elapsed = time.perf_counter() - began
        assert status.status_code == 200, status.text
        [entry] = status.json()["output"]
        with http.stream("GET", entry["url"]) as download:  # the file is served, not only written
            size = sum(len(chunk) for chunk in download.iter_bytes())
        assert size > 0
    return entry["count"], elapsed


def run(backend: str, size: int, subjects: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="ecrf-bench-export-") as tmp:
        directory = Path(tmp)
        with fresh_database(backend, directory, "ecrf_bench_export") as url:
            began = time.perf_counter()
            load(url, size, subjects)
            loaded = time.perf_counter() - began
            floor_count, floor_seconds = min(floor(url, directory) for _ in range(3))  # best of 3: the floor
            with serve(url, directory) as server:
                rss_before, _ = server.memory()
                count, seconds = export(server)
                _, peak = server.memory()
            job_seconds = _job_seconds(url)
    assert count == floor_count == size
    return {
        "backend": backend,
        "size": size,
        "load_s": loaded,
        "floor_rate": floor_count / floor_seconds,
        "export_rate": count / seconds,
        "job_rate": count / job_seconds,
        "rss_before": rss_before,
        "peak": peak,
    }


def _job_seconds(database_url: str) -> float:
    """The worker's own time (claimed to completed), without the kick-off and polling round trips."""
    engine = make_engine(database_url)
    with engine.connect() as connection:
        job = connection.execute(select(ExportJob.started_at, ExportJob.finished_at)).one()
    engine.dispose()
    return (job.finished_at - job.started_at).total_seconds()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--subjects", type=int, default=500)
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    args = parser.parse_args()
    backends = ("sqlite", "postgresql") if args.backend == "both" else (args.backend,)
    mib = 1024 * 1024
    print(
        f"{'backend':<11}{'resources':>10}{'floor res/s':>13}{'export res/s':>14}{'ratio':>7}"
        f"{'job res/s':>11}{'ratio':>7}{'RSS before':>12}{'peak RSS':>10}{'load s':>8}"
    )
    for backend in backends:
        for size in (int(part) for part in args.sizes.split(",")):
            r = run(backend, size, args.subjects)
            print(
                f"{backend:<11}{size:>10}{r['floor_rate']:>13,.0f}{r['export_rate']:>14,.0f}"
                f"{r['export_rate'] / r['floor_rate']:>7.0%}{r['job_rate']:>11,.0f}"
                f"{r['job_rate'] / r['floor_rate']:>7.0%}{r['rss_before'] / mib:>10.0f}Mi"
                f"{r['peak'] / mib:>8.0f}Mi{r['load_s']:>8.1f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
