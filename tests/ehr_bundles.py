"""EHR Bundles in Synthea's shape, generated: one Patient with Encounters, Claims, ExplanationOfBenefits,
CareTeam, Provenance, DiagnosticReports over lab Observations, MedicationRequests naming a Medication and a
Practitioner (conditional reference, as Synthea writes it), ImagingStudy, all linked by urn:uuid fullUrls.

`expected_retention(bundle, kept)` computes independently what the server must hold back and which
references of kept resources it must remove, for an exact comparison with its answer.
"""

import uuid
from typing import Any

from fhir_builders import LOINC, MRN, UCUM

SYNTHEA = "https://github.com/synthetichealth/synthea"
LABS = (
    ("718-7", "Hemoglobin [Mass/volume] in Blood", 13.2, "g/dL"),
    ("777-3", "Platelets [#/volume] in Blood", 210, "10*3/uL"),
    ("1742-6", "Alanine aminotransferase", 31, "U/L"),
)


def _urn() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def _entry(resource: dict[str, Any], full_url: str, if_none_exist: str | None = None) -> dict[str, Any]:
    request = {"method": "POST", "url": resource["resourceType"]}
    if if_none_exist:
        request["ifNoneExist"] = if_none_exist
    return {"fullUrl": full_url, "resource": resource, "request": request}


def _coded(system: str, code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code, "display": display}], "text": display}


