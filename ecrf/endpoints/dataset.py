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

from ecrf.db import open_snapshot
from ecrf.endpoints.models import EndpointState
from ecrf.endpoints.service import Origin, compute_all
from ecrf.export import jobs
from ecrf.export.bulk import Stopped, deidentifier
from ecrf.export.models import ExportJob
from ecrf.randomisation.models import RandomisationAllocation

FILE = "endpoints.csv"
MANIFEST = "endpoints.manifest.json"
COLUMNS = ("subject", "arm", "stratum", "rfs_days", "rfs_event", "os_days", "os_event")


def rows(runtime, session: Session, sites: frozenset[str] | None, site: str | None) -> list[dict[str, Any]]:
    """Every randomised subject the job's owner may see, from the endpoints kept by the derived hook (a subject
    randomised before the hook existed and not written since is computed here, the same way)."""
    query = select(RandomisationAllocation).where(RandomisationAllocation.study_id == runtime.study.id)
    if sites is not None:
        query = query.where(RandomisationAllocation.site.in_(sorted(sites)))
    if site is not None:
        query = query.where(RandomisationAllocation.site == site)
    allocations = session.exec(query).all()
    kept = select(EndpointState)  # every subject the hook computed: allocated, or allocated under version 1
    if sites is not None:
        kept = kept.where(EndpointState.site.in_(sorted(sites)))
    if site is not None:
        kept = kept.where(EndpointState.site == site)
    states = {s.subject_id: s for s in session.exec(kept).all()}
    missing = [
        Origin(a.subject_id, a.patient_id, a.site, a.arm, a.stratum, a.randomisation_date, "system")
        for a in allocations
        if a.subject_id not in states
    ]
    live = compute_all(session, runtime.study, runtime.endpoints, missing) if missing and runtime.endpoints else {}
    deid = deidentifier(runtime)
    found = [
        {
            "subject": deid.pseudonym(state.patient_id),
            "arm": state.arm,
            "stratum": state.stratum,
            "rfs_days": state.rfs_days,
            "rfs_event": int(state.rfs_event),
            "os_days": state.os_days,
            "os_event": int(state.os_event),
        }
        for state in states.values()
    ]
    for origin in missing:
        view = live[origin.subject_id]
        found.append(
            {
                "subject": deid.pseudonym(origin.patient_id),
                "arm": origin.arm,
                "stratum": origin.stratum,
                "rfs_days": view["rfs"]["days"],
                "rfs_event": int(view["rfs"]["event"]),
                "os_days": view["os"]["days"],
                "os_event": int(view["os"]["event"]),
            }
        )
    return sorted(found, key=lambda row: row["subject"])


def run(runtime, job: ExportJob, worker_id: str, stopping: threading.Event) -> None:
    if stopping.is_set():
        raise Stopped
    params = json.loads(job.params or "{}")
    directory = Path(job.directory)
    directory.mkdir(parents=True, exist_ok=True)
    session = open_snapshot(runtime.engine)
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
    manifest = {
        "study": runtime.study.id,
        "dataset": "endpoints",
        "file": FILE,
        "rows": len(found),
        "columns": list(COLUMNS),
        "sha256": digest,
        "deidentified": True,
        "profile": profile,
        "subject": "pseudonym: HMAC-SHA256 of the patient id with the study secret, as in the other exports",
        "days": "from the randomisation date (day 0); no dates",
        "event": "1: the event (rfs: recurrence or death; os: death), 0: censored",
    }
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    output = [
        {"type": "endpoints", "file": FILE, "count": len(found), "sha256": digest},
        {
            "type": "manifest",
            "file": MANIFEST,
            "sha256": hashlib.sha256((directory / MANIFEST).read_bytes()).hexdigest(),
        },
    ]
    if not jobs.complete(runtime.engine, job, worker_id, output, len(found)):
        raise Stopped


RUNNERS = {"endpoints": run}
