"""The JSON view of a form definition (GET /api/v1/forms)."""

from decimal import Decimal
from typing import Any

from study_model.definitions import FormDef, ItemDef, StudyDef


def _number(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def describe_item(item: ItemDef) -> dict[str, Any]:
    view: dict[str, Any] = {"id": item.id, "label": item.label, "type": item.type, "required": item.required}
    if item.values is not None:
        view["values"] = list(item.values)
    if item.type == "text":
        view["max_length"] = item.text_limit
    if item.unit is not None:
        view["unit"] = item.unit
        view["accepted_units"] = {unit: str(factor) for unit, factor in item.accepted_units.items()}
    ranges = {
        "hard_min": item.hard_min,
        "hard_max": item.hard_max,
        "soft_min": item.soft_min,
        "soft_max": item.soft_max,
    }
    view.update({name: _number(value) for name, value in ranges.items() if value is not None})
    if item.enable_when is not None:
        view["enable_when"] = {"item": item.enable_when.item, "equals": item.enable_when.equals}
    if item.default is not None:
        view["default"] = item.default
    if item.derived is not None:
        view["derived"] = True
    if item.identifier_bearing:
        view["identifier_bearing"] = True
    view["fhir"] = {"kind": item.fhir.kind, "codes": [coding.fhir() for coding in item.fhir.codes]}
    if item.fhir.path:
        view["fhir"]["path"] = item.fhir.path
    if item.fhir.path_by_type:
        view["fhir"]["path_by_type"] = dict(item.fhir.path_by_type)
    if item.fhir.of:
        view["fhir"]["of"] = item.fhir.of
    if item.fhir.kind == "resource":
        if item.fhir.resource_type_by_value:  # the value chooses the resource (exposure.drug)
            view["fhir"]["resource_type_by_value"] = dict(item.fhir.resource_type_by_value)
        else:
            view["fhir"]["resource_type"] = item.fhir.resource_type
    return view


def describe_form(study: StudyDef, form: FormDef) -> dict[str, Any]:
    return {
        "id": form.id,
        "title": form.title,
        "kind": form.kind,
        "repeating": form.repeating,
        "max_entries": form.max_entries,
        "date_item": form.date_item,
        "visits": [study.visit(visit_id).model_dump(mode="json") for visit_id in form.visits],
        "items": [describe_item(item) for item in form.items],
    }
