"""Current resources as of an instant, read in keyset-paged batches: memory is one batch, whatever the size."""

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.engine import Engine
from sqlalchemy.sql import Select

from ecrf.db import reading
from ecrf.store.models import ResourceHead, ResourceVersion, SearchToken


@dataclass(frozen=True)
class Row:
    resource_id: str
    patient_id: str | None
    content: str  # the stored JSON text


@dataclass(frozen=True)
class Scope:
    """Which resources of one type: as of `until` (a snapshot), changed after `since`, at `sites`,
    about the subjects of `study_id` (a Group export)."""

    resource_type: str
    until: datetime
    since: datetime | None = None
    sites: tuple[str, ...] | None = None
    study_id: str | None = None
    filters: tuple[Any, ...] = ()  # _typeFilter: SQL conditions on resource_head
    patients: frozenset[str] | None = None  # the `patient` parameter: only these patients' resources


def study_patients(study_id: str) -> Select:
    subjects = select(SearchToken.resource_id).where(
        SearchToken.resource_type == "ResearchSubject",
        SearchToken.param == "study",
        SearchToken.value == f"ResearchStudy/{study_id}",
    )
    return select(ResourceHead.patient_id).where(
        ResourceHead.resource_type == "ResearchSubject", ResourceHead.resource_id.in_(subjects)
    )


def _heads(scope: Scope, after: str | None, limit: int) -> Select:
    head = ResourceHead.__table__.c
    statement = (
        select(head.resource_id, head.patient_id, head.last_updated, ResourceVersion.__table__.c.content)
        .join(ResourceVersion.__table__, ResourceVersion.__table__.c.pk == head.version_pk)
        .where(
            head.resource_type == scope.resource_type,
            # deleted after the snapshot: its earlier version is still part of it
            or_(head.deleted == False, head.last_updated > scope.until),  # noqa: E712
        )
        .order_by(head.resource_id)
        .limit(limit)
    )
    if after is not None:
        statement = statement.where(head.resource_id > after)
    if scope.since is not None:
        statement = statement.where(head.last_updated > scope.since)
    if scope.sites is not None:
        statement = statement.where(head.site.in_(scope.sites))
    if scope.filters:
        statement = statement.where(*scope.filters)
    return statement


def _as_of(connection, scope: Scope, resource_ids: list[str]) -> dict[str, tuple[str, datetime] | None]:
    """For resources changed after the snapshot: their latest version at the snapshot (None: none, or deleted)."""
    version = ResourceVersion.__table__.c
    rows = connection.execute(
        select(version.resource_id, version.content, version.last_updated, version.deleted)
        .where(
            version.resource_type == scope.resource_type,
            version.resource_id.in_(resource_ids),
            version.last_updated <= scope.until,
        )
        .order_by(version.resource_id, version.version_id)
    ).all()
    found: dict[str, tuple[str, datetime] | None] = dict.fromkeys(resource_ids)
    for resource_id, content, last_updated, deleted in rows:
        found[resource_id] = None if deleted else (content, last_updated)
    return found


def batches(
    engine: Engine, scope: Scope, after: str | None = None, size: int = 1000
) -> Iterator[tuple[str, list[Row]]]:
    """(last resource id of the batch, rows): each batch its own short read; resume with `after`. A study's
    export keeps its subjects' resources, read once as a set: as a subquery of every page, planners (PostgreSQL)
    misjudged it and read every remaining subject resource for each page."""
    until = scope.until
    members: set[str] | None = None
    while True:
        with reading(engine) as session:
            connection = session.connection()
            if scope.study_id is not None and members is None:
                members = set(connection.execute(study_patients(scope.study_id)).scalars())
            heads = connection.execute(_heads(scope, after, size)).all()
            if not heads:
                return
            late = [resource_id for resource_id, _, last_updated, _ in heads if _aware(last_updated) > until]
            earlier = _as_of(connection, scope, late) if late else {}
        rows = []
        for resource_id, patient_id, last_updated, content in heads:
            if members is not None and patient_id not in members:
                continue
            if scope.patients is not None and patient_id not in scope.patients:
                continue
            if resource_id in earlier:
                version = earlier[resource_id]
                if version is None or (scope.since is not None and _aware(version[1]) <= scope.since):
                    continue
                content = version[0]
            rows.append(Row(resource_id, patient_id, content))
        after = heads[-1][0]
        yield after, rows
        if len(heads) < size:
            return


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def resource_types(engine: Engine) -> list[str]:
    with reading(engine) as session:
        return sorted(session.connection().execute(select(ResourceHead.__table__.c.resource_type).distinct()).scalars())


def deletions(engine: Engine, scope: Scope) -> list[tuple[str, str | None]]:
    """(resource id, patient id) of the resources of `scope` deleted after `since` and by `until`: what a
    `_since` export lists in the manifest's `deleted` array."""
    head = ResourceHead.__table__.c
    statement = (
        select(head.resource_id, head.patient_id)
        .where(
            head.resource_type == scope.resource_type,
            head.deleted == True,  # noqa: E712
            head.last_updated > scope.since,
            head.last_updated <= scope.until,
        )
        .order_by(head.resource_id)
    )
    if scope.sites is not None:
        statement = statement.where(head.site.in_(scope.sites))
    with reading(engine) as session:
        connection = session.connection()
        rows = connection.execute(statement).all()
        members = set(connection.execute(study_patients(scope.study_id)).scalars()) if scope.study_id else None
    return [
        (resource_id, patient_id)
        for resource_id, patient_id in rows
        if (members is None or patient_id in members or scope.resource_type == "Patient" and resource_id in members)
        and (scope.patients is None or patient_id in scope.patients)
    ]
