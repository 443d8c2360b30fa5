"""Recording access to identified data: after a read succeeds, before its response leaves.

Doors say what a response shows with `shown`; one response hook (ecrf/audit/access/hook.py) records it.
A streamed export, whose rows are known only as they are read, says so chunk by chunk: each is recorded
before the chunk that shows it leaves.

One batched insert per response, in its own short transaction, with no lock shared by readers (unlike the
hash-chained audit trail, whose head row serialises writers). If the insert fails the response fails:
identifiers never leave unrecorded. Only ids, the route without its query string, and what kind of
identifier was shown are written: never a name, MRN or birth date.
"""

import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from fastapi import Request
from sqlalchemy.engine import Engine

from ecrf.audit.access.models import AccessEvent
from ecrf.auth.actor import Actor
from ecrf.db import transaction
from study_model.definitions import StudyDef

PATIENT, MRN, BIRTH_DATE, IDENTIFIED_EXPORT = "patient", "mrn", "birth_date", "identified_export"


def record(
    engine: Engine, actor: Actor, *, route: str, interaction: str, kind: str, patient_ids: Iterable[str | None]
) -> int:
    """Append one row per distinct patient id; returns how many."""
    ids = list(dict.fromkeys(pid for pid in patient_ids if pid))
    if not ids:
        return 0
    common = {
        "at": datetime.now(UTC),
        "request_id": uuid.uuid4().hex,
        "actor_sub": actor.sub,
        "actor_role": actor.role[:64],
        "actor_site": actor.site,
        "route": route[:200],
        "interaction": interaction,
        "kind": kind,
    }
    with transaction(engine) as session:
        session.execute(AccessEvent.__table__.insert(), [{**common, "patient_id": pid[:64]} for pid in ids])
    return len(ids)


def record_request(
    request: Request, actor: Actor, interaction: str, kind: str, patient_ids: Iterable[str | None]
) -> int:
    """`record` for the current request: its method and path (no query string) are the route."""
    return record(
        request.app.state.runtime.engine,
        actor,
        route=f"{request.method} {request.url.path}",
        interaction=interaction,
        kind=kind,
        patient_ids=patient_ids,
    )


NOTES = "access_shown"  # the request state's list of what the response shows (ecrf/audit/access/hook.py)


def shown(request: Request, actor: Actor, interaction: str, kind: str, patient_ids: Iterable[str | None]) -> None:
    """Say that this response shows identifiers of these patients; the response hook (RecordAccess, installed
    in ecrf/app.py) records them before the response leaves. Without the hook they are recorded now."""
    notes = request.scope.get("state", {}).get(NOTES)
    if notes is None:
        record_request(request, actor, interaction, kind, patient_ids)
        return
    notes.append((actor, interaction, kind, list(patient_ids)))


def record_notes(engine: Engine, route: str, notes: list[tuple[Actor, str, str, list[str | None]]]) -> int:
    """Record what a response said it shows (`shown`); returns how many rows."""
    return sum(
        record(engine, actor, route=route, interaction=interaction, kind=kind, patient_ids=ids)
        for actor, interaction, kind, ids in notes
    )


def patients_shown(body: Any) -> list[str]:
    """Ids of the Patient resources in a FHIR response body: the resource itself, or any Bundle's entries
    (a batch's GET entries hold searchsets of their own), at any depth."""
    found: list[str] = []
    stack = [body]
    while stack:
        node = stack.pop()
        if not isinstance(node, dict):
            continue
        kind = node.get("resourceType")
        if kind == "Patient" and isinstance(node.get("id"), str):
            found.append(node["id"])
        elif kind == "Bundle":
            stack.extend(
                entry.get("resource") for entry in reversed(node.get("entry") or []) if isinstance(entry, dict)
            )
    return found


def identifier_items(study: StudyDef) -> frozenset[str]:
    """Items the study marks identifier-bearing (the birth date)."""
    return frozenset(item.id for form in study.forms for item in form.items if item.identifier_bearing)


def shows_identifiers(study: StudyDef, body: Any) -> bool:
    """Whether a JSON view holds a value of an identifier-bearing item anywhere: a form's `items` and
    `alternatives` (keyed by item id), eligibility evidence (`item` + `value`), audit entries (`item_id` +
    old or new value)."""
    wanted = identifier_items(study)
    stack = [body]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        named = node.get("item", node.get("item_id"))
        if named in wanted and any(node.get(key) is not None for key in ("value", "old_value", "new_value")):
            return True
        for key, value in node.items():
            if key in wanted and (
                isinstance(value, dict) and value.get("value") is not None or isinstance(value, list) and value
            ):
                return True
            if isinstance(value, (dict, list)):
                stack.append(value)
    return False
