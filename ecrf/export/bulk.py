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
from ecrf.export.deidentify import Deidentifier, Undeidentifiable, load_profile, parse_date, study_secret
from ecrf.export.models import ExportJob
from ecrf.export import options as export_options
from ecrf.export.source import Row, Scope, batches, deletions
from ecrf.export.vocabulary import Vocabulary, of_study
from ecrf.services import Services as Runtime  # the protocol; ecrf.runtime has the one running
from ecrf.store.models import ItemFact

log = logging.getLogger(__name__)


class Stopped(Exception):
    """The job is no longer ours to run: cancelled, or this instance is stopping."""


def deidentifier(runtime: Runtime) -> Deidentifier:
    path = Path(runtime.settings.export_profile)
    return _compiled(path, path.stat().st_mtime, study_secret(runtime.settings), _vocabulary(runtime.study))


_vocabularies: dict[int, tuple[Any, Vocabulary]] = {}


def _vocabulary(study) -> Vocabulary:
    """The study's codes, units and arms, which a de-identified export may carry (made once per study)."""
    found = _vocabularies.get(id(study))
    if found is None or found[0] is not study:
        found = _vocabularies[id(study)] = (study, of_study(study))
    return found[1]


@lru_cache(maxsize=4)
def _compiled(path: Path, _mtime: float, secret: bytes, vocabulary: Vocabulary) -> Deidentifier:
    return Deidentifier(load_profile(path), secret, vocabulary)


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
    # resources that could not be exported: one OperationOutcome each, in the manifest's `error` file
    problems = Problems(directory / ERROR_FILE, **(cursor.get("errors") or {}))
    options = json.loads(job.options) if job.options else {}
    patients = frozenset(options["patients"]) if options.get("patients") is not None else None
    elements = options.get("elements") or []

    def save(current: dict[str, Any] | None) -> None:
        if stopping.is_set():
            raise Stopped
        problems.flush()
        state = {"done": done, "current": current, "errors": problems.state}
        if not jobs.checkpoint(runtime.engine, job, worker_id, settings.export_lease_seconds, state, exported):
            raise Stopped

    for resource_type in json.loads(job.types):
        if any(entry["type"] == resource_type for entry in done):
            continue
        type_filters = export_options.filters(
            resource_type, (options.get("type_filters") or {}).get(resource_type, []), settings
        )
        scope = Scope(
            resource_type,
            until=job.transaction_time,
            since=job.since,
            sites=None if sites is None else tuple(sorted(sites)),
            study_id=job.group_id,
            filters=tuple(type_filters),
            patients=patients,
        )
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
                lines = _lines(runtime, resource_type, rows, deid, job.transaction_time.date(), problems, elements)
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
    problems.close()
    if problems.count:
        output.append({"type": "OperationOutcome", "file": ERROR_FILE, "count": problems.count, "error": True})
    if job.since is not None:
        output += _write_deletions(runtime, job, directory, sites, patients, deid)
    if options.get("warnings"):
        output.append(_write_warnings(directory, options["warnings"]))
    if not jobs.complete(runtime.engine, job, worker_id, output, exported):
        raise Stopped


ERROR_FILE = "OperationOutcome.ndjson"


class Problems:
    """The export's error file: appended to as resources fail, checkpointed (count, bytes) with the job."""

    def __init__(self, path: Path, count: int = 0, bytes: int = 0):  # noqa: A002 - the checkpoint's key
        self.path, self.count, self._bytes, self._handle = path, count, bytes, None
        if path.exists():
            with path.open("r+b") as handle:
                handle.truncate(bytes)  # anything after the checkpoint is written again
        else:
            self.count, self._bytes = 0, 0

    @property
    def state(self) -> dict[str, int]:
        return {"count": self.count, "bytes": self._bytes}

    def add(self, resource: str, message: str) -> None:
        if self._handle is None:
            self._handle = self.path.open("ab")
        outcome = {
            "resourceType": "OperationOutcome",
            "issue": [
                {
                    "severity": "error",
                    "code": "processing",
                    "diagnostics": f"{resource} was not exported: {message}",
                    "expression": [resource.split("/")[0]],
                }
            ],
        }
        self._handle.write(orjson.dumps(outcome) + b"\n")
        self.count += 1

    def flush(self) -> None:
        if self._handle is not None:
            self._handle.flush()
            self._bytes = self._handle.tell()

    def close(self) -> None:
        self.flush()
        if self._handle is not None:
            self._handle.close()
            self._handle = None


