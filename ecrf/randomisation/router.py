"""/api/v1: randomise a subject (the site), its allocation (who may read the subject), and the randomisation
manager's lists, allocation log and CSV exports. No route changes or deletes an allocation (no undo)."""

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from ecrf.auth.actor import Actor
from ecrf.auth.dependencies import requires
from ecrf.randomisation import service
from ecrf.responses import JSONBody
from ecrf.common.errors import NotFound
from ecrf.store.unit import read_only, writing

router = APIRouter(tags=["randomisation"])
MANAGER = Depends(requires("randomisation.lists"))
SLOT_COLUMNS = ["stratum", "sequence", "block", "block_size", "arm", "used", "subject_id", "number"]
LOG_COLUMNS = [
    "randomisation_number",
    "subject_id",
    "site",
    "stratum",
    "sequence",
    "arm",
    "randomisation_date",
    "allocated_at",
    "allocated_by",
    "allocated_role",
]


@router.post("/subjects/{subject_id}/randomise", status_code=201)
def randomise(
    subject_id: str, request: Request, actor: Actor = Depends(requires("randomisation.allocate"))
) -> JSONBody:
    """Allocate the next slot of the subject's stratum (empty body): 201 with `arm`, `randomisation_number`,
    `randomisation_date` and `stratum`; a repeat answers the same allocation with 200 and writes nothing.
    409: not eligible (the blocking criteria), no consent, stratum not derivable, or the stratum's list is
    exhausted (naming the stratum). The arm, number and date are written to the randomisation form,
    ResearchSubject.assignedArm and .identifier, with status on-study, in the same transaction."""
    view, created = service.randomise_with_retry(request.app.state.runtime, actor, subject_id, source="form")
    headers = {"Location": f"/api/v1/subjects/{subject_id}/randomisation"}
    return JSONBody(view, status_code=201 if created else 200, headers=headers)


@router.get("/subjects/{subject_id}/randomisation")
def read_allocation(
    subject_id: str, request: Request, actor: Actor = Depends(requires("randomisation.read"))
) -> dict[str, Any]:
    """The subject's own allocation (`randomised: false` before it); `method: entered` for an arm typed
    into the form before version 2. Never a list or a slot not yet used."""
    runtime = request.app.state.runtime
    with read_only(runtime, actor) as store:
        return service.read_allocation(runtime, store, subject_id)


class Note(BaseModel):
    text: str = Field(min_length=1, max_length=4000, description="what went wrong; the allocation stays")


@router.post("/subjects/{subject_id}/randomisation/notes", status_code=201)
def add_note(
    subject_id: str, body: Note, request: Request, actor: Actor = Depends(requires("randomisation.note"))
) -> dict[str, Any]:
    """A data manager records a mis-randomisation as a note in the audit trail (`randomisation.note`). There
    is no undo: the allocation, the arm and the subject's status stay as they are (intention to treat)."""
    runtime = request.app.state.runtime
    with writing(runtime, actor) as store:
        return service.add_note(runtime, store, subject_id, body.text)


@router.get("/randomisation/lists")
def lists(request: Request, actor: Actor = MANAGER) -> dict[str, Any]:
    """Randomisation manager: every stratum's list with its size, used and unused slots and SHA-256 checksum."""
    runtime = request.app.state.runtime
    service.scheme_of(runtime)
    with read_only(runtime, actor) as store:
        return {"study": runtime.study.id, "lists": service.list_summaries(store.session, runtime.study)}


@router.get("/randomisation/lists.csv", response_class=Response, responses={200: {"content": {"text/csv": {}}}})
def lists_csv(request: Request, actor: Actor = MANAGER) -> Response:
    """Randomisation manager: every slot of every list (used or not, and by whom) as CSV."""
    runtime = request.app.state.runtime
    service.scheme_of(runtime)
    with read_only(runtime, actor) as store:
        rows = service.list_slots(store.session, runtime.study)
    return Response(
        service.as_csv(rows, SLOT_COLUMNS),
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{runtime.study.id}-randomisation-lists.csv"'},
    )


@router.get("/randomisation/lists/{stratum}")
def list_of_stratum(stratum: str, request: Request, actor: Actor = MANAGER) -> dict[str, Any]:
    """Randomisation manager: one stratum's list, slot by slot, used and unused."""
    runtime = request.app.state.runtime
    service.scheme_of(runtime)
    with read_only(runtime, actor) as store:
        summary = next(
            (s for s in service.list_summaries(store.session, runtime.study) if s["stratum"] == stratum), None
        )
        if summary is None:
            raise NotFound(f"stratum {stratum} has no allocation list")
        return {**summary, "slots": service.list_slots(store.session, runtime.study, stratum)}


@router.get("/randomisation/allocations")
def allocations(request: Request, actor: Actor = MANAGER) -> dict[str, Any]:
    """Randomisation manager: the allocation log (who, when, stratum, slot, number, arm)."""
    runtime = request.app.state.runtime
    service.scheme_of(runtime)
    with read_only(runtime, actor) as store:
        return {"study": runtime.study.id, "allocations": service.allocation_log(store.session, runtime.study)}


@router.get("/randomisation/allocations.csv", response_class=Response, responses={200: {"content": {"text/csv": {}}}})
def allocations_csv(request: Request, actor: Actor = MANAGER) -> Response:
    """Randomisation manager: the allocation log as CSV."""
    runtime = request.app.state.runtime
    service.scheme_of(runtime)
    with read_only(runtime, actor) as store:
        rows = service.allocation_log(store.session, runtime.study)
    return Response(
        service.as_csv(rows, LOG_COLUMNS),
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{runtime.study.id}-allocations.csv"'},
    )
