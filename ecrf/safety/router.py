"""/api/v1 serious adverse events: the open-SAE list per site, and the investigator's report to the sponsor."""

from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from ecrf.auth.actor import Actor
from ecrf.auth.dependencies import requires
from ecrf.responses import JSONBody
from ecrf.safety import service
from ecrf.store.unit import read_only, writing
from ecrf.subjects.service import resolve

router = APIRouter(tags=["safety"])


class SaeReportBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reference: str = Field(
        min_length=1,
        max_length=200,
        description="the report's reference at the sponsor (e.g. the CIOMS form or safety database id)",
    )
    reported_at: datetime | None = Field(
        default=None, description="when it was sent (default: now); not in the future, not before awareness"
    )


def _clock(request: Request):
    runtime = request.app.state.runtime
    if runtime.safety is None:
        raise HTTPException(404, "this study has no SAE reporting clock (forms/safety.yaml)")
    return runtime, runtime.safety


@router.get("/safety/sae")
def list_sae(
    request: Request,
    site: str | None = None,
    status: list[Literal["due", "overdue", "reported", "not_serious", "withdrawn"]] | None = Query(None),
    actor: Actor = Depends(requires("safety.read")),
) -> dict[str, Any]:
    """Serious adverse events of the caller's sites with their clock: `due` until reported, `overdue` past the
    reporting window from awareness (the site's first save as serious), `reported` (on time or not)."""
    runtime, clock = _clock(request)
    with read_only(runtime, actor) as store:
        found = service.listing(store, clock, site=site, statuses=set(status) if status else None, now=runtime.now())
    return {"items": found.items, "total": found.total, "due_within_hours": clock.due_within.total_seconds() / 3600}


@router.post("/subjects/{subject_id}/forms/{form_id}/entries/{entry_id}/sae-report")
def report_sae(
    subject_id: str,
    form_id: str,
    entry_id: str,
    body: SaeReportBody,
    request: Request,
    actor: Actor = Depends(requires("sae.report")),
) -> JSONBody:
    """The investigator records that the SAE was reported to the sponsor (once; audited)."""
    runtime, clock = _clock(request)
    with writing(runtime, actor) as store:
        subject = resolve(store, runtime.study, subject_id)  # another site's subject is a 404
        view = service.report(
            store,
            clock,
            subject.id,
            form_id,
            entry_id,
            reported_at=body.reported_at,
            reference=body.reference,
            now=runtime.now(),
        )
    return JSONBody(view)
