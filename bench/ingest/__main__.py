"""FHIR ingest, end to end over HTTP, against the floor of validating the same Bundles with fhir.resources.

    python -m bench.ingest [--bundles 5] [--observations 1000] [--big-mb 10] [--no-postgres]

For SQLite and (when reachable) PostgreSQL it starts `ecrf serve` in a subprocess on a fresh database,
pushes transaction Bundles of one Patient + N lab Observations, and prints resources/s next to the
floor: R4B validation of the same Bundle alone, measured here just before each push, so that each
ratio compares two measurements taken under the same load of a shared machine. Then it pushes one large
Bundle to a fresh server and reads the server's peak resident memory (VmHWM) from /proc.
"""

import argparse
import gc
import os
import tempfile
import time
from statistics import median

import httpx
import orjson
from fhir.resources.R4B import get_fhir_model_class

from bench.ingest.bundles import lab_bundle
from ecrf.auth.tokens import issue_dev_token
from testkit.databases import create_postgres, drop_postgres
from testkit.servers import ServeProcess

PG_ADMIN = os.environ.get("ECRF_BENCH_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")


class ServerProcess(ServeProcess):
    """`ecrf serve` in a subprocess, with a token for an ehr client of site S01."""

    def __init__(self, database_url: str, **settings: str):
        super().__init__(database_url, stop_seconds=20, rate_limit_per_minute="0", **settings)

    def client(self) -> httpx.Client:
        token = issue_dev_token(self.settings, role="ehr", sites=["S01"], ttl_minutes=30)
        return httpx.Client(
            base_url=self.url,
            timeout=600,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"},
        )

    def peak_memory_bytes(self) -> int:
        return self.memory()[1]


def _push(http: httpx.Client, payload: bytes) -> None:
    response = http.post("/fhir", content=payload)
    if response.status_code != 200:
        raise RuntimeError(f"bundle refused: {response.status_code} {response.text[:500]}")


def paired_rates(database_url: str, bundles: list[dict], payloads: list[bytes]) -> list[tuple[float, float]]:
    """(floor, end to end) resources/s of each Bundle: fhir.resources R4B validation of the (already parsed)
    Bundle alone in this process, then the same Bundle pushed over HTTP, answer received."""
    model = get_fhir_model_class("Bundle")
    model.model_validate(bundles[0])
    gc.collect()
    gc.freeze()  # as the server does after loading the models: no full collections over them
    with ServerProcess(database_url) as server, server.client() as http:
        _push(http, orjson.dumps(lab_bundle(20)))  # warm-up: imports, caches, connection pool
        pairs = []
        for body, payload in zip(bundles, payloads, strict=True):
            started = time.perf_counter()
            model.model_validate(body)
            floor = len(body["entry"]) / (time.perf_counter() - started)
            started = time.perf_counter()
            _push(http, payload)
            pairs.append((floor, len(body["entry"]) / (time.perf_counter() - started)))
        return pairs


def memory_for_big_bundle(database_url: str, megabytes: float) -> tuple[int, int, int, int]:
    """(bundle bytes, entries, server peak before, server peak after) for one Bundle of about `megabytes`."""
    per_entry = len(orjson.dumps(lab_bundle(100))) / 101
    body = lab_bundle(int(megabytes * 1024 * 1024 / per_entry))
    payload = orjson.dumps(body)
    with (
        ServerProcess(database_url, max_bundle_entries="100000", max_body_bytes=str(64 * 1024 * 1024)) as server,
        server.client() as http,
    ):
        _push(http, orjson.dumps(lab_bundle(20)))
        before = server.peak_memory_bytes()
        _push(http, payload)
        return len(payload), len(body["entry"]), before, server.peak_memory_bytes()


def _postgres_database() -> tuple[str, str] | None:
    try:
        return create_postgres(f"ecrf_bench_{os.getpid()}", PG_ADMIN)
    except Exception as error:  # noqa: BLE001 - reported, then skipped
        print(f"PostgreSQL skipped: {str(error).strip().splitlines()[0]}")
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundles", type=int, default=10)
    parser.add_argument("--observations", type=int, default=1000)
    parser.add_argument("--big-mb", type=float, default=10.0)
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args(argv)

    bundles = [lab_bundle(args.observations) for _ in range(args.bundles)]
    payloads = [orjson.dumps(body) for body in bundles]
    print(
        f"{args.bundles} transaction Bundles x (1 Patient + {args.observations} lab Observations), "
        f"{sum(map(len, payloads)) / args.bundles / 1e6:.2f} MB each; medians over the Bundles; floor: "
        "fhir.resources R4B validation of the same Bundle alone, measured just before each push"
    )

    with tempfile.TemporaryDirectory() as scratch:
        backends = [("sqlite", f"sqlite:///{scratch}/ingest.db")]
        postgres = None if args.no_postgres else _postgres_database()
        if postgres:
            backends.append(("postgresql", postgres[1]))
        try:
            for name, url in backends:
                pairs = paired_rates(url, bundles, payloads)
                ratios = sorted(rate / floor for floor, rate in pairs)
                print(
                    f"{name:<10} floor {median(f for f, _ in pairs):6.0f} resources/s, end to end over HTTP "
                    f"{median(r for _, r in pairs):6.0f} resources/s = {median(ratios):5.1%} of floor "
                    f"(each Bundle: {ratios[0]:.0%} to {ratios[-1]:.0%})"
                )
            big_url = f"sqlite:///{scratch}/big.db"
            size, entries, before, after = memory_for_big_bundle(big_url, args.big_mb)
            print(
                f"memory (sqlite): one {size / 1e6:.1f} MB Bundle of {entries} entries: server peak RSS "
                f"{before / 1e6:.0f} MB before, {after / 1e6:.0f} MB after "
                f"(+{(after - before) / 1e6:.0f} MB = {(after - before) / size:.1f}x the Bundle size)"
            )
        finally:
            if postgres:
                drop_postgres(postgres[0], PG_ADMIN)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
