"""Synthetic patients for the eligibility tests: JSON fixtures with dates relative to R, pushed through
either door (one FHIR transaction + eCRF form entries) or written straight into the store."""
import copy
import json
import re
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from ecrf.auth.actor import Actor
from ecrf.config import Settings
from ecrf.eligibility.engine import Result, evaluate
from ecrf.eligibility.patient_data import load
from ecrf.store.service import WriteContext
from ecrf.store.unit import writing
from ecrf.study.loader import load_study
from fhir_mappings.mapping import form_to_resources

DATA = Path(__file__).resolve().parent / "data" / "eligibility"
TODAY = load_study(Settings(_env_file=None).study_dir).today_at("S01")  # R of an S01 subject: its site's date
COORDINATOR = Actor(sub="coordinator-s01", roles=frozenset({"coordinator"}), sites=frozenset({"S01"}))
_PLACEHOLDER = re.compile(r"\$\{([^}]*)\}")
_TERM = re.compile(r"([+-])(\d+)([dy])")
LOCAL = "http://example.org/fhir/CodeSystem/nct04163237"
UCUM = "http://unitsofmeasure.org"


def shift(reference: date, expression: str) -> date:
    """'R-10d', 'R-75y-10d': R plus whole years, then days (a 29 February becomes 28 February)."""
    assert expression.startswith("R"), expression
    day = reference
    for sign, amount, unit in _TERM.findall(expression[1:]):
        amount = int(amount) * (-1 if sign == "-" else 1)
        if unit == "y":
            try:
                day = day.replace(year=day.year + amount)
            except ValueError:
                day = day.replace(year=day.year + amount, day=28)
        else:
            day += timedelta(days=amount)
    return day


def materialise(node: Any, reference: date, mrn: str) -> Any:
    if isinstance(node, dict):
        return {key: materialise(value, reference, mrn) for key, value in node.items()}
    if isinstance(node, list):
        return [materialise(value, reference, mrn) for value in node]
    if isinstance(node, str):
        return _PLACEHOLDER.sub(lambda m: mrn if m.group(1) == "MRN" else shift(reference, m.group(1)).isoformat(), node)
    return node


def merge(base: Any, patch: Any) -> Any:
    """Deep merge; null removes a key; lists are replaced."""
    if not isinstance(base, dict) or not isinstance(patch, dict):
        return copy.deepcopy(patch)
    merged = copy.deepcopy(base)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge(merged.get(key), value)
    return merged


def base_patient() -> dict[str, Any]:
    return json.loads((DATA / "base_patient.json").read_text())


def variants() -> list[dict[str, Any]]:
    return json.loads((DATA / "patients.json").read_text())["patients"]


def compose(variant: dict[str, Any] | None = None, reference: date = TODAY) -> dict[str, Any]:
    """The base patient with a variant's changes: {"resources": {key: patch|null}, "forms": {form: patch|null}}."""
    patient = base_patient()
    variant = variant or {}
    resources = merge(patient["resources"], variant.get("resources", {}))
    forms = merge(patient["forms"], variant.get("forms", {}))
    return materialise({"resources": resources, "forms": forms}, reference, uuid.uuid4().hex[:12])


# -- the FHIR door + the eCRF door over HTTP ---------------------------------------------------------

def transaction(resources: dict[str, dict[str, Any]]) -> tuple[dict[str, Any], dict[str, str]]:
    urls = {key: f"urn:uuid:{uuid.uuid4()}" for key in resources}
    entries = []
    for key, resource in resources.items():
        content = _resolve_references(resource, urls)
        entries.append({"fullUrl": urls[key], "resource": content,
                        "request": {"method": "POST", "url": resource["resourceType"]}})
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}, urls


def push(http, patient: dict[str, Any]) -> str:
    """POST the resources as one transaction, then PUT the form entries; returns the subject id."""
    bundle, _ = transaction(patient["resources"])
    response = http.post("/fhir", json=bundle, headers={"Content-Type": "application/fhir+json"})
    assert response.status_code == 200, response.text
    subject_id = None
    for entry, sent in zip(response.json()["entry"], bundle["entry"], strict=True):
        if sent["resource"]["resourceType"] == "ResearchSubject":
            subject_id = entry["response"]["location"].split("/")[1]
    assert subject_id, "the bundle needs a ResearchSubject"
    for form_id, entry in patient["forms"].items():
        save_form(http, subject_id, form_id, entry)
    return subject_id


