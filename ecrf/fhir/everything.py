"""GET /fhir/Patient/{id}/$everything: the Patient and its R4 Patient compartment, as this client may see it.

The compartment is fhir_mappings/data/r4_patient_compartment.json (generated from the R4
compartmentdefinition-patient.json by scripts/r4_definitions.py): a kept type is in it when the element that
names its Patient (ecrf.store.indexing.PATIENT_REFERENCE, the store's `patient_id`) is one of the
compartment's elements for that type. Read like every read: the store's site and ehr scoping (another site's
or another client's data do not exist), the role and the token's SMART scopes per type (types it may not read
are left out, and said so in an OperationOutcome entry). `_since` (instant: versions last updated then or
later), `_type` (comma-separated), `_count` and `_offset` page the searchset, with self/next/previous links.
"""

import json
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request
from sqlalchemy import and_, case, func, or_
from sqlmodel import select

import fhir_mappings
from ecrf.audit.access import service as access
from ecrf.auth.actor import Actor
from ecrf.auth.dependencies import public, requires
from ecrf.common.outcome import FhirError, issue
from ecrf.fhir.authorise import refusal, require
from ecrf.fhir.media import respond
from ecrf.fhir.validation import WRITABLE_TYPES, is_resource_type
from ecrf.responses import fhir_base
from ecrf.store.indexing import PATIENT_REFERENCE
from ecrf.store.models import ResourceHead
from ecrf.store.unit import read_only

COMPARTMENT = Path(fhir_mappings.__file__).resolve().parent / "data" / "r4_patient_compartment.json"
OPERATION = "http://hl7.org/fhir/OperationDefinition/Patient-everything"
router = APIRouter(tags=["fhir"])


@cache
def compartment_types() -> tuple[str, ...]:
    """Kept types whose Patient element is one of the R4 Patient compartment's elements for that type."""
    members = json.loads(COMPARTMENT.read_text())["resources"]
    return tuple(t for t in WRITABLE_TYPES if t != "Patient" and PATIENT_REFERENCE.get(t) in members.get(t, ()))


