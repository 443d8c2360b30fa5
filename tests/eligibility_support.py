"""Synthetic patients for the eligibility tests: JSON fixtures with dates relative to R, pushed through
either door (one FHIR transaction + eCRF form entries: testkit.patients, shared with the bench) or written
straight into the store."""

import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

from ecrf.auth.actor import Actor
from ecrf.eligibility.engine import Result, evaluate
from ecrf.eligibility.patient_data import load
from ecrf.store.service import WriteContext
from ecrf.store.unit import writing
from fhir_mappings.mapping import form_to_resources
from testkit.patients import TODAY, resolve_references, shift
from testkit.patients import compose, push, save_form, variants  # noqa: F401 - the tests import them from here

COORDINATOR = Actor(sub="coordinator-s01", roles=frozenset({"coordinator"}), sites=frozenset({"S01"}))
LOCAL = "http://example.org/fhir/CodeSystem/nct04163237"
UCUM = "http://unitsofmeasure.org"


# -- straight into the store ---------------------------------------------------------------------------


def store_patient(
    server, resources: dict[str, dict[str, Any]], forms: dict[str, Any] | None = None, reference: date = TODAY
) -> tuple[str, Result]:
    """Write the resources (and form entries mapped the way the eCRF door maps them) through the store;
    evaluate with R = `reference` (the evaluation day)."""
    runtime = server.runtime
    ids = {key: str(uuid.uuid4()) for key in resources}
    patient_id = ids["patient"]
    with writing(runtime, COORDINATOR) as store:
        context = WriteContext(source="fhir")
        for key, resource in resources.items():
            content = resolve_references(resource, {k: f"{r['resourceType']}/{ids[k]}" for k, r in resources.items()})
            store.create(content, context, resource_id=ids[key], site="S01")
        for form_id, entry in (forms or {}).items():
            mapped = form_to_resources(
                runtime.study,
                form_id,
                _form_values(runtime.study, form_id, entry["items"]),
                patient_ref=f"Patient/{patient_id}",
                visit_date=date.fromisoformat(entry["visit_date"]),
            )
            for _, resource in mapped.resources:
                store.create(resource, WriteContext(source="form", form_id=form_id))
    with writing(runtime, COORDINATOR) as store:
        data = load(store.session, runtime.study, [patient_id])[patient_id]
        moment = datetime.combine(reference, datetime.min.time(), tzinfo=UTC) + timedelta(hours=12)
        return patient_id, evaluate(runtime.study, data, moment)


def _form_values(study, form_id: str, items: dict[str, Any]) -> dict[str, Any]:
    from ecrf.crf.checks import check_items

    checked = check_items(study.form(form_id), items)
    assert not checked.errors, checked.errors
    return checked.values


def outcomes(result: Result | dict[str, Any]) -> dict[str, str]:
    criteria = result["criteria"] if isinstance(result, dict) else [c.as_dict() for c in result.criteria]
    return {c["id"]: c["result"] for c in criteria}


def criterion(result: Result | dict[str, Any], criterion_id: str) -> dict[str, Any]:
    criteria = result["criteria"] if isinstance(result, dict) else [c.as_dict() for c in result.criteria]
    return next(c for c in criteria if c["id"] == criterion_id)


# small FHIR builders for the store tests


def quantity(
    loinc: str, value: Any, unit: str, day: str, uln: Any = None, uln_unit: str | None = None
) -> dict[str, Any]:
    observation = {
        "resourceType": "Observation",
        "status": "final",
        "subject": {"reference": "@patient"},
        "code": {"coding": [{"system": "http://loinc.org", "code": loinc}]},
        "effectiveDateTime": day,
        "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit},
    }
    if uln is not None:
        unit_of_uln = uln_unit or unit
        observation["referenceRange"] = [
            {"high": {"value": uln, "unit": unit_of_uln, "system": UCUM, "code": unit_of_uln}}
        ]
    return observation


def local_boolean(code: str, value: bool, day: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "subject": {"reference": "@patient"},
        "code": {"coding": [{"system": LOCAL, "code": code}]},
        "effectiveDateTime": day,
        "valueBoolean": value,
    }


def local_coded(code: str, value_code: str, day: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "subject": {"reference": "@patient"},
        "code": {"coding": [{"system": LOCAL, "code": code}]},
        "effectiveDateTime": day,
        "valueCodeableConcept": {"coding": [{"system": LOCAL, "code": value_code}]},
    }


def condition(system: str, code: str, day: str, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Condition",
        "subject": {"reference": "@patient"},
        "code": {"coding": [{"system": system, "code": code}]},
        "onsetDateTime": day,
        **extra,
    }


def day(expression: str, reference: date = TODAY) -> str:
    return shift(reference, expression).isoformat()