def save_form(http, subject_id: str, form_id: str, entry: dict[str, Any], *, expect: int | None = None):
    body = {"items": entry["items"], "visit_date": entry["visit_date"]}
    if entry.get("reason"):
        body["reason"] = entry["reason"]
    response = http.put(f"/api/v1/subjects/{subject_id}/forms/{form_id}/{entry['visit']}", json=body)
    if expect is None:
        assert response.status_code in (200, 201), response.text
    else:
        assert response.status_code == expect, response.text
    return response


# -- straight into the store ---------------------------------------------------------------------------

def store_patient(server, resources: dict[str, dict[str, Any]], forms: dict[str, Any] | None = None,
                  reference: date = TODAY) -> tuple[str, Result]:
    """Write the resources (and form entries mapped the way the eCRF door maps them) through the store;
    evaluate with R = `reference` (the evaluation day)."""
    runtime = server.runtime
    ids = {key: str(uuid.uuid4()) for key in resources}
    patient_id = ids["patient"]
    with writing(runtime, COORDINATOR) as store:
        context = WriteContext(source="fhir")
        for key, resource in resources.items():
            content = _resolve_references(resource, {k: f"{r['resourceType']}/{ids[k]}" for k, r in resources.items()})
            store.create(content, context, resource_id=ids[key], site="S01")
        for form_id, entry in (forms or {}).items():
            mapped = form_to_resources(runtime.study, form_id, _form_values(runtime.study, form_id, entry["items"]),
                                       patient_ref=f"Patient/{patient_id}",
                                       visit_date=date.fromisoformat(entry["visit_date"]))
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


def _resolve_references(node: Any, targets: dict[str, str]) -> Any:
    if isinstance(node, dict):
        return {key: _resolve_references(value, targets) for key, value in node.items()}
    if isinstance(node, list):
        return [_resolve_references(value, targets) for value in node]
    if isinstance(node, str) and node.startswith("@") and node[1:] in targets:
        return targets[node[1:]]
    return node


def outcomes(result: Result | dict[str, Any]) -> dict[str, str]:
    criteria = result["criteria"] if isinstance(result, dict) else [c.as_dict() for c in result.criteria]
    return {c["id"]: c["result"] for c in criteria}


def criterion(result: Result | dict[str, Any], criterion_id: str) -> dict[str, Any]:
    criteria = result["criteria"] if isinstance(result, dict) else [c.as_dict() for c in result.criteria]
    return next(c for c in criteria if c["id"] == criterion_id)


# small FHIR builders for the store tests

def quantity(loinc: str, value: Any, unit: str, day: str, uln: Any = None, uln_unit: str | None = None) -> dict[str, Any]:
    observation = {"resourceType": "Observation", "status": "final", "subject": {"reference": "@patient"},
                   "code": {"coding": [{"system": "http://loinc.org", "code": loinc}]}, "effectiveDateTime": day,
                   "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit}}
    if uln is not None:
        unit_of_uln = uln_unit or unit
        observation["referenceRange"] = [{"high": {"value": uln, "unit": unit_of_uln, "system": UCUM, "code": unit_of_uln}}]
    return observation


def local_boolean(code: str, value: bool, day: str) -> dict[str, Any]:
    return {"resourceType": "Observation", "status": "final", "subject": {"reference": "@patient"},
            "code": {"coding": [{"system": LOCAL, "code": code}]}, "effectiveDateTime": day, "valueBoolean": value}


def local_coded(code: str, value_code: str, day: str) -> dict[str, Any]:
    return {"resourceType": "Observation", "status": "final", "subject": {"reference": "@patient"},
            "code": {"coding": [{"system": LOCAL, "code": code}]}, "effectiveDateTime": day,
            "valueCodeableConcept": {"coding": [{"system": LOCAL, "code": value_code}]}}


def condition(system: str, code: str, day: str, **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Condition", "subject": {"reference": "@patient"},
            "code": {"coding": [{"system": system, "code": code}]}, "onsetDateTime": day, **extra}


def day(expression: str, reference: date = TODAY) -> str:
    return shift(reference, expression).isoformat()