def synthea_shaped(mrn: str, dates: list[str], *, site: str = "S01", kind: str = "transaction") -> dict[str, Any]:
    """A Bundle of one Patient (with the site's MRN) and one encounter per date, each with its labs."""
    patient_url = _urn()
    patient = {
        "resourceType": "Patient",
        "identifier": [{"system": SYNTHEA, "value": str(uuid.uuid4())}, {"system": MRN[site], "value": mrn}],
        "name": [{"use": "official", "family": "Shaped", "given": ["Synthea"]}],
        "gender": "female",
        "birthDate": "1962-07-14",
        "maritalStatus": _coded("http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "M", "Married"),
    }
    entries = [_entry(patient, patient_url)]
    practitioner = f"Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|{9999900000 + len(dates)}"
    organization = f"Organization?identifier={SYNTHEA}|{uuid.uuid4()}"
    care_team_url = _urn()
    entries.append(
        _entry(
            {
                "resourceType": "CareTeam",
                "status": "active",
                "subject": {"reference": patient_url},
                "participant": [{"member": {"reference": practitioner, "display": "Dr. Shaped"}}],
                "managingOrganization": [{"reference": organization}],
            },
            care_team_url,
        )
    )
    medication_url = _urn()
    entries.append(
        _entry(
            {
                "resourceType": "Medication",
                "status": "active",
                "code": _coded(
                    "http://www.nlm.nih.gov/research/umls/rxnorm", "1310197", "sorafenib 200 MG Oral Tablet"
                ),
            },
            medication_url,
        )
    )
    written = [patient_url]
    for number, date in enumerate(dates):
        encounter_url = _urn()
        entries.append(
            _entry(
                {
                    "resourceType": "Encounter",
                    "status": "finished",
                    "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                    "type": [_coded("http://snomed.info/sct", "185349003", "Encounter for check up")],
                    "subject": {"reference": patient_url, "display": "Synthea Shaped"},
                    "participant": [{"individual": {"reference": practitioner}}],
                    "period": {"start": f"{date}T08:00:00+08:00", "end": f"{date}T08:30:00+08:00"},
                    "serviceProvider": {"reference": organization},
                },
                encounter_url,
            )
        )
        observations = []
        for code, display, value, unit in LABS:
            observation_url = _urn()
            observations.append(observation_url)
            entries.append(
                _entry(
                    {
                        "resourceType": "Observation",
                        "status": "final",
                        "category": [
                            _coded(
                                "http://terminology.hl7.org/CodeSystem/observation-category", "laboratory", "Laboratory"
                            )
                        ],
                        "code": _coded(LOINC, code, display),
                        "subject": {"reference": patient_url},
                        "encounter": {"reference": encounter_url},
                        "effectiveDateTime": f"{date}T08:10:00+08:00",
                        "issued": f"{date}T08:10:00.000+08:00",
                        "valueQuantity": {"value": value + number, "unit": unit, "system": UCUM, "code": unit},
                    },
                    observation_url,
                )
            )
        report_url = _urn()
        entries.append(
            _entry(
                {
                    "resourceType": "DiagnosticReport",
                    "status": "final",
                    "code": _coded(LOINC, "58410-2", "CBC panel - Blood by Automated count"),
                    "subject": {"reference": patient_url},
                    "encounter": {"reference": encounter_url},
                    "effectiveDateTime": f"{date}T08:10:00+08:00",
                    "issued": f"{date}T08:10:00.000+08:00",
                    "performer": [{"reference": practitioner, "display": "Dr. Shaped"}],
                    "result": [{"reference": url, "display": "lab"} for url in observations],
                },
                report_url,
            )
        )
        request_url = _urn()
        entries.append(
            _entry(
                {
                    "resourceType": "MedicationRequest",
                    "status": "active",
                    "intent": "order",
                    "medicationReference": {"reference": medication_url},
                    "subject": {"reference": patient_url},
                    "encounter": {"reference": encounter_url},
                    "authoredOn": f"{date}T08:20:00+08:00",
                    "requester": {"reference": practitioner},
                },
                request_url,
            )
        )
        imaging_url = _urn()
        entries.append(
            _entry(
                {
                    "resourceType": "ImagingStudy",
                    "status": "available",
                    "subject": {"reference": patient_url},
                    "encounter": {"reference": encounter_url},
                    "started": f"{date}T08:25:00+08:00",
                    "series": [
                        {
                            "uid": f"1.2.840.99999999.{number}.1",
                            "modality": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "CT"},
                        }
                    ],
                },
                imaging_url,
            )
        )
        claim_url = _urn()
        entries.append(
            _entry(
                {
                    "resourceType": "Claim",
                    "status": "active",
                    "type": _coded("http://terminology.hl7.org/CodeSystem/claim-type", "professional", "Professional"),
                    "use": "claim",
                    "patient": {"reference": patient_url},
                    "created": f"{date}T08:30:00+08:00",
                    "provider": {"reference": organization},
                    "priority": _coded("http://terminology.hl7.org/CodeSystem/processpriority", "normal", "Normal"),
                    "insurance": [{"sequence": 1, "focal": True, "coverage": {"display": "Medicare"}}],
                    "item": [
                        {
                            "sequence": 1,
                            "productOrService": _coded("http://snomed.info/sct", "185349003", "Check up"),
                            "encounter": [{"reference": encounter_url}],
                        }
                    ],
                },
                claim_url,
            )
        )
        entries.append(
            _entry(
                {
                    "resourceType": "ExplanationOfBenefit",
                    "status": "active",
                    "type": _coded("http://terminology.hl7.org/CodeSystem/claim-type", "professional", "Professional"),
                    "use": "claim",
                    "patient": {"reference": patient_url},
                    "created": f"{date}T08:30:00+08:00",
                    "insurer": {"display": "Medicare"},
                    "provider": {"reference": practitioner},
                    "claim": {"reference": claim_url},
                    "outcome": "complete",
                    "careTeam": [{"sequence": 1, "provider": {"reference": practitioner}}],
                    "insurance": [{"focal": True, "coverage": {"display": "Medicare"}}],
                },
                _urn(),
            )
        )
        written += [encounter_url, *observations, report_url, request_url, imaging_url, claim_url]
    entries.append(
        _entry(
            {
                "resourceType": "Provenance",
                "recorded": f"{dates[-1]}T09:00:00+08:00",
                "target": [{"reference": url} for url in written],
                "agent": [{"who": {"reference": practitioner}}],
            },
            _urn(),
        )
    )
    return {"resourceType": "Bundle", "type": kind, "entry": entries}


def expected_retention(bundle: dict[str, Any], kept: tuple[str, ...]) -> tuple[dict[int, str], set[tuple[int, str]]]:
    """(held-back entry index -> type, {(kept entry index, FHIRPath of a removed reference)}): a reference of a
    kept resource is removed when it names an entry of a type not kept (by fullUrl) or is a conditional
    reference to a type not kept."""
    types = {entry.get("fullUrl"): entry["resource"]["resourceType"] for entry in bundle["entry"]}
    held = {
        index: entry["resource"]["resourceType"]
        for index, entry in enumerate(bundle["entry"])
        if entry["resource"]["resourceType"] not in kept
    }
    removed = set()
    for index, entry in enumerate(bundle["entry"]):
        if entry["resource"]["resourceType"] in kept:
            for path, reference in _references(entry["resource"], f"Bundle.entry[{index}].resource"):
                target = types.get(reference) or (reference.partition("?")[0] if "?" in reference else None)
                if target is not None and target not in kept:
                    removed.add((index, f"{path}.reference"))
    return held, removed


def _references(node: Any, path: str):
    if isinstance(node, dict):
        if isinstance(node.get("reference"), str):
            yield path, node["reference"]
        for name, value in node.items():
            yield from _references(value, f"{path}.{name}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _references(value, f"{path}[{index}]")
