"""Runs one claimed Bulk Data job: one NDJSON file per resource type, written batch by batch, with a
checkpoint (file offset and last id) after every batch so another instance can resume it."""
import json
import logging
import shutil
import threading
from functools import lru_cache
from datetime import date
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import select

from ecrf.db import reading
from ecrf.export import jobs
from ecrf.export.deidentify import Deidentifier, load_profile, parse_date, study_secret
from ecrf.export.models import ExportJob
from ecrf.export.source import Row, Scope, batches
from ecrf.runtime import Runtime
from ecrf.store.models import ItemFact

log = logging.getLogger(__name__)


class Stopped(Exception):
    """The job is no longer ours to run: cancelled, or this instance is stopping."""


def deidentifier(runtime: Runtime) -> Deidentifier:
    path = Path(runtime.settings.export_profile)
    return _compiled(path, path.stat().st_mtime, study_secret(runtime.settings))


@lru_cache(maxsize=4)
def _compiled(path: Path, _mtime: float, secret: bytes) -> Deidentifier:
    return Deidentifier(load_profile(path), secret)


def file_name(resource_type: str) -> str:
    return f"{resource_type}.ndjson"


def run(runtime: Runtime, job: ExportJob, worker_id: str, stopping: threading.Event) -> None:
    settings = runtime.settings
    directory = Path(job.directory)
    directory.mkdir(parents=True, exist_ok=True)
    deid = deidentifier(runtime) if job.deidentified else None
    sites = jobs.owner(job).sites
    cursor: dict[str, Any] = json.loads(job.cursor) if job.cursor else {"done": []}
    done: list[dict[str, Any]] = cursor["done"]
    exported = sum(entry["count"] for entry in done)

    def save(current: dict[str, Any] | None) -> None:
        if stopping.is_set():
            raise Stopped
        state = {"done": done, "current": current}
        if not jobs.checkpoint(runtime.engine, job, worker_id, settings.export_lease_seconds, state, exported):
            raise Stopped

    for resource_type in json.loads(job.types):
        if any(entry["type"] == resource_type for entry in done):
            continue
        scope = Scope(resource_type, until=job.transaction_time, since=job.since,
                      sites=None if sites is None else tuple(sorted(sites)), study_id=job.group_id)
        path = directory / file_name(resource_type)
        after, count, handle = None, 0, None
        current = cursor.get("current")
        if current and current["type"] == resource_type and path.exists() and path.stat().st_size >= current["bytes"]:
            after, count = current["after"], current["count"]
            handle = path.open("r+b")
            handle.truncate(current["bytes"])  # anything after the checkpoint is written again
            handle.seek(current["bytes"])
        with handle or path.open("wb") as out:
            for after, rows in batches(runtime.engine, scope, after, settings.export_batch_size):
                lines = _lines(runtime, resource_type, rows, deid, job.transaction_time.date())
                out.write(b"".join(lines))
                out.flush()
                count += len(lines)
                exported += len(lines)
                save({"type": resource_type, "after": after, "count": count, "bytes": out.tell()})
                if settings.export_batch_pause_seconds:
                    stopping.wait(settings.export_batch_pause_seconds)
        done.append({"type": resource_type, "count": count})
        cursor["current"] = None
        save(None)
    output = []
    for entry in done:
        path = directory / file_name(entry["type"])
        if entry["count"]:
            output.append({"type": entry["type"], "file": path.name, "count": entry["count"]})
        else:
            path.unlink(missing_ok=True)
    if not jobs.complete(runtime.engine, job, worker_id, output, exported):
        raise Stopped


def _lines(runtime: Runtime, resource_type: str, rows: list[Row], deid: Deidentifier | None,
           snapshot: date) -> list[bytes]:
    if deid is None:
        return [row.content.encode() + b"\n" for row in rows]
    anchors = _age_anchors(runtime, deid, rows, snapshot) if resource_type == "Patient" else {}
    lines = []
    for row in rows:
        content = orjson.loads(row.content)
        result = deid.resource(content, row.patient_id, anchors.get(row.patient_id))
        if result is not None:
            lines.append(orjson.dumps(result) + b"\n")
    return lines


def _age_anchors(runtime: Runtime, deid: Deidentifier, rows: list[Row], snapshot: date) -> dict[str, date]:
    """For Patients: the date ages are computed at (the profile's item, e.g. consent; else the snapshot)."""
    patients = [row.patient_id for row in rows if row.patient_id]
    anchors: dict[str, date] = {}
    if deid.age_item and patients:
        with reading(runtime.engine) as session:
            for patient_id, text in session.execute(
                    select(ItemFact.patient_id, ItemFact.value_text)
                    .where(ItemFact.item_id == deid.age_item, ItemFact.patient_id.in_(patients))
                    .order_by(ItemFact.pk)).all():
                moment = parse_date(text)
                if moment is not None:
                    anchors[patient_id] = moment
    return {patient_id: anchors.get(patient_id, snapshot) for patient_id in patients}


def discard(directory: str) -> None:
    shutil.rmtree(directory, ignore_errors=True)
