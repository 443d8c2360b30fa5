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
from ecrf.export import options as export_options
from ecrf.export.source import Row, Scope, batches, deletions
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
    options = json.loads(job.options) if job.options else {}
    patients = frozenset(options["patients"]) if options.get("patients") is not None else None
    elements = options.get("elements") or []

    def save(current: dict[str, Any] | None) -> None:
        if stopping.is_set():
            raise Stopped
        state = {"done": done, "current": current}
        if not jobs.checkpoint(runtime.engine, job, worker_id, settings.export_lease_seconds, state, exported):
            raise Stopped

    for resource_type in json.loads(job.types):
        if any(entry["type"] == resource_type for entry in done):
            continue
        type_filters = export_options.filters(resource_type, (options.get("type_filters") or {}).get(resource_type, []),
                                              settings)
        scope = Scope(resource_type, until=job.transaction_time, since=job.since,
                      sites=None if sites is None else tuple(sorted(sites)), study_id=job.group_id,
                      filters=tuple(type_filters), patients=patients)
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
                lines = _lines(runtime, resource_type, rows, deid, job.transaction_time.date(), elements)
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
    if job.since is not None:
        output += _write_deletions(runtime, job, directory, sites, patients, deid)
    if options.get("warnings"):
        output.append(_write_warnings(directory, options["warnings"]))
    if not jobs.complete(runtime.engine, job, worker_id, output, exported):
        raise Stopped


DELETED_FILE = "deleted.ndjson"
WARNINGS_FILE = "OperationOutcome.ndjson"
DELETED_PER_BUNDLE = 1000


def _write_deletions(runtime: Runtime, job: ExportJob, directory: Path, sites, patients,
                     deid: Deidentifier | None) -> list[dict[str, Any]]:
    """Per the Bulk Data IG: NDJSON of transaction Bundles, one DELETE entry per resource deleted since `_since`."""
    bundles = []
    for resource_type in json.loads(job.types):
        scope = Scope(resource_type, until=job.transaction_time, since=job.since,
                      sites=None if sites is None else tuple(sorted(sites)), study_id=job.group_id, patients=patients)
        ids = [resource_id if deid is None or resource_type in deid.keep_ids else deid.pseudonym(resource_id)
               for resource_id, _ in deletions(runtime.engine, scope)]
        for start in range(0, len(ids), DELETED_PER_BUNDLE):
            bundles.append({"resourceType": "Bundle", "type": "transaction", "entry": [
                {"request": {"method": "DELETE", "url": f"{resource_type}/{resource_id}"}}
                for resource_id in ids[start:start + DELETED_PER_BUNDLE]]})
    if not bundles:
        return []
    (directory / DELETED_FILE).write_bytes(b"".join(orjson.dumps(bundle) + b"\n" for bundle in bundles))
    return [{"type": "Bundle", "file": DELETED_FILE, "count": len(bundles), "section": "deleted"}]


def _write_warnings(directory: Path, warnings: list[str]) -> dict[str, Any]:
    """What lenient handling left out, as one OperationOutcome for the manifest's `error` array."""
    outcome = {"resourceType": "OperationOutcome", "issue": [
        {"severity": "warning", "code": "not-supported", "diagnostics": message} for message in warnings]}
    (directory / WARNINGS_FILE).write_bytes(orjson.dumps(outcome) + b"\n")
    return {"type": "OperationOutcome", "file": WARNINGS_FILE, "count": 1, "section": "error"}


def _lines(runtime: Runtime, resource_type: str, rows: list[Row], deid: Deidentifier | None,
           snapshot: date, elements: list[str] | None = None) -> list[bytes]:
    if elements:
        return [orjson.dumps(export_options.apply_elements(orjson.loads(line), elements)) + b"\n"
                for line in _lines(runtime, resource_type, rows, deid, snapshot)]
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