DELETED_FILE = "deleted.ndjson"
WARNINGS_FILE = "OperationOutcome.warnings.ndjson"  # beside ERROR_FILE, in the same `error` array
DELETED_PER_BUNDLE = 1000


def _write_deletions(
    runtime: Runtime, job: ExportJob, directory: Path, sites, patients, deid: Deidentifier | None
) -> list[dict[str, Any]]:
    """Per the Bulk Data IG: NDJSON of transaction Bundles, one DELETE entry per resource deleted since `_since`."""
    bundles = []
    for resource_type in json.loads(job.types):
        scope = Scope(
            resource_type,
            until=job.transaction_time,
            since=job.since,
            sites=None if sites is None else tuple(sorted(sites)),
            study_id=job.group_id,
            patients=patients,
        )
        ids = [
            resource_id if deid is None or resource_type in deid.keep_ids else deid.pseudonym(resource_id)
            for resource_id, _ in deletions(runtime.engine, scope)
        ]
        for start in range(0, len(ids), DELETED_PER_BUNDLE):
            bundles.append(
                {
                    "resourceType": "Bundle",
                    "type": "transaction",
                    "entry": [
                        {"request": {"method": "DELETE", "url": f"{resource_type}/{resource_id}"}}
                        for resource_id in ids[start : start + DELETED_PER_BUNDLE]
                    ],
                }
            )
    if not bundles:
        return []
    (directory / DELETED_FILE).write_bytes(b"".join(orjson.dumps(bundle) + b"\n" for bundle in bundles))
    return [{"type": "Bundle", "file": DELETED_FILE, "count": len(bundles), "section": "deleted"}]


def _write_warnings(directory: Path, warnings: list[str]) -> dict[str, Any]:
    """What lenient handling left out, as one OperationOutcome for the manifest's `error` array."""
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "warning", "code": "not-supported", "diagnostics": message} for message in warnings],
    }
    (directory / WARNINGS_FILE).write_bytes(orjson.dumps(outcome) + b"\n")
    return {"type": "OperationOutcome", "file": WARNINGS_FILE, "count": 1, "section": "error"}


def _lines(
    runtime: Runtime,
    resource_type: str,
    rows: list[Row],
    deid: Deidentifier | None,
    snapshot: date,
    problems: Problems,
    elements: list[str] | None = None,
) -> list[bytes]:
    """One NDJSON line per row (only the `_elements` asked for, when asked). A row that cannot be exported is
    reported in `problems` (named by its pseudonym in a de-identified export) and left out: one record never
    stops an export for everyone."""
    if elements:
        return [
            orjson.dumps(export_options.apply_elements(orjson.loads(line), elements)) + b"\n"
            for line in _lines(runtime, resource_type, rows, deid, snapshot, problems)
        ]
    if deid is None:
        return [row.content.encode() + b"\n" for row in rows]
    anchors = _age_anchors(runtime, deid, rows, snapshot) if resource_type == "Patient" else {}
    lines = []
    for row in rows:
        try:
            content = orjson.loads(row.content)
            result = deid.resource(content, row.patient_id, anchors.get(row.patient_id))
            line = None if result is None else orjson.dumps(result) + b"\n"
        except (Undeidentifiable, ValueError, TypeError, KeyError, OverflowError, AttributeError) as error:
            why = (
                str(error)
                if isinstance(error, Undeidentifiable)
                else f"it could not be de-identified ({type(error).__name__})"
            )
            problems.add(f"{resource_type}/{deid.pseudonym(row.resource_id)}", why)
            continue
        if line is not None:
            lines.append(line)
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
                .order_by(ItemFact.pk)
            ).all():
                moment = parse_date(text)
                if moment is not None:
                    anchors[patient_id] = moment
    return {patient_id: anchors.get(patient_id, snapshot) for patient_id in patients}


def discard(directory: str) -> None:
    shutil.rmtree(directory, ignore_errors=True)
