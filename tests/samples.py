"""FHIR sample data for the tests: generated here, plus `../shared/fhir-samples/` when it is beside the checkout.

A fresh clone has no `../shared`; CI has it. Tests therefore run on generated data always (Synthea-shaped
Bundles from `tests/synthea_shaped.py`, and hand-built resources shaped like the HL7 and mCODE examples
the tests read), and on the shared files in addition: a case that needs them carries the `needs_shared`
mark, which skips it when `../shared/fhir-samples` is absent, and fails it instead under CI=true (CI must
run it).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.synthea_shaped import patient_bundle

SHARED = Path(__file__).resolve().parent.parent.parent / "shared"
SHARED_SAMPLES = SHARED / "fhir-samples"

needs_shared = pytest.mark.needs_shared


def have_shared() -> bool:
    return SHARED_SAMPLES.is_dir()


def check_shared() -> None:
    """Called for a test marked `needs_shared` before it runs (tests/conftest.py)."""
    if have_shared():
        return
    message = f"needs {SHARED_SAMPLES} (the shared FHIR samples, present in CI)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must have the shared samples: {message}")
    pytest.skip(message)


def shared_json(relative: str) -> dict[str, Any]:
    return json.loads((SHARED_SAMPLES / relative).read_text(encoding="utf-8"))


def shared_files() -> list[Path]:
    return sorted(SHARED_SAMPLES.rglob("*.json")) if have_shared() else []


# Synthea-shaped patients: one like the shared Tom Goodwin (born 1968-04-30, male), one like the shared
# fa4fda35 (19 encounters), and a small one.
GENERATED_BUNDLES: dict[str, dict[str, Any]] = {
    "synthea-shaped-1968-male": patient_bundle(
        1, given="Tom417", family="Goodwin327", birth_date="1968-04-30", gender="male", encounters=6, medications=3
    ),
    "synthea-shaped-19-encounters": patient_bundle(2, encounters=19, medications=11),
    "synthea-shaped-small": patient_bundle(3, encounters=1, medications=1),
}

# Shaped like HL7 R4 examples Observation-f005 (hemoglobin in g/dl with a reference range),
# Observation-example (body weight in pounds), f204 (a local code) and mCODE's ECOG example.
HL7_SHAPED: dict[str, dict[str, Any]] = {
    "hemoglobin-with-reference-range": {
        "resourceType": "Observation",
        "id": "f005-shaped",
        "status": "final",
        "code": {
            "coding": [{"system": "http://loinc.org", "code": "718-7", "display": "Hemoglobin [Mass/volume] in Blood"}],
            "text": "Hemoglobin [Mass/volume] in Blood",
        },
        "subject": {"reference": "Patient/f001"},
        "effectivePeriod": {"start": "2013-04-05T10:30:10+01:00", "end": "2013-04-05T10:30:10+01:00"},
        "issued": "2013-04-05T15:30:10+01:00",
        "valueQuantity": {"value": 7.2, "unit": "g/dl", "system": "http://unitsofmeasure.org", "code": "g/dL"},
        "interpretation": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                        "code": "L",
                        "display": "Low",
                    }
                ]
            }
        ],
        "referenceRange": [
            {
                "low": {"value": 7.5, "unit": "g/dl", "system": "http://unitsofmeasure.org", "code": "g/dL"},
                "high": {"value": 10, "unit": "g/dl", "system": "http://unitsofmeasure.org", "code": "g/dL"},
            }
        ],
    },
    "body-weight-in-pounds": {
        "resourceType": "Observation",
        "id": "example-shaped",
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "vital-signs",
                        "display": "Vital Signs",
                    }
                ]
            }
        ],
        "code": {
            "coding": [
                {"system": "http://loinc.org", "code": "29463-7", "display": "Body Weight"},
                {"system": "http://loinc.org", "code": "3141-9", "display": "Body weight Measured"},
            ],
            "text": "Body Weight",
        },
        "subject": {"reference": "Patient/example"},
        "effectiveDateTime": "2016-03-28",
        "valueQuantity": {"value": 185, "unit": "lbs", "system": "http://unitsofmeasure.org", "code": "[lb_av]"},
    },
    "local-code": {
        "resourceType": "Observation",
        "id": "f204-shaped",
        "status": "final",
        "code": {
            "coding": [
                {"system": "https://intranet.aumc.nl/labtestcodes", "code": "20005", "display": "Creatinine(Serum)"}
            ]
        },
        "subject": {"reference": "Patient/f201"},
        "issued": "2013-04-04T14:34:00+01:00",
        "valueQuantity": {"value": 122, "unit": "umol/L", "system": "http://snomed.info/sct", "code": "258814008"},
    },
    "ecog-value-integer": {
        "resourceType": "Observation",
        "id": "ecog-shaped",
        "status": "final",
        "category": [
            {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "survey"}]}
        ],
        "code": {
            "coding": [{"system": "http://loinc.org", "code": "89247-1", "display": "ECOG Performance Status score"}]
        },
        "subject": {"reference": "Patient/cancer-patient-shaped"},
        "effectiveDateTime": "2019-04-01",
        "valueInteger": 0,
        "interpretation": [
            {
                "coding": [
                    {
                        "system": "http://loinc.org",
                        "code": "LA9622-7",
                        "display": "Fully active, able to carry on all pre-disease performance without restriction",
                    }
                ]
            }
        ],
    },
    "appendectomy": {
        "resourceType": "Procedure",
        "id": "procedure-shaped",
        "status": "completed",
        "code": {
            "coding": [{"system": "http://snomed.info/sct", "code": "80146002", "display": "Appendectomy (Procedure)"}],
            "text": "Appendectomy",
        },
        "subject": {"reference": "Patient/example"},
        "performedDateTime": "2013-04-05",
        "note": [{"text": "Routine Appendectomy. Appendix was inflamed and in retro-caecal position"}],
    },
}
# the shared file each shaped resource stands in for
HL7_SHARED = {
    "hemoglobin-with-reference-range": "hl7-r4-examples/Observation-f005.json",
    "body-weight-in-pounds": "hl7-r4-examples/Observation-example.json",
    "local-code": "hl7-r4-examples/Observation-f204.json",
    "ecog-value-integer": "mcode/Observation-mCODEECOGPerformanceStatusExample01.json",
    "appendectomy": "hl7-r4-examples/Procedure-example.json",
}


def hl7_cases(name: str) -> list:
    """pytest params of one HL7-shaped case: the generated resource, and the shared example it stands in for."""
    return [
        pytest.param(("generated", name), id=f"generated-{name}"),
        pytest.param(("shared", HL7_SHARED[name]), id=f"shared-{Path(HL7_SHARED[name]).stem}", marks=needs_shared),
    ]


def load_case(case: tuple[str, str]) -> dict[str, Any]:
    kind, name = case
    if kind == "generated":
        return json.loads(json.dumps(HL7_SHAPED[name]))
    return shared_json(name)


def upload_cases() -> list:
    """Every sample a client could push, as pytest params of (name, bytes): generated always, shared when present
    (a shared one is only listed when the directory is there, since its name comes from the listing)."""
    cases = [pytest.param((name, json.dumps(bundle).encode()), id=name) for name, bundle in GENERATED_BUNDLES.items()]
    cases += [pytest.param((name, json.dumps(resource).encode()), id=name) for name, resource in HL7_SHAPED.items()]
    for path in shared_files():
        relative = str(path.relative_to(SHARED_SAMPLES))
        cases.append(pytest.param((relative, path.read_bytes()), id=f"shared/{relative}", marks=needs_shared))
    if not have_shared():  # one visible skip (or, in CI, failure) stands for the files that are not there
        cases.append(pytest.param(None, id="shared", marks=needs_shared))
    return cases