def _since(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        moment = None
    if moment is None or "T" not in value or moment.tzinfo is None:
        raise FhirError.one(
            400,
            f"_since must be an instant with a time zone (2026-01-02T03:04:05Z), got {value!r}",
            code="value",
            location="_since",
        )
    return moment.astimezone(UTC)


def _types(value: str | None, actor: Actor) -> tuple[list[str], list[str]]:
    """(types to return, types left out because this token may not read them)."""
    wanted = ["Patient", *compartment_types()]
    if value is not None:
        asked = [name.strip() for name in value.split(",") if name.strip()]
        unknown = [name for name in asked if not is_resource_type(name)]
        if unknown:
            raise FhirError.one(
                400, f"_type names no R4 resource type: {', '.join(unknown)}", code="value", location="_type"
            )
        wanted = [name for name in wanted if name in asked]
    allowed = [t for t in wanted if refusal(actor, "fhir.read", t, "rs", t) is None]
    return allowed, [t for t in wanted if t not in allowed]


def _count(value: str | None, name: str, default: int, most: int) -> int:
    if value is None:
        return default
    if not value.isascii() or not value.isdigit() or len(value) > 9:
        raise FhirError.one(400, f"{name} must be a whole number, got {value!r}", code="value", location=name)
    return min(int(value), most)


@router.get("/Patient/{patient_id}/$everything", summary="Patient $everything (R4 Patient compartment)")
def everything(request: Request, patient_id: str, actor: Actor = Depends(requires("fhir.read"))):
    runtime = request.app.state.runtime
    settings = runtime.settings
    base = fhir_base(request)
    params = request.query_params
    require(actor, "fhir.read", "Patient", "read")
    since = _since(params.get("_since"))
    types, left_out = _types(params.get("_type"), actor)
    count = _count(params.get("_count"), "_count", settings.page_size_default, settings.page_size_max)
    offset = _count(params.get("_offset"), "_offset", 0, 10**9)
    with read_only(runtime, actor) as store:
        store.read("Patient", patient_id)  # 404 when this client may not see it, 410 when deleted
        members = [ResourceHead.resource_type == "Patient", ResourceHead.resource_id == patient_id]
        condition = or_(
            and_(*members),
            and_(
                ResourceHead.patient_id == patient_id,
                ResourceHead.resource_type.in_([t for t in types if t != "Patient"]),
            ),
        )
        if "Patient" not in types:
            condition = and_(ResourceHead.patient_id == patient_id, ResourceHead.resource_type.in_(types))
        statement = store.visible(select(ResourceHead).where(condition, ResourceHead.deleted == False))  # noqa: E712
        if since is not None:
            statement = statement.where(ResourceHead.last_updated >= since)
        total = store.session.exec(select(func.count()).select_from(statement.subquery())).one()
        heads = (
            []
            if count == 0
            else store.session.exec(
                statement.order_by(
                    case((ResourceHead.resource_type == "Patient", 0), else_=1),
                    ResourceHead.resource_type,
                    ResourceHead.resource_id,
                )
                .offset(offset)
                .limit(count)
            ).all()
        )
        found = store.current(heads)
    kept = [(name, value) for name, value in params.multi_items() if name in ("_since", "_type")]

    def link(at: int) -> str:
        return f"{base}/Patient/{patient_id}/$everything?{urlencode([*kept, ('_count', count), ('_offset', at)])}"

    links = [{"relation": "self", "url": link(offset)}]
    if count and offset + count < total:
        links.append({"relation": "next", "url": link(offset + count)})
    if count and offset > 0:
        links.append({"relation": "previous", "url": link(max(0, offset - count))})
    entries: list[dict[str, Any]] = [
        {"fullUrl": f"{base}/{stored.reference}", "resource": stored.content, "search": {"mode": "match"}}
        for stored in found
    ]
    if left_out:
        entries.append(
            {
                "resource": {
                    "resourceType": "OperationOutcome",
                    "issue": [
                        issue(
                            f"left out: this token's scopes do not grant reading {', '.join(left_out)}",
                            code="suppressed",
                            severity="information",
                        )
                    ],
                },
                "search": {"mode": "outcome"},
            }
        )
    body = {"resourceType": "Bundle", "type": "searchset", "total": total, "link": links, "entry": entries}
    access.shown(request, actor, "everything", access.PATIENT, access.patients_shown(body))
    return respond(body)


@router.get(
    "/OperationDefinition/Patient-everything",
    dependencies=[Depends(public)],
    summary="The $everything operation as this server implements it",
)
def operation_definition(request: Request):
    base = fhir_base(request)
    parameter = [
        {
            "name": "_since",
            "use": "in",
            "min": 0,
            "max": "1",
            "type": "instant",
            "documentation": "Only resources last updated at or after this instant.",
        },
        {
            "name": "_type",
            "use": "in",
            "min": 0,
            "max": "*",
            "type": "string",
            "documentation": "Comma-separated resource types to return (of the compartment's kept types).",
        },
        {
            "name": "_count",
            "use": "in",
            "min": 0,
            "max": "1",
            "type": "integer",
            "documentation": "Page size (next/previous links; _offset pages on).",
        },
        {
            "name": "return",
            "use": "out",
            "min": 1,
            "max": "1",
            "type": "Bundle",
            "documentation": "A searchset Bundle: the Patient, then its compartment's resources.",
        },
    ]
    return respond(
        {
            "resourceType": "OperationDefinition",
            "id": "Patient-everything",
            "url": f"{base}/OperationDefinition/Patient-everything",
            "name": "PatientEverything",
            "status": "active",
            "kind": "operation",
            "code": "everything",
            "base": OPERATION,
            "resource": ["Patient"],
            "system": False,
            "type": False,
            "instance": True,
            "affectsState": False,
            "parameter": parameter,
            "description": "The Patient and every resource of its R4 Patient compartment of the types the study keeps ("
            + ", ".join(["Patient", *compartment_types()])
            + "), scoped to the client's sites and "
            "(an ehr client) its own pushes.",
        }
    )
