"""Form-save latency through the eCRF door with 8 concurrent clients, on SQLite and PostgreSQL.

Starts `ecrf serve` in a subprocess per backend (fresh database), enrols one subject per client, then
each client saves the labs form repeatedly (every save changes values, so resources get new versions
and audit entries). The floor is a bare GET /healthz round trip measured in the same run with the same
concurrency; ratios against it show what the save itself costs.

    .venv/bin/python bench/form_save.py [--saves 40] [--clients 8] [--backend sqlite|postgresql|both]
"""

import argparse
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ecrf.auth.tokens import issue_dev_token  # noqa: E402
from testkit.databases import create_postgres, drop_postgres  # noqa: E402
from testkit.servers import ServeProcess  # noqa: E402

SURGERY = datetime.now(UTC).date() - timedelta(days=40)


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def concurrently(
    clients: list[httpx.Client], count: int, call: Callable[[httpx.Client, int, int], None]
) -> list[float]:
    """Run `count` calls per client, all clients at once; latencies in milliseconds."""
    samples: list[float] = []
    lock = threading.Lock()
    start = threading.Barrier(len(clients))

    def work(index: int, client: httpx.Client) -> None:
        mine = []
        start.wait()
        for n in range(count):
            began = time.perf_counter()
            call(client, index, n)
            mine.append((time.perf_counter() - began) * 1000)
        with lock:
            samples.extend(mine)

    threads = [threading.Thread(target=work, args=(i, c)) for i, c in enumerate(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return samples


def run_backend(name: str, database_url: str, clients_n: int, saves: int) -> dict[str, list[float]]:
    with ServeProcess(database_url, stop_seconds=10) as server:
        token = issue_dev_token(server.settings, role="investigator", sites=["S01"], sub="bench", ttl_minutes=30)
        clients = [
            httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=60)
            for _ in range(clients_n)
        ]
        subjects = []
        for client in clients:
            enrolled = client.post(
                "/api/v1/subjects",
                json={
                    "site": "S01",
                    "mrn": uuid.uuid4().hex[:12],
                    "consent_date": (SURGERY + timedelta(days=14)).isoformat(),
                },
            )
            enrolled.raise_for_status()
            subjects.append(enrolled.json()["id"])
            client.put(
                f"/api/v1/subjects/{subjects[-1]}/forms/surgery/PREOP",
                json={
                    "items": {
                        "surgery_date": SURGERY.isoformat(),
                        "resection_type": "anatomical",
                        "visible_tumour_thrombus": False,
                    }
                },
            ).raise_for_status()
        visit_date = (SURGERY + timedelta(days=21)).isoformat()

        def healthz(client: httpx.Client, index: int, n: int) -> None:
            client.get("/healthz").raise_for_status()

        def save(client: httpx.Client, index: int, n: int) -> None:
            response = client.put(
                f"/api/v1/subjects/{subjects[index]}/forms/labs/SCR",
                json={
                    "visit_date": visit_date,
                    "reason": "bench",
                    "items": {
                        "hemoglobin": {"value": 12 + (n % 30) / 10, "unit": "g/dL"},
                        "platelets": 150 + n,
                        "creatinine": 70 + n % 20,
                        "creatinine_uln": 97,
                        "alt": 30,
                        "alt_uln": 50,
                        "ast": 25 + n % 7,
                        "ast_uln": 40,
                        "albumin": 40,
                        "inr": 1.1,
                    },
                },
            )
            if response.status_code not in (200, 201):
                raise RuntimeError(f"save failed {response.status_code}: {response.text}")

        def read(client: httpx.Client, index: int, n: int) -> None:
            client.get(f"/api/v1/subjects/{subjects[index]}/forms/labs/SCR").raise_for_status()

        concurrently(clients, 5, healthz)  # warm-up
        results = {
            "floor GET /healthz": concurrently(clients, saves, healthz),
            "PUT labs (save)": concurrently(clients, saves, save),
            "GET labs (read)": concurrently(clients, saves, read),
        }
        for client in clients:
            client.close()
        return results


def postgres_database() -> tuple[str, Callable[[], None]] | None:
    try:
        name, url = create_postgres("ecrf_bench")
    except Exception as error:  # noqa: BLE001 - report why and go on with SQLite
        print(f"postgresql: skipped ({str(error).strip().splitlines()[0]})")
        return None
    return url, lambda: drop_postgres(name)


def report(name: str, results: dict[str, list[float]], clients: int) -> None:
    floor = results["floor GET /healthz"]
    floor_p50, floor_p99 = percentile(floor, 0.5), percentile(floor, 0.99)
    print(f"\n{name}: {clients} concurrent clients")
    print(f"  {'operation':<22}{'n':>6}{'p50 ms':>10}{'p99 ms':>10}{'mean ms':>10}{'p50/floor':>11}{'p99/floor':>11}")
    for operation, samples in results.items():
        p50, p99 = percentile(samples, 0.5), percentile(samples, 0.99)
        print(
            f"  {operation:<22}{len(samples):>6}{p50:>10.1f}{p99:>10.1f}{statistics.fmean(samples):>10.1f}"
            f"{p50 / floor_p50:>11.1f}{p99 / floor_p99:>11.1f}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--saves", type=int, default=40, help="saves per client")
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    args = parser.parse_args()
    began = time.monotonic()
    if args.backend in ("sqlite", "both"):
        with tempfile.TemporaryDirectory() as folder:
            report(
                "sqlite", run_backend("sqlite", f"sqlite:///{folder}/bench.db", args.clients, args.saves), args.clients
            )
    if args.backend in ("postgresql", "both"):
        database = postgres_database()
        if database is not None:
            url, drop = database
            try:
                report("postgresql", run_backend("postgresql", url, args.clients, args.saves), args.clients)
            finally:
                drop()
    print(f"\ntotal {time.monotonic() - began:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
