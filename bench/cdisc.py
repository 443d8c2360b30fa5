"""CDISC export speed and peak server memory, next to the NDJSON export's floor measured in the same run.

    .venv/bin/python bench/cdisc.py [--subjects 500] [--results 100000] [--backend sqlite|postgresql|both]

For each backend: a fresh database and `ecrf serve` in a subprocess; the subjects are enrolled through /fhir
(one transaction Bundle of Patients and ResearchSubjects) and their lab results pushed through /fhir as
transaction Bundles of 1,000 Observations (4 lab items, each subject's results on distinct dates, so every result
is an SDTM LB record; no surgery date, so all are the labs form's unscheduled results). Then, over HTTP, kick-off
to manifest: the sponsor's de-identified `$export` of Observations (NDJSON: the floor), the sponsor's SDTM package
(Dataset-JSON, NDJSON, XPT, define.xml, zip) and ODM archive, and the data manager's identified ODM archive.
Peak memory is the server's VmHWM after each step (it only grows, so each step's growth is its own).
"""

import argparse
import sys
import tempfile
import time
import uuid
from datetime import date, timedelta
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.export import serve  # noqa: E402
from ecrf.auth.tokens import issue_dev_token  # noqa: E402
from testkit.databases import fresh_database  # noqa: E402
from testkit.servers import ServeProcess  # noqa: E402

ASYNC = {"Prefer": "respond-async"}
MRN = "urn:oid:2.16.840.1.113883.3.9999.1"
LABS = [("718-7", "g/dL", 13.2), ("777-3", "10*3/uL", 180), ("1920-8", "U/L", 31), ("1975-2", "mg/dL", 0.9)]
FIRST_DAY = date(2025, 1, 1)


def _client(server: ServeProcess, role: str, *sites: str) -> httpx.Client:
    token = issue_dev_token(server.settings, role=role, sites=list(sites) or None, ttl_minutes=120)
    return httpx.Client(base_url=server.url, timeout=900, headers={"Authorization": f"Bearer {token}"})


