"""The background worker each instance starts with the app: claims export jobs from the database and runs them."""

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

from fastapi import FastAPI, Request
from starlette.concurrency import run_in_threadpool

from ecrf.cdisc.runner import RUNNERS as CDISC_RUNNERS
from ecrf.endpoints.dataset import RUNNERS as ENDPOINTS_RUNNERS
from ecrf.export import bulk, jobs
from ecrf.services import Services as Runtime  # the protocol; ecrf.runtime has the one running
from ecrf.common.failures import types_and_frames
from ecrf.responses import fhir_base

log = logging.getLogger(__name__)
IDLE_POLL_SECONDS = 1.0
RUNNERS = {
    "bulk": bulk.run,
    **CDISC_RUNNERS,
    **ENDPOINTS_RUNNERS,
}  # export job kind -> runner(runtime, job, worker_id, stopping)
SWEEP_SECONDS = 60.0


class ExportWorker:
    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        self.id = f"{socket.gethostname()[:30]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.stopping = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"export-worker-{self.id}", daemon=True)
        self._swept = 0.0

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 30) -> None:
        self.stopping.set()
        self._wake.set()
        self._thread.join(timeout)

    def _loop(self) -> None:
        settings = self.runtime.settings
        while not self.stopping.is_set():
            try:
                job = jobs.claim(self.runtime.engine, self.id, settings.export_lease_seconds)
            except Exception as error:  # noqa: BLE001 - the database may be briefly away; try again later
                _withheld(error, "claiming an export job failed")
                job = None
            if job is not None:
                self._run(job)
                continue
            self._sweep()
            self._wake.wait(IDLE_POLL_SECONDS)
            self._wake.clear()

    def _run(self, job) -> None:
        engine = self.runtime.engine
        try:
            RUNNERS.get(job.kind or "bulk", bulk.run)(self.runtime, job, self.id, self.stopping)
        except bulk.Stopped:
            current = jobs.get(engine, job.id)
            if current is not None and current.status == jobs.CANCELLED:
                bulk.discard(job.directory)
            elif self.stopping.is_set():
                jobs.release(engine, job, self.id)
        except Exception as error:  # noqa: BLE001 - a failed job is reported to its owner, not fatal to the worker
            _withheld(error, f"export job {job.id} failed")
            jobs.fail(engine, job, self.id, f"the export failed ({type(error).__name__}); start a new one")

    def _sweep(self) -> None:
        if time.monotonic() - self._swept < SWEEP_SECONDS:
            return
        self._swept = time.monotonic()
        retention = timedelta(hours=self.runtime.settings.export_retention_hours)
        try:
            for directory in jobs.expire(self.runtime.engine, retention):
                bulk.discard(directory)
        except Exception as error:  # noqa: BLE001
            _withheld(error, "expiring export files failed")


def _withheld(error: Exception, what: str) -> None:
    """An export reads and writes patient data: its failures are logged without their messages."""
    log.error(
        "%s: %s (message withheld: it may hold patient data)\n%s",
        what,
        type(error).__qualname__,
        types_and_frames(error),
    )


def kicked_off(request: Request, job_id: str) -> str:
    """Wake this instance's export worker (if it runs one) for a job just queued; the job's status URL."""
    worker = getattr(request.app.state, "export_worker", None)
    if worker is not None:
        worker.wake()
    return f"{fhir_base(request)}/$export-status/{job_id}"


@asynccontextmanager
async def worker_lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Starts this instance's export worker with the app and stops it (releasing its job) at shutdown."""
    runtime: Runtime = app.state.runtime
    worker = ExportWorker(runtime) if runtime.settings.export_worker else None
    app.state.export_worker = worker
    if worker is not None:
        worker.start()
    try:
        yield
    finally:
        if worker is not None:
            await run_in_threadpool(worker.stop)
