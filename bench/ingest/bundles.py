"""Synthetic lab transaction Bundles: one Patient (conditional on its MRN) and its lab Observations."""

import uuid
from typing import Any

UCUM = "http://unitsofmeasure.org"
S01_MRN = "urn:oid:2.16.840.1.113883.3.9999.1"
# (LOINC, display, value, unit, upper limit of normal or None)
LABS = [
    ("718-7", "Hemoglobin [Mass/volume] in Blood", 13.1, "g/dL", None),
    ("777-3", "Platelets [#/volume] in Blood by Automated count", 212, "10*3/uL", None),
    ("751-8", "Neutrophils [#/volume] in Blood by Automated count", 3.4, "10*3/uL", None),
    ("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", 0.92, "mg/dL", 1.2),
    ("1920-8", "Aspartate aminotransferase [Enzymatic activity/volume] in Serum or Plasma", 31, "U/L", 40),
    ("1742-6", "Alanine aminotransferase [Enzymatic activity/volume] in Serum or Plasma", 27, "U/L", 50),
    ("1975-2", "Bilirubin.total [Mass/volume] in Serum or Plasma", 0.8, "mg/dL", 1.2),
    ("1751-7", "Albumin [Mass/volume] in Serum or Plasma", 4.1, "g/dL", None),
    ("6301-6", "INR in Platelet poor plasma by Coagulation assay", 1.1, "{INR}", 1.2),
    ("14979-9", "aPTT in Platelet poor plasma by Coagulation assay", 31.5, "s", 36),
]


def quantity(value: Any, unit: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "system": UCUM, "code": unit}


def lab_observation(subject: str, index: int) -> dict[str, Any]:
    code, display, value, unit, uln = LABS[index % len(LABS)]
    observation = {
        "resourceType": "Observation",
        "status": "final",
        "identifier": [{"system": "urn:example:lab-accession", "value": uuid.uuid4().hex}],
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "laboratory",
                        "display": "Laboratory",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": display}], "text": display},
        "subject": {"reference": subject},
        "effectiveDateTime": f"2026-{1 + index // 28 % 12:02d}-{1 + index % 28:02d}T08:30:00+08:00",
        "issued": "2026-03-01T10:00:00+08:00",
        "valueQuantity": quantity(value, unit),
    }
    if uln is not None:
        observation["referenceRange"] = [{"high": quantity(uln, unit)}]
    return observation


def lab_bundle(observations: int) -> dict[str, Any]:
    mrn = uuid.uuid4().hex[:10]
    patient_url = f"urn:uuid:{uuid.uuid4()}"
    patient = {
        "resourceType": "Patient",
        "identifier": [{"system": S01_MRN, "value": mrn}],
        "name": [{"family": "Bench", "given": ["Lab"]}],
        "gender": "female",
        "birthDate": "1962-07-14",
    }
    entries = [
        {
            "fullUrl": patient_url,
            "resource": patient,
            "request": {"method": "POST", "url": "Patient", "ifNoneExist": f"identifier={S01_MRN}|{mrn}"},
        }
    ]
    entries += [
        {
            "fullUrl": f"urn:uuid:{uuid.uuid4()}",
            "resource": lab_observation(patient_url, i),
            "request": {"method": "POST", "url": "Observation"},
        }
        for i in range(observations)
    ]
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}
