"""Form exports as CSV under /api/v1/exports, with a manifest (row counts, SHA-256) computed the same way."""

import json
from collections.abc import Iterator
from typing import Any
from contextlib import contextmanager

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send

from ecrf.audit import service as audit
from ecrf.audit.access import service as access
from ecrf.auth.actor import Actor
from ecrf.auth.dependencies import requires
from ecrf.db import open_snapshot
from ecrf.db import transaction
from ecrf.export import form_csv
from ecrf.export.access import deidentify_for
from ecrf.export.bulk import deidentifier
from ecrf.export.deidentify import Deidentifier
from ecrf.export.jobs import now
from ecrf.services import Services as Runtime  # the protocol; ecrf.runtime has the one running
from ecrf.store.service import ClinicalStore, instant
from study_model.definitions import FormDef

router = APIRouter(tags=["export"])
EXPORT = Depends(requires("export.deidentified"))
DEIDENTIFY = Query(True, description="false: identified data (data_manager only; a sponsor gets 403)")


def _form(runtime: Runtime, form_id: str) -> FormDef:
    try:
        return runtime.study.form(form_id)
    except KeyError:
        raise HTTPException(404, f"form {form_id} is not a form of study {runtime.study.id}") from None


@contextmanager
def _export(request: Request, actor: Actor, form_id: str, deidentify: bool) -> Iterator[tuple]:
    runtime: Runtime = request.app.state.runtime
    form = _form(runtime, form_id)
    deid: Deidentifier | None = deidentifier(runtime) if deidentify_for(actor, deidentify) else None
    session = open_snapshot(runtime.engine)  # one read for the whole CSV: it matches the data version announced
    try:
        yield runtime, form, deid, session, form_csv.data_version(session)
    except BaseException:
        session.close()
        raise


def _headers(deid: Deidentifier | None, version: int) -> dict[str, str]:
    return {
        "X-Data-Version": str(version),
        "X-Deidentification-Profile": deid.profile.name if deid else "none (identified)",
    }


@router.get(
    "/exports/forms/{form_id}.csv",
    summary="One form as CSV: a row per subject and visit (streamed)",
    response_class=StreamingResponse,
)
def export_form_csv(request: Request, form_id: str, deidentify: bool = DEIDENTIFY, actor: Actor = EXPORT):
    """Canonical units (in the header); de-identified unless a data manager asks `deidentify=false`. The row
    count and SHA-256 are in `GET …/{form_id}.csv.manifest`, valid when its `data_version` equals this
    response's `X-Data-Version`."""
    with _export(request, actor, form_id, deidentify) as (runtime, form, deid, session, version):
        store = ClinicalStore(session, actor, runtime.indexer)

        def body() -> Iterator[bytes]:
            tally, finished, told = form_csv.Tally(), False, 0
            try:
                for chunk in form_csv.chunks(store, runtime.study, form, deid, tally):
                    if deid is None:  # identified rows (real subject ids, birth dates): recorded before they leave
                        access.shown(request, actor, "export.form_csv", access.IDENTIFIED_EXPORT, tally.patients[told:])
                        told = len(tally.patients)
                    yield chunk
                finished = True
            finally:
                session.close()
                _audit(runtime, actor, form, deid, version, tally, finished)

        headers = {
            **_headers(deid, version),
            "Content-Disposition": f'attachment; filename="{runtime.study.id}-{form.id}.csv"',
        }
        return ClosingStream(body(), media_type="text/csv; charset=utf-8", headers=headers)


class ClosingStream(StreamingResponse):
    """Closes its generator when the response ends, however it ends (a stream broken off because its access
    rows could not be written, a client gone): the snapshot is released and the export audited then, in a
    worker thread, not whenever the garbage collector gets to the generator (inside another transaction)."""

    def __init__(self, chunks: Iterator[bytes], **options: Any):
        super().__init__(chunks, **options)
        self.chunks = chunks

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await run_in_threadpool(self.chunks.close)


@router.get("/exports/forms/{form_id}.csv.manifest", summary="Row count and SHA-256 of the form's CSV")
def export_form_manifest(request: Request, form_id: str, deidentify: bool = DEIDENTIFY, actor: Actor = EXPORT):
    with _export(request, actor, form_id, deidentify) as (runtime, form, deid, session, version):
        tally = form_csv.Tally()
        try:
            for _ in form_csv.chunks(ClinicalStore(session, actor, runtime.indexer), runtime.study, form, deid, tally):
                pass
        finally:
            session.close()
        return {
            "form": form.id,
            "study": runtime.study.id,
            "generated_at": instant(now()),
            "data_version": version,
            "deidentified": deid is not None,
            "profile": deid.profile.name if deid else None,
            "columns": [*form_csv.fixed_columns(form), *(c.header for c in form_csv.columns(form, deid))],
            "rows": tally.rows,
            "subjects": tally.subjects,
            "sha256": tally.sha256,
        }


def _audit(
    runtime: Runtime,
    actor: Actor,
    form: FormDef,
    deid: Deidentifier | None,
    version: int,
    tally: form_csv.Tally,
    finished: bool,
) -> None:
    summary = {
        "kind": "form_csv",
        "form": form.id,
        "deidentified": deid is not None,
        "profile": deid.profile.name if deid else None,
        "data_version": version,
        "rows": tally.rows,
        "subjects": tally.subjects,
        "complete": finished,
    }
    if finished:
        summary["sha256"] = tally.sha256
    with transaction(runtime.engine) as session:
        audit.append(
            session,
            actor,
            "export",
            source="export",
            form_id=form.id,
            resource=f"Questionnaire/{form.id}",
            reason=deid.profile.name if deid else None,
            new_value=json.dumps(summary, sort_keys=True),
        )
