"""The view of a form or entry: its values as the store holds them, what is missing, its lifecycle state
(who entered, verified, signed, locked it) and its unresolved queries."""

from datetime import datetime
from typing import Any

import orjson

from ecrf.crf.checks import is_enabled
from ecrf.crf.locate import Target, form_instance, locate, located_entries
from ecrf.crf.models import WITHDRAWN, FormInstance
from ecrf.crf.schedule import day_zero
from ecrf.crf.values import form_values
from ecrf.queries.models import unresolved_of_form
from ecrf.store.service import ClinicalStore
from study_model.definitions import FormDef, StudyDef


def _who(by: str | None, at: datetime | None) -> dict[str, Any] | None:
    return {"by": by, "at": at.isoformat()} if by and at else None


def describe(store: ClinicalStore, study: StudyDef, target: Target, instance: FormInstance | None) -> dict[str, Any]:
    zero = day_zero(store.session, study, target.subject.patient_id)
    items, alternatives = form_values(
        store.session, study, target.form, target.visit_key, target.subject.patient_id, instance, zero
    )
    missing = missing_items(target.form, items) if not (instance and instance.status == WITHDRAWN) else []
    open_queries, open_queries_by_item = unresolved_of_form(
        store.session, target.subject.id, target.form.id, target.visit_key
    )
    view: dict[str, Any] = {
        "subject_id": target.subject.id,
        "form_id": target.form.id,
        "visit_id": target.visit.id if target.visit is not None else None,
        "status": instance.status if instance else "not_started",
        "version": instance.version if instance else 0,
        "visit_date": instance.visit_date.isoformat() if instance else None,
        "deviation": instance.deviation if instance else None,
        "items": items,
        "alternatives": alternatives,
        "missing": missing,
        "created": _who(instance.created_by, instance.created_at) if instance else None,
        "updated": (
            {**_who(instance.updated_by, instance.updated_at), "role": instance.updated_role} if instance else None
        ),
        "verified": _who(instance.verified_by, instance.verified_at) if instance else None,
        "signature": (
            {
                "meaning": instance.signature_meaning,
                "name": instance.signed_by,
                "at": instance.signed_at.isoformat(),
                "hash": instance.signature_hash,
            }
            if instance and instance.signed_at
            else None
        ),
        "locked": _who(instance.locked_by, instance.locked_at) if instance else None,
        "open_queries": open_queries,  # not yet closed (open or answered)
        "open_queries_by_item": open_queries_by_item,
    }
    if instance and instance.eligibility_basis:
        view["eligibility_basis"] = orjson.loads(instance.eligibility_basis)
    if target.entry_id:
        view = {
            "id": target.entry_id,
            **view,
            "withdrawn_reason": instance.withdrawn_reason if instance else None,
            "source": instance.source if instance else "form",
        }  # fhir: landed from an EHR's push
    return view


def missing_items(form: FormDef, items: dict[str, Any]) -> list[str]:
    """Required items (enabled by the values shown) that the form view has no value for."""
    shown = {item_id: entry.get("value") for item_id, entry in items.items()}
    return [
        item.id
        for item in form.items
        if item.required and item.derived is None and item.id not in items and is_enabled(item, shown)
    ]


def read_form(store: ClinicalStore, study: StudyDef, subject_id: str, form_id: str, visit_id: str) -> dict[str, Any]:
    target = locate(store, study, subject_id, form_id, visit_id, writing=False)
    return describe(store, study, target, form_instance(store, target, for_update=False))


def entries(
    store: ClinicalStore, study: StudyDef, subject_id: str, form_id: str, visit_id: str | None = None
) -> list[dict[str, Any]]:
    """A subject's entries of a form (of one visit, for a repeating form's visit path), oldest first;
    withdrawn ones included, with their status and reason."""
    return [
        describe(store, study, target, instance)
        for target, instance in located_entries(store, study, subject_id, form_id, visit_id)
    ]
