"""Small FHIR resource and Bundle builders shared by the FHIR door tests."""

import uuid
from typing import Any

MRN = {"S01": "urn:oid:2.16.840.1.113883.3.9999.1", "S02": "urn:oid:2.16.840.1.113883.3.9999.2"}
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
FHIR_JSON = {"Content-Type": "application/fhir+json"}


def mrn() -> str:
    return uuid.uuid4().hex[:12]


def patient(value: str | None = None, site: str = "S01") -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": MRN[site], "value": value or mrn()}],
        "gender": "female",
        "birthDate": "1961-03-04",
    }


def lab(
    subject: str, code: str, value: Any, unit: str, date: str = "2026-03-02", *, uln: Any = None, system: str = LOINC
) -> dict[str, Any]:
    observation = {
        "resourceType": "Observation",
        "status": "final",
        "category": [
            {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}
        ],
        "code": {"coding": [{"system": system, "code": code}]},
        "subject": {"reference": subject},
        "effectiveDateTime": date,
        "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit},
    }
    if uln is not None:
        observation["referenceRange"] = [{"high": {"value": uln, "unit": unit, "system": UCUM, "code": unit}}]
    return observation


def post(resource: dict[str, Any], full_url: str | None = None, if_none_exist: str | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"resource": resource, "request": {"method": "POST", "url": resource["resourceType"]}}
    if full_url:
        entry["fullUrl"] = full_url
    if if_none_exist:
        entry["request"]["ifNoneExist"] = if_none_exist
    return entry


def bundle(entries: list[dict[str, Any]], kind: str = "transaction") -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": entries}


def urn() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def patient_with_labs(count: int, site: str = "S01", value_of=lambda i: 13.0 + i % 5 / 10) -> dict[str, Any]:
    """A transaction: one Patient (conditional on its MRN) and `count` hemoglobin Observations about it."""
    person = patient(site=site)
    identifier = person["identifier"][0]
    patient_url = urn()
    entries = [post(person, patient_url, if_none_exist=f"identifier={identifier['system']}|{identifier['value']}")]
    for i in range(count):
        entries.append(post(lab(patient_url, "718-7", value_of(i), "g/dL", f"2026-03-{1 + i % 28:02d}")))
    return bundle(entries)


def outcome_expressions(outcome: dict[str, Any]) -> list[str]:
    return [expression for issue in outcome["issue"] for expression in issue.get("expression", [])]
