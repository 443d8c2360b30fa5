"""The sponsor's de-identified `endpoints` dataset (CRF-SPEC 8): one row per randomised subject (pseudonym, arm,
stratum, rfs_days, rfs_event, os_days, os_event), days only and never a date, written as CSV with a manifest by
the export worker (job kind `endpoints`), from one snapshot of the store. Pseudonyms are the other de-identified
exports' (HMAC of the patient id with the study secret), so the rows join the SDTM and Bulk Data exports."""
import csv
import hashlib
import json
import threading
from pathlib import Path
from typing import Any

from sqlmodel import Session, select

from ecrf.endpoints.models import EndpointState
from ecrf.endpoints.service import compute_all
from ecrf.export import jobs
from ecrf.export.bulk import Stopped, deidentifier
from ecrf.export.models import ExportJob
from ecrf.randomisation.models import RandomisationAllocation

FILE = "endpoints.csv"
MANIFEST = "endpoints.manifest.json"
COLUMNS = ("subject", "arm", "stratum", "rfs_days", "rfs_event", "os_days", "os_event")


def _snapshot(runtime) -> Session:
    engine = runtime.engine
    if engine.dialect.name == "postgresql":
        engine = engine.execution_options(isolation_level="REPEATABLE READ")
    session = Session(engine, expire_on_commit=False)
    session.begin()
    return session


def rows(runtime, session: Session, sites: frozenset[str] | None, site: str | None) -> list[dict[str, Any]]:
    """Every randomised subject the job's owner may see, from the endpoints kept by the derived hook (a subject
    randomised before the hook existed and not written since is computed here, the same way)."""
    query = select(RandomisationAllocation).where(RandomisationAllocation.study_id == runtime.study.id)
    if sites is not None:
        query = query.where(RandomisationAllocation.site.in_(sorted(sites)))
    if site is not None:
        query = query.where(RandomisationAllocation.site == site)
    allocations = session.exec(query).all()
    states = {s.subject_id: s for s in session.exec(select(EndpointState).where(
        EndpointState.subject_id.in_([a.subject_id for a in allocations]))).all()} if allocations else {}
    missing = [a for a in allocations if a.subject_id not in states]
    live = compute_all(session, runtime.study, runtime.endpoints, missing) if missing and runtime.endpoints else {}
    deid = deidentifier(runtime)
    found = []
    for allocation in allocations:
        state = states.get(allocation.subject_id)
        if state is not None:
            rfs = (state.rfs_days, state.rfs_event)
            os = (state.os_days, state.os_event)
        elif allocation.subject_id in live:
            view = live[allocation.subject_id]
            rfs = (view["rfs"]["days"], view["rfs"]["event"])
            os = (view["os"]["days"], view["os"]["event"])
        else:
            continue
        found.append({"subject": deid.pseudonym(allocation.patient_id), "arm": allocation.arm,
                      "stratum": allocation.stratum, "rfs_days": rfs[0], "rfs_event": int(rfs[1]),
                      "os_days": os[0], "os_event": int(os[1])})
    return sorted(found, key=lambda row: row["subject"])


def run(runtime, job: ExportJob, worker_id: str, stopping: threading.Event) -> None:
    if stopping.is_set():
        raise Stopped
    params = json.loads(job.params or "{}")
    directory = Path(job.directory)
    directory.mkdir(parents=True, exist_ok=True)
    session = _snapshot(runtime)
    try:
        found = rows(runtime, session, jobs.owner(job).sites, params.get("site"))
    finally:
        session.close()
    path = directory / FILE
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(found)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    profile = deidentifier(runtime).profile.name
    manifest = {"study": runtime.study.id, "dataset": "endpoints", "file": FILE, "rows": len(found),
                "columns": list(COLUMNS), "sha256": digest, "deidentified": True, "profile": profile,
                "subject": "pseudonym: HMAC-SHA256 of the patient id with the study secret, as in the other exports",
                "days": "from the randomisation date (day 0); no dates",
                "event": "1: the event (rfs: recurrence or death; os: death), 0: censored"}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    output = [{"type": "endpoints", "file": FILE, "count": len(found), "sha256": digest},
              {"type": "manifest", "file": MANIFEST,
               "sha256": hashlib.sha256((directory / MANIFEST).read_bytes()).hexdigest()}]
    if not jobs.complete(runtime.engine, job, worker_id, output, len(found)):
        raise Stopped


RUNNERS = {"endpoints": run}
