"""Queries: raised on a subject (form, visit and item checked against the study), answered by the site,
closed and reopened by a monitor or data manager.

Each step appends a message to the query's thread and an entry to the audit trail in one transaction.
Site scoping is part of every read: a query carries its subject's site, and another site's query does
not exist for a site-scoped caller.
"""

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, select
from sqlmodel.sql.expression import SelectOfScalar

from ecrf.audit import service as audit
from ecrf.auth.actor import Actor
from ecrf.common.errors import Conflict, EditCheckFailed, NotFound
from ecrf.crf.models import FormInstance
from ecrf.queries.models import UNRESOLVED, DataQuery, QueryMessage
from ecrf.store.service import ClinicalStore
from ecrf.subjects.service import resolve
from study_model.definitions import StudyDef

RESOURCE = "Query"
UNRESOLVED_FILTER = "unresolved"


@dataclass(frozen=True)
class Step:
    sources: tuple[str, ...]
    target: str
    text_required: bool
    refusal: str  # why the step does not apply to a query in another status


STEPS: dict[str, Step] = {
    "answer": Step(
        ("open", "answered"),
        "answered",
        True,
        "query {id} is {status}; a monitor or data manager must reopen it before it can be answered",
    ),
    "close": Step(("open", "answered"), "closed", False, "query {id} is already {status}"),
    "reopen": Step(("closed",), "open", True, "query {id} is {status}; only a closed query can be reopened"),
}


def _problem(item: str, rule: str, message: str) -> dict[str, str]:
    return {"item": item, "rule": rule, "message": message}


def _text_problems(text: str | None, required: bool) -> list[dict[str, str]]:
    if required and not (text or "").strip():
        return [_problem("text", "required", "the text must not be blank")]
    return []


def _clean(text: str | None) -> str | None:
    return (text or "").strip() or None


@dataclass(frozen=True)
class Where:
    form_id: str | None
    visit_id: str | None
    item_id: str | None


def narrow(
    study: StudyDef, form_id: str | None, visit_id: str | None, item_id: str | None, problems: list[dict[str, str]]
) -> Where:
    """Check form, visit and item against the study; infer the form of an item and the visit of a
    single-visit form. Appends what is wrong to `problems`."""
    form = visit = None
    if form_id is not None:
        try:
            form = study.form(form_id)
        except KeyError:
            problems.append(_problem("form_id", "unknown_form", f"{form_id} is not a form of study {study.id}"))
    if visit_id is not None:
        try:
            visit = study.visit(visit_id)
        except KeyError:
            problems.append(_problem("visit_id", "unknown_visit", f"{visit_id} is not a visit of study {study.id}"))
    if item_id is not None:
        if form is not None and not any(item.id == item_id for item in form.items):
            problems.append(_problem("item_id", "unknown_item", f"form {form.id} has no item {item_id}"))
        elif form is None and form_id is None:
            try:
                form, _ = study.item(item_id)
            except KeyError as error:  # unknown, or an id several forms have: name the form
                problems.append(_problem("item_id", "unknown_item", str(error.args[0])))
    if form is not None and visit is not None and visit.id not in form.visits:
        problems.append(
            _problem(
                "visit_id",
                "visit",
                f"form {form.id} is not collected at visit {visit.id} (visits: {', '.join(form.visits)})",
            )
        )
    if form is not None and visit_id is None:
        if len(form.visits) == 1:
            visit = study.visit(form.visits[0])
        elif item_id is not None:
            problems.append(
                _problem(
                    "visit_id",
                    "required",
                    f"a query on an item needs its visit: form {form.id} is collected at {', '.join(form.visits)}",
                )
            )
    return Where(form.id if form else None, visit.id if visit else None, item_id)


def _check_not_locked(session: Session, subject_id: str, where: Where) -> None:
    if where.form_id is None or where.visit_id is None:
        return
    status = session.exec(
        select(FormInstance.status).where(
            FormInstance.subject_id == subject_id,
            FormInstance.form_id == where.form_id,
            FormInstance.visit_id == where.visit_id,
            FormInstance.entry_id == "",
        )
    ).one_or_none()
    if status == "locked":
        raise Conflict(
            f"form {where.form_id} at {where.visit_id} is locked; a data manager must unlock it "
            f"before it can be queried"
        )


def _append(
    session: Session, actor: Actor, query: DataQuery, action: str, old_status: str | None, text: str | None
) -> None:
    now = datetime.now(UTC)
    query.messages += 1
    query.updated_at = now
    session.add(query)
    session.add(
        QueryMessage(
            query_id=query.id,
            seq=query.messages,
            action=action,
            status=query.status,
            at=now,
            author_sub=actor.sub,
            author_role=actor.role,
            text=text,
        )
    )
    audit.append(
        session,
        actor,
        f"query.{action}",
        source="query",
        patient_id=query.patient_id,
        form_id=query.form_id,
        visit_id=query.visit_id,
        item_id=query.item_id,
        old_value=old_status,
        new_value=query.status,
        reason=text,
        resource=f"{RESOURCE}/{query.id}",
        resource_version=query.messages,
        at=now,
    )


