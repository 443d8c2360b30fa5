"""Cost of the enrolment report on SQLite and PostgreSQL, and the plans of its GROUP BY queries.

Writes N synthetic subjects straight into the tables the report reads (ResearchSubject heads and search
tokens, eligibility state, form instances, arm facts; plus 20 Observations' worth of tokens and facts per
subject as the noise a real store holds), then times GET /api/v1/reports/enrolment over HTTP for a data
manager and a sponsor, and prints each query's plan.

    .venv/bin/python bench/reports.py [--subjects 20000] [--backend sqlite|postgresql|both] [--plans]
"""

import argparse
import statistics
import sys
import time
import uuid
from datetime import UTC, date, datetime
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.eligibility import database, serving  # noqa: E402
from ecrf.auth.tokens import issue_dev_token  # noqa: E402
from ecrf.config import Settings  # noqa: E402
from ecrf.crf.models import FormInstance  # noqa: E402
from ecrf.db import transaction  # noqa: E402
from ecrf.eligibility.models import EligibilityState  # noqa: E402
from ecrf.reports import service  # noqa: E402
from ecrf.runtime import Runtime  # noqa: E402
from ecrf.common.bulk import insert_rows  # noqa: E402
from ecrf.store.migrate import upgrade  # noqa: E402
from ecrf.store.models import ItemFact, ResourceHead, SearchToken  # noqa: E402

NOW = datetime.now(UTC)
STATUSES = ("candidate", "eligible", "ineligible")
FORM_STATUSES = ("draft", "complete", "verified", "signed", "locked")


def seed(runtime: Runtime, count: int) -> None:
    study = runtime.study
    pairs = [(form.id, visit) for form in study.forms for visit in form.visits]
    study_ref = f"ResearchStudy/{study.id}"
    for start in range(0, count, 2000):
        heads, tokens, states, instances, facts = [], [], [], [], []
        for n in range(start, min(count, start + 2000)):
            subject = uuid.uuid4().hex
            site = study.sites[(n // 2) % len(study.sites)].id
            status = STATUSES[n % 3]
            heads.append(
                {
                    "resource_type": "ResearchSubject",
                    "resource_id": subject,
                    "version_id": 1,
                    "version_pk": n,
                    "last_updated": NOW,
                    "deleted": False,
                    "patient_id": subject,
                    "site": site,
                }
            )
            tokens += [
                {"resource_type": "ResearchSubject", "resource_id": subject, "param": "study", "value": study_ref},
                {"resource_type": "ResearchSubject", "resource_id": subject, "param": "status", "code": status},
            ]
            for k in range(20):
                observation = f"{subject}-{k}"
                heads.append(
                    {
                        "resource_type": "Observation",
                        "resource_id": observation,
                        "version_id": 1,
                        "version_pk": n,
                        "last_updated": NOW,
                        "deleted": False,
                        "patient_id": subject,
                        "site": site,
                    }
                )
                tokens += [
                    {"resource_type": "Observation", "resource_id": observation, "param": "status", "code": "final"},
                    {
                        "resource_type": "Observation",
                        "resource_id": observation,
                        "param": "subject",
                        "value": f"Patient/{subject}",
                    },
                ]
                facts.append(
                    {
                        "resource_type": "Observation",
                        "resource_id": observation,
                        "version_id": 1,
                        "patient_id": subject,
                        "form_id": "labs",
                        "item_id": "platelets",
                        "value_number": 180.0,
                        "source": "form",
                    }
                )
            randomised = status == "eligible" and (n // 3) % 2 == 0
            states.append(
                {
                    "subject_id": subject,
                    "patient_id": subject,
                    "site": site,
                    "status": {"candidate": "incomplete"}.get(status, status),
                    "live_status": status,
                    "blocking": "[]",
                    "result": "{}",
                    "frozen_result": "{}" if randomised else None,
                    "frozen_at": NOW if randomised else None,
                    "changed_since_randomisation": False,
                    "evaluated_at": NOW,
                }
            )
            if randomised:
                facts.append(
                    {
                        "resource_type": "ResearchSubject",
                        "resource_id": subject,
                        "version_id": 1,
                        "patient_id": subject,
                        "form_id": "randomisation",
                        "item_id": "arm",
                        "value_text": study.arms[(n // 6) % len(study.arms)].id,
                        "source": "form",
                    }
                )
            for i, (form_id, visit_id) in enumerate(pairs[: n % len(pairs) + 1]):
                instances.append(
                    {
                        "id": uuid.uuid4().hex,
                        "subject_id": subject,
                        "patient_id": subject,
                        "site": site,
                        "form_id": form_id,
                        "visit_id": visit_id,
                        "status": FORM_STATUSES[(n + i) % 5],
                        "version": 1,
                        "visit_date": date.today(),
                        "resources": "{}",
                        "created_at": NOW,
                        "created_by": "bench",
                        "updated_at": NOW,
                        "updated_by": "bench",
                        "updated_role": "coordinator",
                    }
                )
        with transaction(runtime.engine) as session:
            for table, rows in (
                (ResourceHead, heads),
                (SearchToken, tokens),
                (EligibilityState, states),
                (FormInstance, instances),
                (ItemFact, facts),
            ):
                columns = sorted({name for row in rows for name in row})
                insert_rows(session, table.__table__, [{name: row.get(name) for name in columns} for row in rows])
    with runtime.engine.begin() as connection:
        connection.exec_driver_sql("ANALYZE")


def plans(runtime: Runtime) -> None:
    """Each query's plan and time (all sites, then one site)."""
    engine = runtime.engine
    explain = "EXPLAIN QUERY PLAN " if engine.dialect.name == "sqlite" else "EXPLAIN "
    with engine.connect() as connection:
        for sites in (None, frozenset({"S01"})):
            for name, query in service.queries(runtime.study, sites).items():
                if query is None:
                    continue
                sql = str(query.compile(engine, compile_kwargs={"literal_binds": True}))
                begin = time.perf_counter()
                count = len(connection.exec_driver_sql(sql).all())
                took = (time.perf_counter() - begin) * 1000
                print(f"  -- {name} ({'all sites' if sites is None else 'S01'}): {count} rows in {took:.0f} ms")
                for row in connection.exec_driver_sql(explain + sql):
                    print("    " + " | ".join(str(part) for part in row))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=20000)
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--plans", action="store_true")
    args = parser.parse_args()
    for backend in ("sqlite", "postgresql") if args.backend == "both" else (args.backend,):
        with database(backend) as url:
            runtime = Runtime.start(
                Settings(database_url=url, jwt_secret="bench-" + "x" * 32, export_worker=False, _env_file=None)
            )
            upgrade(runtime.engine)
            start = time.perf_counter()
            seed(runtime, args.subjects)
            print(f"{backend}: {args.subjects} subjects seeded in {time.perf_counter() - start:.1f} s")
            if args.plans:
                plans(runtime)
            with serving(runtime) as base:
                for role in ("data_manager", "sponsor"):
                    token = issue_dev_token(runtime.settings, role=role, ttl_minutes=30)
                    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=120) as http:
                        samples = []
                        for _ in range(5):
                            begin = time.perf_counter()
                            response = http.get("/api/v1/reports/enrolment")
                            samples.append((time.perf_counter() - begin) * 1000)
                            assert response.status_code == 200, response.text
                        body = response.json()
                    print(
                        f"  {role}: median {statistics.median(samples):.0f} ms, max {max(samples):.0f} ms "
                        f"(subjects {body['overall']['subjects']}, hidden cells {body['hidden_cells']})"
                    )
            runtime.engine.dispose()


if __name__ == "__main__":
    main()
