"""The life of an export job in the database: created, claimed under a lease, checkpointed, finished.

Any instance sharing the database may claim a job: a queued one, or a running one whose lease ran out
(its instance stopped or died), which then resumes from its last checkpoint.
"""

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import or_, update
from sqlalchemy.engine import Engine
from sqlmodel import select

from ecrf.audit import service as audit
from ecrf.auth.actor import Actor
from ecrf.db import reading, transaction
from ecrf.export.models import ExportJob

QUEUED, RUNNING, COMPLETED, FAILED, CANCELLED, EXPIRED = (
    "queued",
    "running",
    "completed",
    "failed",
    "cancelled",
    "expired",
)
ACTIVE = (QUEUED, RUNNING)


def now() -> datetime:
    return datetime.now(UTC)


def section_of(entry: dict[str, Any]) -> str:
    """Where a file of a job's output goes in the manifest: output, deleted or error (resources that could not
    be exported, and the notes of a lenient kick-off, as OperationOutcome files)."""
    return "error" if entry.get("error") else entry.get("section", "output")


def create(
    engine: Engine,
    actor: Actor,
    *,
    directory: Path,
    deidentified: bool,
    profile: str | None,
    request_url: str,
    group_id: str | None,
    types: list[str],
    since: datetime | None,
    kind: str = "bulk",
    params: dict[str, Any] | None = None,
    options: dict[str, Any] | None = None,
) -> ExportJob:
    job_id = uuid.uuid4().hex
    moment = now()
    job = ExportJob(
        id=job_id,
        status=QUEUED,
        owner_sub=actor.sub,
        owner_role=actor.role,
        owner_sites=None if actor.sites is None else json.dumps(sorted(actor.sites)),
        deidentified=deidentified,
        profile=profile,
        request_url=request_url,
        group_id=group_id,
        types=json.dumps(types),
        since=since,
        transaction_time=moment,
        directory=str(directory / job_id),
        created_at=moment,
        kind=kind,
        params=None if params is None else json.dumps(params, sort_keys=True),
        options=json.dumps(options) if options else None,
    )
    with transaction(engine) as session:
        session.add(job)
    return job


def get(engine: Engine, job_id: str) -> ExportJob | None:
    with reading(engine) as session:
        return session.get(ExportJob, job_id)


def owner(job: ExportJob) -> Actor:
    sites = None if job.owner_sites is None else frozenset(json.loads(job.owner_sites))
    return Actor(sub=job.owner_sub, roles=frozenset(job.owner_role.split(",")), sites=sites)


def claim(engine: Engine, worker_id: str, lease_seconds: int) -> ExportJob | None:
    """The oldest job nobody holds, leased to this worker; SKIP LOCKED lets instances claim side by side."""
    moment = now()
    with transaction(engine) as session:
        job = session.exec(
            select(ExportJob)
            .where(or_(ExportJob.status == QUEUED, (ExportJob.status == RUNNING) & (ExportJob.lease_until < moment)))
            .order_by(ExportJob.created_at)
            .limit(1)
            .with_for_update(skip_locked=True)
        ).first()
        if job is None:
            return None
        job.status, job.lease_owner = RUNNING, worker_id
        job.lease_until = moment + timedelta(seconds=lease_seconds)
        job.started_at = job.started_at or moment
        job.attempts += 1
        session.add(job)
    return job


def checkpoint(
    engine: Engine, job: ExportJob, worker_id: str, lease_seconds: int, cursor: dict[str, Any], exported: int
) -> bool:
    """Record progress and renew the lease; False when the job is no longer ours (cancelled, taken over)."""
    with transaction(engine) as session:
        result = session.execute(
            update(ExportJob)
            .where(ExportJob.id == job.id, ExportJob.lease_owner == worker_id, ExportJob.status == RUNNING)
            .values(cursor=json.dumps(cursor), exported=exported, lease_until=now() + timedelta(seconds=lease_seconds))
        )
        return result.rowcount == 1


def release(engine: Engine, job: ExportJob, worker_id: str) -> None:
    """Give a running job back (this instance stops): the next instance resumes it at once."""
    with transaction(engine) as session:
        session.execute(
            update(ExportJob)
            .where(ExportJob.id == job.id, ExportJob.lease_owner == worker_id, ExportJob.status == RUNNING)
            .values(lease_owner=None, lease_until=now())
        )


def complete(engine: Engine, job: ExportJob, worker_id: str, output: list[dict[str, Any]], exported: int) -> bool:
    """Finish the job and write its audit entry (who, what, profile, counts) in one transaction."""
    with transaction(engine) as session:
        result = session.execute(
            update(ExportJob)
            .where(ExportJob.id == job.id, ExportJob.lease_owner == worker_id, ExportJob.status == RUNNING)
            .values(
                status=COMPLETED,
                output=json.dumps(output),
                exported=exported,
                finished_at=now(),
                lease_owner=None,
                lease_until=None,
            )
        )
        if result.rowcount != 1:
            return False
        summary = {
            "kind": job.kind or "bulk",
            **(json.loads(job.params) if job.params else {}),
            "request": job.request_url,
            "deidentified": job.deidentified,
            "profile": job.profile,
            "since": job.since.isoformat() if job.since else None,
            "counts": {entry["type"]: entry.get("count", 0) for entry in output if section_of(entry) == "output"},
            "deleted": sum(entry.get("count", 0) for entry in output if section_of(entry) == "deleted"),
            "not_exported": sum(entry.get("count", 0) for entry in output if section_of(entry) == "error"),
            "options": json.loads(job.options) if job.options else None,
            "total": exported,
        }
        audit.append(
            session,
            owner(job),
            "export",
            source="export",
            resource=f"Group/{job.group_id}" if job.group_id else "system",
            reason=job.profile,
            new_value=json.dumps(summary, sort_keys=True),
        )
    return True


def fail(engine: Engine, job: ExportJob, worker_id: str, error: str) -> None:
    with transaction(engine) as session:
        session.execute(
            update(ExportJob)
            .where(ExportJob.id == job.id, ExportJob.lease_owner == worker_id)
            .values(status=FAILED, error=error, finished_at=now(), lease_owner=None, lease_until=None)
        )


def cancel(engine: Engine, job_id: str) -> bool:
    with transaction(engine) as session:
        result = session.execute(
            update(ExportJob)
            .where(ExportJob.id == job_id, ExportJob.status.in_((*ACTIVE, COMPLETED)))
            .values(status=CANCELLED, finished_at=now(), lease_owner=None, lease_until=None)
        )
        return result.rowcount == 1


def expire(engine: Engine, retention: timedelta) -> list[str]:
    """Mark jobs finished longer ago than `retention` expired; returns their directories to delete."""
    cutoff = now() - retention
    with transaction(engine) as session:
        jobs = session.exec(
            select(ExportJob).where(ExportJob.status.in_((COMPLETED, FAILED)), ExportJob.finished_at < cutoff)
        ).all()
        for job in jobs:
            job.status = EXPIRED
            session.add(job)
        return [job.directory for job in jobs]
