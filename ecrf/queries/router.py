"""/api/v1 queries: raise on a subject, list, read, answer, close, reopen."""

from typing import Any, Literal

from fastapi import APIRouter, Depends, Request

from ecrf.auth.actor import Actor
from ecrf.auth.dependencies import requires
from ecrf.db import transaction
from ecrf.common.pagination import Limit, Offset, page
from ecrf.queries import service
from ecrf.queries.schemas import Message, Note, RaiseQuery
from ecrf.responses import JSONBody
from ecrf.store.unit import read_only, writing
from ecrf.subjects.service import resolve

router = APIRouter(tags=["queries"])
StatusFilter = Literal["open", "answered", "closed", "unresolved"]


@router.post("/subjects/{subject_id}/queries", status_code=201)
def raise_query(
    subject_id: str, body: RaiseQuery, request: Request, actor: Actor = Depends(requires("query.raise"))
) -> JSONBody:
    """Raise a query on a subject, optionally on a form, visit and item (checked against the study: 422
    naming what is unknown). The query starts `open`; a locked form cannot be queried (409)."""
    runtime = request.app.state.runtime
    with writing(runtime, actor) as store:
        query = service.raise_query(
            store,
            runtime.study,
            subject_id,
            form_id=body.form_id,
            visit_id=body.visit_id,
            item_id=body.item_id,
            text=body.text,
        )
        view = service.describe(store.session, [query])[0]
    return JSONBody(view, status_code=201, headers={"Location": f"/api/v1/queries/{query.id}"})


def _listing(request: Request, actor: Actor, offset: int, limit: int | None, **filters: Any) -> dict[str, Any]:
    runtime = request.app.state.runtime
    offset, limit = page(request, offset, limit)
    filters = {name: value or None for name, value in filters.items()}  # `?form=` filters nothing, as elsewhere
    service.check_filters(runtime.study, filters.get("form"), filters.get("visit"), filters.get("item"))
    with read_only(runtime, actor) as store:
        if filters.get("subject_id") is not None:
            filters["subject_id"] = resolve(store, runtime.study, filters["subject_id"]).id
        total, queries = service.list_queries(store.session, actor, offset=offset, limit=limit, **filters)
        items = service.describe(store.session, queries)
    return {"items": items, "total": total, "offset": offset, "limit": limit}


@router.get("/subjects/{subject_id}/queries")
def subject_queries(
    subject_id: str,
    request: Request,
    status: StatusFilter | None = None,
    form: str | None = None,
    visit: str | None = None,
    item: str | None = None,
    offset: Offset = 0,
    limit: Limit = None,
    actor: Actor = Depends(requires("query.read")),
) -> dict[str, Any]:
    """The subject's queries with their threads, oldest first; `status=unresolved` is open or answered."""
    return _listing(
        request, actor, offset, limit, subject_id=subject_id, status=status, form=form, visit=visit, item=item
    )


@router.get("/queries")
def list_queries(
    request: Request,
    site: str | None = None,
    status: StatusFilter | None = None,
    form: str | None = None,
    visit: str | None = None,
    item: str | None = None,
    offset: Offset = 0,
    limit: Limit = None,
    actor: Actor = Depends(requires("query.read")),
) -> dict[str, Any]:
    """Queries of the caller's sites with their threads, oldest first, filtered by site, status, form,
    visit and item; `status=unresolved` is open or answered."""
    return _listing(request, actor, offset, limit, site=site, status=status, form=form, visit=visit, item=item)


@router.get("/queries/{query_id}")
def read_query(query_id: str, request: Request, actor: Actor = Depends(requires("query.read"))) -> dict[str, Any]:
    """One query and its thread; another site's query is 404."""
    with read_only(request.app.state.runtime, actor) as store:
        return service.describe(store.session, [service.find(store.session, actor, query_id)])[0]


def _step(request: Request, actor: Actor, query_id: str, name: str, text: str | None) -> dict[str, Any]:
    with transaction(request.app.state.runtime.engine) as session:
        query = service.step(session, actor, query_id, name, text)
        return service.describe(session, [query])[0]


@router.post("/queries/{query_id}/answer")
def answer(
    query_id: str, body: Message, request: Request, actor: Actor = Depends(requires("query.answer"))
) -> dict[str, Any]:
    """The site answers (text required): open or answered -> answered; a closed query is 409."""
    return _step(request, actor, query_id, "answer", body.text)


@router.post("/queries/{query_id}/close")
def close(
    query_id: str, request: Request, body: Note | None = None, actor: Actor = Depends(requires("query.close"))
) -> dict[str, Any]:
    """A monitor or data manager closes the query, with an optional note: open or answered -> closed."""
    return _step(request, actor, query_id, "close", body and body.text)


@router.post("/queries/{query_id}/reopen")
def reopen(
    query_id: str, body: Message, request: Request, actor: Actor = Depends(requires("query.close"))
) -> dict[str, Any]:
    """A monitor or data manager reopens a closed query, saying why: closed -> open."""
    return _step(request, actor, query_id, "reopen", body.text)
