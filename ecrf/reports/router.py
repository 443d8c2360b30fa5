"""/api/v1/reports: study-level aggregate counts (no subject ids, dates or identifiers)."""

from fastapi import APIRouter, Depends, Request

from ecrf.auth.actor import Actor
from ecrf.auth.dependencies import requires
from ecrf.db import snapshot
from ecrf.reports import service
from ecrf.safety import service as safety
from ecrf.reports.schemas import EnrolmentReport

router = APIRouter(tags=["reports"])


@router.get("/reports/enrolment", response_model=EnrolmentReport)
def enrolment(request: Request, actor: Actor = Depends(requires("report.aggregate"))) -> dict:
    """Counts per site (the caller's sites) and overall: subjects by ResearchSubject status, by eligibility
    status, randomised per arm, form instances per form, visit and status, and subjects with each visit
    done. Callers who may not read subjects (sponsors) get counts below ECRF_REPORT_MIN_CELL hidden."""
    runtime = request.app.state.runtime
    with snapshot(runtime.engine) as session:
        sae = (
            None
            if runtime.safety is None
            else (safety.STATUSES, safety.count_rows(session, runtime.safety, actor.sites, runtime.now()))
        )
        return service.enrolment(
            session,
            runtime.study,
            actor,
            runtime.settings.report_min_cell,
            runtime.randomisation.strata if runtime.randomisation is not None else (),
            sae,
        )