def _transaction(entries: list[dict]) -> dict:
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def load(server: ServeProcess, subjects: int, results: int) -> float:
    began = time.perf_counter()
    with _client(server, "investigator", "S01") as http:
        entries = []
        for n in range(subjects):
            ref = f"urn:uuid:{uuid.uuid4()}"
            entries.append(
                {
                    "fullUrl": ref,
                    "request": {"method": "POST", "url": "Patient"},
                    "resource": {
                        "resourceType": "Patient",
                        "identifier": [{"system": MRN, "value": f"BENCH-{n:05d}"}],
                        "gender": "female",
                        "birthDate": "1960-01-01",
                    },
                }
            )
            entries.append(
                {
                    "request": {"method": "POST", "url": "ResearchSubject"},
                    "resource": {
                        "resourceType": "ResearchSubject",
                        "status": "candidate",
                        "study": {"reference": "ResearchStudy/NCT04163237"},
                        "individual": {"reference": ref},
                    },
                }
            )
        response = http.post("/fhir", json=_transaction(entries), headers={"Content-Type": "application/fhir+json"})
        assert response.status_code == 200, response.text[:500]
        patients = [
            e["response"]["location"].split("/")[1]
            for e in response.json()["entry"]
            if e["response"]["location"].startswith("Patient/")
        ]
        per_subject = results // subjects
        batch = []
        for n in range(results):
            patient = patients[n // per_subject]  # subject by subject: a Bundle touches few subjects (their derived
            k = n % per_subject  # state is recomputed per write); the subject's k-th result: item k % 4 on day k // 4
            code, unit, base = LABS[k % len(LABS)]
            batch.append(
                {
                    "request": {"method": "POST", "url": "Observation"},
                    "resource": {
                        "resourceType": "Observation",
                        "status": "final",
                        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
                        "subject": {"reference": f"Patient/{patient}"},
                        "effectiveDateTime": (FIRST_DAY + timedelta(days=k // len(LABS))).isoformat(),
                        "valueQuantity": {
                            "value": round(base * (1 + (n % 13) / 50), 2),
                            "unit": unit,
                            "system": "http://unitsofmeasure.org",
                            "code": unit,
                        },
                    },
                }
            )
            if len(batch) == 1000 or n == results - 1:
                response = http.post(
                    "/fhir", json=_transaction(batch), headers={"Content-Type": "application/fhir+json"}
                )
                assert response.status_code == 200, response.text[:500]
                batch = []
        assert per_subject * subjects == results
    return time.perf_counter() - began


def timed(http: httpx.Client, url: str, **params) -> tuple[float, dict, int]:
    began = time.perf_counter()
    response = http.get(url, params=params, headers=ASYNC)
    assert response.status_code == 202, response.text
    while (status := http.get(response.headers["Content-Location"])).status_code == 202:
        time.sleep(0.05)
    elapsed = time.perf_counter() - began
    assert status.status_code == 200, status.text
    manifest = status.json()
    size = 0
    for entry in manifest["output"]:  # the files are served, not only written
        with http.stream("GET", entry["url"]) as download:
            size += sum(len(chunk) for chunk in download.iter_bytes())
    return elapsed, manifest, size


def run(backend: str, subjects: int, results: int) -> list[tuple]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="ecrf-bench-cdisc-") as tmp:
        directory = Path(tmp)
        with fresh_database(backend, directory, "ecrf_bench_cdisc") as url:
            with serve(url, directory) as server:
                loaded = load(server, subjects, results)
                print(
                    f"{backend}: loaded {subjects} subjects and {results} results over HTTP in {loaded:.0f} s",
                    flush=True,
                )
                rss, peak = server.memory()
                rows.append((backend, "before", None, None, None, rss, peak))
                with _client(server, "sponsor") as sponsor, _client(server, "data_manager") as manager:
                    seconds, manifest, size = timed(sponsor, "/fhir/$export", _type="Observation")
                    floor = seconds
                    [entry] = manifest["output"]
                    rows.append((backend, "NDJSON $export (floor)", entry["count"], seconds, size, *server.memory()))
                    seconds, manifest, size = timed(sponsor, "/api/v1/exports/sdtm")
                    lb = next(e["count"] for e in manifest["output"] if e["type"] == "LB" and e["format"] == "json")
                    rows.append((backend, "SDTM package (sponsor)", lb, seconds, size, *server.memory()))
                    for who, http, params in (
                        ("sponsor", sponsor, {}),
                        ("data manager", manager, {"deidentify": "false"}),
                    ):
                        seconds, manifest, size = timed(http, "/api/v1/exports/odm", **params)
                        rows.append(
                            (
                                backend,
                                f"ODM archive ({who})",
                                manifest["output"][0]["values"],
                                seconds,
                                size,
                                *server.memory(),
                            )
                        )
                rows = [(*row, floor) for row in rows]
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", type=int, default=500)
    parser.add_argument("--results", type=int, default=100_000)
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    args = parser.parse_args()
    backends = ("sqlite", "postgresql") if args.backend == "both" else (args.backend,)
    mib = 1024 * 1024
    print(
        f"{'backend':<11}{'export':<26}{'records':>9}{'seconds':>9}{'records/s':>11}{'x floor':>9}{'MiB':>7}"
        f"{'RSS':>7}{'peak':>7}"
    )
    for backend in backends:
        for row in run(backend, args.subjects, args.results):
            _, what, count, seconds, size, rss, peak, floor = row
            if seconds is None:
                print(f"{backend:<11}{what:<26}{'':>9}{'':>9}{'':>11}{'':>9}{'':>7}{rss / mib:>7.0f}{peak / mib:>7.0f}")
                continue
            print(
                f"{backend:<11}{what:<26}{count:>9,}{seconds:>9.1f}{count / seconds:>11,.0f}{seconds / floor:>9.1f}"
                f"{size / mib:>7.1f}{rss / mib:>7.0f}{peak / mib:>7.0f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