def raise_query(
    store: ClinicalStore,
    study: StudyDef,
    subject_id: str,
    *,
    form_id: str | None,
    visit_id: str | None,
    item_id: str | None,
    text: str,
) -> DataQuery:
    """A new open query on a subject of the caller's sites (another site's subject: 404)."""
    subject = resolve(store, study, subject_id)
    problems: list[dict[str, str]] = []
    where = narrow(study, form_id, visit_id, item_id, problems)
    problems += _text_problems(text, required=True)
    if problems:
        raise EditCheckFailed(problems, "the query is not valid; nothing was stored")
    _check_not_locked(store.session, subject.id, where)
    now = datetime.now(UTC)
    query = DataQuery(
        id=uuid.uuid4().hex,
        subject_id=subject.id,
        patient_id=subject.patient_id,
        site=subject.site,
        form_id=where.form_id,
        visit_id=where.visit_id,
        item_id=where.item_id,
        status="open",
        raised_at=now,
        raised_by=store.actor.sub,
        raised_role=store.actor.role,
        updated_at=now,
        messages=0,
    )
    store.session.add(query)
    store.session.flush()  # the thread's rows reference it
    _append(store.session, store.actor, query, "raise", None, _clean(text))
    return query


def visible(actor: Actor) -> SelectOfScalar[DataQuery]:
    """Queries the actor may see: those of its sites, every one for a study-wide actor."""
    query = select(DataQuery)
    if actor.sites is not None:
        query = query.where(DataQuery.site.in_(sorted(actor.sites)))
    return query


def find(session: Session, actor: Actor, query_id: str, *, for_update: bool = False) -> DataQuery:
    statement = visible(actor).where(DataQuery.id == query_id)
    query = session.exec(statement.with_for_update() if for_update else statement).one_or_none()
    if query is None:
        raise NotFound(f"query {query_id} is not known")
    return query


def step(session: Session, actor: Actor, query_id: str, name: str, text: str | None) -> DataQuery:
    """answer / close / reopen one query; a step that does not apply to its status is 409."""
    rule = STEPS[name]
    query = find(session, actor, query_id, for_update=True)
    if query.status not in rule.sources:
        raise Conflict(rule.refusal.format(id=query.id, status=query.status))
    problems = _text_problems(text, rule.text_required)
    if problems:
        raise EditCheckFailed(problems, f"{name} refused; nothing was stored")
    old_status, query.status = query.status, rule.target
    _append(session, actor, query, name, old_status, _clean(text))
    return query


def check_filters(study: StudyDef, form: str | None, visit: str | None, item: str | None) -> None:
    problems: list[dict[str, str]] = []
    if form is not None and form not in {f.id for f in study.forms}:
        problems.append(_problem("form", "unknown_form", f"{form} is not a form of study {study.id}"))
    if visit is not None and visit not in {v.id for v in study.visits}:
        problems.append(_problem("visit", "unknown_visit", f"{visit} is not a visit of study {study.id}"))
    if item is not None and not any(i.id == item for f in study.forms for i in f.items):
        problems.append(_problem("item", "unknown_item", f"{item} is not an item of study {study.id}"))
    if problems:
        raise EditCheckFailed(problems, "unknown filter value")


def list_queries(
    session: Session,
    actor: Actor,
    *,
    subject_id: str | None = None,
    site: str | None = None,
    status: str | None = None,
    form: str | None = None,
    visit: str | None = None,
    item: str | None = None,
    offset: int,
    limit: int,
) -> tuple[int, list[DataQuery]]:
    """Queries of the caller's sites, oldest first, filtered in SQL."""
    query = visible(actor)
    for column, value in (
        (DataQuery.subject_id, subject_id),
        (DataQuery.site, site),
        (DataQuery.form_id, form),
        (DataQuery.visit_id, visit),
        (DataQuery.item_id, item),
    ):
        if value is not None:
            query = query.where(column == value)
    if status == UNRESOLVED_FILTER:
        query = query.where(DataQuery.status.in_(UNRESOLVED))
    elif status is not None:
        query = query.where(DataQuery.status == status)
    total = session.exec(select(func.count()).select_from(query.subquery())).one()
    rows = session.exec(query.order_by(DataQuery.raised_at, DataQuery.id).offset(offset).limit(limit)).all()
    return total, list(rows)


def _message(message: QueryMessage) -> dict[str, Any]:
    return {
        "seq": message.seq,
        "action": message.action,
        "status": message.status,
        "who": {"sub": message.author_sub, "role": message.author_role},
        "at": message.at.astimezone(UTC).isoformat(),
        "text": message.text,
    }


def describe(session: Session, queries: list[DataQuery]) -> list[dict[str, Any]]:
    """The JSON view of queries, each with its whole thread (one read for all threads)."""
    threads: dict[str, list[dict[str, Any]]] = {query.id: [] for query in queries}
    if threads:
        messages = session.exec(
            select(QueryMessage)
            .where(QueryMessage.query_id.in_(list(threads)))
            .order_by(QueryMessage.query_id, QueryMessage.seq)
        ).all()
        for message in messages:
            threads[message.query_id].append(_message(message))
    return [
        {
            "id": query.id,
            "subject_id": query.subject_id,
            "site": query.site,
            "form_id": query.form_id,
            "visit_id": query.visit_id,
            "item_id": query.item_id,
            "status": query.status,
            "raised": {
                "sub": query.raised_by,
                "role": query.raised_role,
                "at": query.raised_at.astimezone(UTC).isoformat(),
            },
            "updated_at": query.updated_at.astimezone(UTC).isoformat(),
            "messages": threads[query.id],
        }
        for query in queries
    ]
