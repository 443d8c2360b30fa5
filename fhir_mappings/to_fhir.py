"""Form entry -> FHIR R4 resources (plain dicts), following each item's `fhir` target."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import copy
import re

from fhir_mappings import elements
from fhir_mappings import fhir_constants as fhir
from study_model.definitions import FormDef, ItemDef, StudyDef
from study_model.derivation import derive_item
from fhir_mappings.elements import quantity

OWNER_KINDS = ("observation", "procedure", "condition", "resource")


@dataclass(frozen=True)
class FormResources:
    """What one form entry writes. `resources` are (slot, resource) pairs; the slot (the id of the
    item that owns the resource) is unique within the entry and stable across re-saves."""

    resources: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    patient_patch: dict[str, Any] = field(default_factory=dict)
    research_subject_patch: dict[str, Any] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)

    def of_type(self, resource_type: str) -> list[tuple[str, dict[str, Any]]]:
        return [(slot, r) for slot, r in self.resources if r["resourceType"] == resource_type]

    @property
    def observations(self) -> list[tuple[str, dict[str, Any]]]:
        return self.of_type("Observation")

    @property
    def procedures(self) -> list[tuple[str, dict[str, Any]]]:
        return self.of_type("Procedure")

    @property
    def conditions(self) -> list[tuple[str, dict[str, Any]]]:
        return self.of_type("Condition")


def form_to_resources(
    study: StudyDef, form_id: str, items: dict[str, Any], *, patient_ref: str, visit_date: date | datetime
) -> FormResources:
    form = study.form(form_id)
    values = _values_with_defaults(form, items)
    subject = {"reference": patient_ref}
    effective = _fhir_date(visit_date)
    result = FormResources()
    owners: dict[str, dict[str, Any]] = {}

    for item in form.items:
        value = values.get(item.id)
        kind = item.fhir.kind
        if value is None or kind == "none":
            continue
        if kind == "observation":
            owners[item.id] = _observation(study, form, item, value, subject, effective)
        elif kind == "procedure":
            owners[item.id] = _procedure(item, value, subject)
        elif kind == "condition":
            owners[item.id] = _condition(study, item, value, subject, effective)
        elif kind == "resource":
            owners[item.id] = _resource(study, item, value, subject)
        elif kind == "patient":
            result.patient_patch[item.fhir.path] = _element_text(item, value)
        elif kind == "research_subject":
            _set_research_subject(result.research_subject_patch, item, value)

    for item in form.items:
        value = values.get(item.id)
        if item.fhir.of is None or value is None:
            continue
        owner = owners.get(item.fhir.of)
        if owner is None:
            result.dropped.append(item.id)
            continue
        _attach(study, item, value, owner)

    result.resources.extend((slot, resource) for slot, resource in owners.items())
    return result


def _values_with_defaults(form: FormDef, items: dict[str, Any]) -> dict[str, Any]:
    values = {item.id: items.get(item.id) for item in form.items}
    for item in form.items:
        if values[item.id] is None and item.default is not None:
            values[item.id] = item.default
    for item in form.items:
        if item.derived is not None:
            values[item.id] = derive_item(form, item, values)
    return values


def _observation(
    study: StudyDef, form: FormDef, item: ItemDef, value: Any, subject: dict[str, str], effective: str
) -> dict[str, Any]:
    resource: dict[str, Any] = {"resourceType": "Observation", "status": "final"}
    category = item.fhir.category or form.observation_category
    if category:
        resource["category"] = [{"coding": [{"system": fhir.OBSERVATION_CATEGORY, "code": category}]}]
    resource["code"] = _concept(item)
    resource["subject"] = subject
    resource["effectiveDateTime"] = effective
    resource.update(observation_value(study, item, value))
    return resource


def observation_value(study: StudyDef, item: ItemDef, value: Any) -> dict[str, Any]:
    """The value[x] element of an Observation that holds `item`."""
    if item.unit is not None:
        return {"valueQuantity": quantity(study, item, value)}
    if item.type == "integer":
        return {"valueInteger": int(value)}
    if item.type == "decimal":
        return {"valueQuantity": {"value": _number(value)}}
    if item.type == "boolean":
        return {"valueBoolean": bool(value)}
    if item.type == "date":
        return {"valueDateTime": _fhir_date(value)}
    if item.type == "text":
        return {"valueString": str(value)}
    return {"valueCodeableConcept": {"coding": [study.value_coding(item, str(value)).fhir()]}}


def _procedure(item: ItemDef, value: Any, subject: dict[str, str]) -> dict[str, Any]:
    return {
        "resourceType": "Procedure",
        "status": "completed",
        "code": _concept(item),
        "subject": subject,
        "performedDateTime": _fhir_date(value),
    }


def _condition(study: StudyDef, item: ItemDef, value: Any, subject: dict[str, str], recorded: str) -> dict[str, Any]:
    code = item.fhir.code_by_value.get(str(value))
    concept = {"coding": [code.fhir()]} if code else _concept(item)
    return {
        "resourceType": "Condition",
        "extension": [
            {
                "url": fhir.MCODE_HISTOLOGY_EXTENSION,
                "valueCodeableConcept": {"coding": [{"system": item.fhir.value_system, "code": str(value)}]},
            }
        ],
        "verificationStatus": {"coding": [{"system": fhir.CONDITION_VERIFICATION, "code": "confirmed"}]},
        "code": concept,
        "subject": subject,
        "recordedDate": recorded,
    }


def _resource(study: StudyDef, item: ItemDef, value: Any, subject: dict[str, str]) -> dict[str, Any]:
    """A resource of the item's `resource_type` (or the one its value chooses): its fixed elements, the
    subject, the value at `path`."""
    resource_type = item.fhir.resource_type_of(value)
    key = elements.value_key(value)
    resource: dict[str, Any] = {
        "resourceType": resource_type,
        **copy.deepcopy(item.fhir.fixed),
        **copy.deepcopy(item.fhir.fixed_by_value.get(key) or {}),
        "subject": subject,
    }
    _write_paths(study, resource, item, value)
    return resource


def _write_paths(study: StudyDef, resource: dict[str, Any], item: ItemDef, value: Any) -> None:
    for path in (item.fhir.path_in(resource["resourceType"]), *item.fhir.also):
        elements.write(study, resource, item, path, value)


def _attach(study: StudyDef, item: ItemDef, value: Any, owner: dict[str, Any]) -> None:
    kind = item.fhir.kind
    if kind == "element":
        _write_paths(study, owner, item, value)
    elif kind == "reference_range_high":
        owner["referenceRange"] = [{"high": quantity(study, item, value)}]
    elif kind == "component":
        component = {"code": _concept(item)}
        component.update(observation_value(study, item, value))
        owner.setdefault("component", []).append(component)
    elif kind == "method":
        owner["method"] = {"coding": [study.value_coding(item, str(value)).fhir()]}
    elif kind == "interpretation":
        owner["interpretation"] = [{"coding": [study.value_coding(item, str(value)).fhir()]}]
    elif kind == "procedure_code":
        owner["code"]["coding"].append(study.value_coding(item, str(value)).fhir())
    elif kind == "suspect_entity":
        _suspect_entity(study, item, value, owner)


def contained_id(coding: Any) -> str:
    """The id of the contained Medication of a drug coding (FHIR ids: letters, digits, '-', '.')."""
    return (re.sub(r"[^A-Za-z0-9.-]", "-", coding.code) or "medication")[:64]


def _suspect_entity(study: StudyDef, item: ItemDef, value: Any, owner: dict[str, Any]) -> None:
    """AdverseEvent.suspectEntity (CRF-SPEC 7.2): the drug named by the study extension, the causality assessment
    the item's value. The instance is a contained Medication of the drug; the eCRF door points it at the subject's
    exposure resource of that drug when there is one (ecrf/crf/suspects.py)."""
    target = item.fhir
    drug = {"coding": [target.medication.fhir()]}
    local_id = contained_id(target.medication)
    owner.setdefault("suspectEntity", []).append(
        {
            "extension": [{"url": study.extension_url(target.extension), "valueCodeableConcept": drug}],
            "instance": {"reference": f"#{local_id}"},
            "causality": [{"assessment": {"coding": [study.value_coding(item, str(value)).fhir()]}}],
        }
    )
    contained = owner.setdefault("contained", [])
    if not any(entry.get("id") == local_id for entry in contained):
        contained.append({"resourceType": "Medication", "id": local_id, "code": copy.deepcopy(drug)})


def _element_text(item: ItemDef, value: Any) -> str:
    """A value written into a plain element (Patient.gender, ResearchSubject.assignedArm...)."""
    if item.type == "date":
        return _fhir_date(value)
    coding = item.fhir.code_by_value.get(str(value))
    return coding.code if coding else str(value)


def _set_research_subject(patch: dict[str, Any], item: ItemDef, value: Any) -> None:
    if item.fhir.path == "period.start":
        patch.setdefault("period", {})["start"] = _fhir_date(value)
    else:
        patch[item.fhir.path] = _element_text(item, value)


def _concept(item: ItemDef) -> dict[str, Any]:
    return {"coding": [coding.fhir() for coding in item.fhir.codes]}


_number = elements._number


def _fhir_date(value: Any) -> str:
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    return str(value)
