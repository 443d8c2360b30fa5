"""Runs CDISC export jobs on the export worker (kinds `odm` and `sdtm`). A job reads the store in one snapshot,
subject by subject (memory: one subject), renews its lease every batch of subjects, and writes its files with a
manifest (SHA-256 and counts per file, the audit chain head it was made from). A job resumed by another instance
starts its files again from the beginning, in a new snapshot."""

import hashlib
import json
import threading
import zipfile
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlmodel import Session

from ecrf.audit.models import AuditHead
from ecrf.cdisc import collect, datasets, define, odm, sdtm
from ecrf.cdisc.mapping import load_mapping
from ecrf.db import open_snapshot
from ecrf.export import jobs
from ecrf.export.bulk import Stopped, deidentifier
from ecrf.export.models import ExportJob
from ecrf.store.service import ClinicalStore

SUBJECT_BATCH = 50
PACKAGE = "sdtm-package.zip"


def _progress(runtime, job: ExportJob, worker_id: str, stopping: threading.Event, done: int) -> None:
    if stopping.is_set():
        raise Stopped
    if not jobs.checkpoint(
        runtime.engine, job, worker_id, runtime.settings.export_lease_seconds, {"done": [], "subjects": done}, done
    ):
        raise Stopped


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _subjects(runtime, job: ExportJob, session: Session, *, values: bool = True):
    params = json.loads(job.params or "{}")
    store = ClinicalStore(session, jobs.owner(job), runtime.indexer)
    return collect.subjects(store, runtime.study, params.get("site"), values=values)


def _mdv(job: ExportJob) -> str:
    return f"MDV.{job.kind}.{'deid' if job.deidentified else 'full'}.{job.id[:8]}"


def run_odm(runtime, job: ExportJob, worker_id: str, stopping: threading.Event) -> None:
    params = json.loads(job.params or "{}")
    directory = Path(job.directory)
    directory.mkdir(parents=True, exist_ok=True)
    deid = deidentifier(runtime) if job.deidentified else None
    created = jobs.now()
    archive = params.get("mode", "archive") == "archive"
    path = directory / ("odm-archive.xml" if archive else "odm-snapshot.xml")
    writer = odm.Writer(path, runtime.study, _mdv(job), deid, archive=archive, created=created)
    session = open_snapshot(runtime.engine)
    try:
        head = session.execute(select(AuditHead.last_seq, AuditHead.last_hash)).first() or (0, "0" * 64)
        for subject in _subjects(runtime, job, session, values=not archive):
            writer.add(subject, collect.audit_trail(session, subject.patient_id) if archive else [])
            if writer.subjects % SUBJECT_BATCH == 0:
                _progress(runtime, job, worker_id, stopping, writer.subjects)
    finally:
        session.close()
    writer.finish(tuple(head))
    output = [
        {
            "type": "odm",
            "file": path.name,
            "count": writer.subjects,
            "values": writer.values,
            "sha256": _sha256(path),
            "audit_chain_head": {"seq": head[0], "hash": head[1]},
        }
    ]
    if not jobs.complete(runtime.engine, job, worker_id, output, writer.subjects):
        raise Stopped


def run_sdtm(runtime, job: ExportJob, worker_id: str, stopping: threading.Event) -> None:
    directory = Path(job.directory)
    directory.mkdir(parents=True, exist_ok=True)
    deid = deidentifier(runtime) if job.deidentified else None
    created = jobs.now()
    mapping = load_mapping(runtime.settings.study_dir, runtime.study)
    builder = sdtm.Builder(runtime.study, mapping, deid)
    spools = {dataset.name: datasets.Spool(directory, dataset) for dataset in sdtm.datasets(mapping)}
    session = open_snapshot(runtime.engine)
    count = 0
    try:
        head = session.execute(select(AuditHead.last_seq, AuditHead.last_hash)).first() or (0, "0" * 64)
        for subject in _subjects(runtime, job, session):
            for name, rows in builder.rows(subject).items():
                spools[name].add(rows)
            count += 1
            if count % SUBJECT_BATCH == 0:
                _progress(runtime, job, worker_id, stopping, count)
    finally:
        session.close()
    mdv = _mdv(job)
    output: list[dict[str, Any]] = []
    for spool in spools.values():
        output += datasets.finish(directory, spool, runtime.study.id, created, mdv)
    define.write(
        directory / "define.xml",
        runtime.study,
        mapping,
        [(spool.dataset, [min(n, datasets.XPT_MAX_CHARS) for n in spool.lengths]) for spool in spools.values()],
        created,
        mdv,
        job.deidentified,
    )
    output.append({"type": "define", "file": "define.xml"})
    for entry in output:
        entry["sha256"] = _sha256(directory / entry["file"])
        entry["audit_chain_head"] = {"seq": head[0], "hash": head[1]}
    package = directory / PACKAGE
    with zipfile.ZipFile(package, "w", zipfile.ZIP_DEFLATED) as archive:  # file by file: memory stays bounded
        for entry in output:
            archive.write(directory / entry["file"], entry["file"])
        archive.writestr(
            "manifest.json",
            json.dumps(
                {"study": runtime.study.id, "deidentified": job.deidentified, "profile": job.profile, "files": output},
                indent=1,
            ),
        )
    output.append(
        {
            "type": "package",
            "file": PACKAGE,
            "sha256": _sha256(package),
            "audit_chain_head": {"seq": head[0], "hash": head[1]},
        }
    )
    if not jobs.complete(runtime.engine, job, worker_id, output, count):
        raise Stopped


RUNNERS = {"odm": run_odm, "sdtm": run_sdtm}


def started(job: ExportJob) -> datetime | None:
    return job.started_at
