"""Synthea-shaped patient Bundles, made here so that the suite needs no file from outside the checkout.

A Bundle has the shape of a Synthea (https://github.com/synthetichealth/synthea) patient export: one
`transaction` whose entries are all `POST`s with `urn:uuid:` fullUrls, and whose references point at those
fullUrls. Per encounter: the Encounter, vital signs, a laboratory panel with the LOINC codes and units the
study reads (and some it does not: Synthea's creatinine is 38483-4, in blood, not serum), the
DiagnosticReport over the panel, a Claim and an ExplanationOfBenefit; then Conditions, Procedures,
Immunizations, MedicationRequests (each with its own Claim, as Synthea bills them), an ImagingStudy, a
CareTeam, an Organization, a Practitioner and one Provenance over everything. The Patient carries what a
Synthea Patient carries: name, telecom, address with geolocation, SSN, driver's licence, passport, MRN,
race, ethnicity and birth-place extensions, and the narrative.

Deterministic for a seed; every value a test checks can be chosen (name, birth date, gender, counts).
"""

from __future__ import annotations

import random
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
CVX = "http://hl7.org/fhir/sid/cvx"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
SYNTHEA_TAG = {"tag": [{"system": "https://smarthealthit.org/tags", "code": "synthea-5-2019"}]}
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"

# (LOINC code, display, unit, low, high, decimals): Synthea's units, which are not all the study's canonical ones
LABS = [
    ("718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", 11.5, 17.0, 1),
    ("777-3", "Platelets [#/volume] in Blood by Automated count", "10*3/uL", 150, 420, 1),
    ("1920-8", "Aspartate aminotransferase [Enzymatic activity/volume] in Serum or Plasma", "U/L", 10, 40, 1),
    ("1742-6", "Alanine aminotransferase [Enzymatic activity/volume] in Serum or Plasma", "U/L", 8, 45, 1),
    ("1975-2", "Bilirubin.total [Mass/volume] in Serum or Plasma", "mg/dL", 0.2, 1.2, 2),
    ("1751-7", "Albumin [Mass/volume] in Serum or Plasma", "g/dL", 3.4, 5.2, 1),
    ("38483-4", "Creatinine [Mass/volume] in Blood", "mg/dL", 0.6, 1.3, 2),
    ("2093-3", "Cholesterol [Mass/volume] in Serum or Plasma", "mg/dL", 150, 240, 1),
]
VITALS = [
    ("8302-2", "Body Height", "cm", 150, 195, 12),
    ("29463-7", "Body Weight", "kg", 50, 110, 12),
    ("8867-4", "Heart rate", "/min", 55, 95, 1),
]
CONDITIONS = [("38341003", "Hypertension"), ("15777000", "Prediabetes"), ("66857006", "Hepatitis B (disorder)")]
PROCEDURES = [
    ("430193006", "Medication Reconciliation (procedure)"),
    ("710824005", "Assessment of health and social care needs"),
]
VACCINES = [("140", "Influenza, seasonal, injectable, preservative free"), ("113", "Td (adult) preservative free")]
MEDICATIONS = [("314076", "lisinopril 10 MG Oral Tablet"), ("860975", "24 HR Metformin hydrochloride 500 MG")]
GIVEN = ["Marisela", "Jacinto", "Tomasa", "Elvin", "Rosalind", "Damian"]
FAMILY = ["Kuhlman", "Kris", "Schaden", "Goyette", "Wunsch", "Prohaska"]


class _Maker:
    def __init__(self, seed: int):
        self.rng = random.Random(seed)

    def uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def number(self, low: float, high: float, decimals: int) -> float:
        return round(self.rng.uniform(low, high), decimals)


def _instant(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")


def _entry(resource: dict[str, Any]) -> dict[str, Any]:
    resource.setdefault("meta", SYNTHEA_TAG)
    return {
        "fullUrl": f"urn:uuid:{resource['id']}",
        "resource": resource,
        "request": {"method": "POST", "url": resource["resourceType"]},
    }


def _ref(resource: dict[str, Any], display: str | None = None) -> dict[str, str]:
    reference = {"reference": f"urn:uuid:{resource['id']}"}
    return {**reference, "display": display} if display else reference


def patient_bundle(
    seed: int = 0,
    *,
    given: str | None = None,
    family: str | None = None,
    birth_date: str | None = None,
    gender: str | None = None,
    encounters: int = 4,
    medications: int = 2,
    start: datetime | None = None,
) -> dict[str, Any]:
    """One Synthea-shaped transaction Bundle of one patient's record."""
    make = _Maker(seed)
    rng = make.rng
    given = given or f"{rng.choice(GIVEN)}{rng.randint(100, 999)}"
    family = family or f"{rng.choice(FAMILY)}{rng.randint(100, 999)}"
    gender = gender or rng.choice(["male", "female"])
    birth_date = birth_date or f"{rng.randint(1940, 1985)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    start = start or datetime(2015, 3, 2, 9, 30, 11, tzinfo=UTC) + timedelta(days=rng.randint(0, 2000))
    person = make.uuid()

    organization = {
        "resourceType": "Organization",
        "id": make.uuid(),
        "active": True,
        "name": "PCP SHAPED CLINIC",
        "type": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/organization-type",
                        "code": "prov",
                        "display": "Healthcare Provider",
                    }
                ]
            }
        ],
        "address": [{"line": ["1 Generated Way"], "city": "Springfield", "state": "MA", "country": "US"}],
    }
    practitioner = {
        "resourceType": "Practitioner",
        "id": make.uuid(),
        "active": True,
        "identifier": [{"system": "http://hl7.org/fhir/sid/us-npi", "value": str(9_999_000_000 + seed)}],
        "name": [{"family": f"Doc{seed}", "given": ["Shaped"], "prefix": ["Dr."]}],
        "gender": "female",
    }
    patient = {
        "resourceType": "Patient",
        "id": person,
        "text": {
            "status": "generated",
            "div": f'<div xmlns="http://www.w3.org/1999/xhtml">Generated by the test suite. Person seed: {seed}</div>',
        },
        "extension": [
            {
                "url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race",
                "extension": [
                    {
                        "url": "ombCategory",
                        "valueCoding": {
                            "system": "urn:oid:2.16.840.1.113883.6.238",
                            "code": "2106-3",
                            "display": "White",
                        },
                    },
                    {"url": "text", "valueString": "White"},
                ],
            },
            {
                "url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-ethnicity",
                "extension": [
                    {
                        "url": "ombCategory",
                        "valueCoding": {
                            "system": "urn:oid:2.16.840.1.113883.6.238",
                            "code": "2186-5",
                            "display": "Not Hispanic or Latino",
                        },
                    },
                    {"url": "text", "valueString": "Not Hispanic or Latino"},
                ],
            },
            {
                "url": "http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName",
                "valueString": f"{rng.choice(GIVEN)}{rng.randint(100, 999)} {rng.choice(FAMILY)}{rng.randint(100, 999)}",
            },
            {
                "url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-birthsex",
                "valueCode": "M" if gender == "male" else "F",
            },
            {
                "url": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace",
                "valueAddress": {"city": "Worcester", "state": "Massachusetts", "country": "US"},
            },
            {
                "url": "http://synthetichealth.github.io/synthea/disability-adjusted-life-years",
                "valueDecimal": make.number(0, 3, 12),
            },
        ],
        "identifier": [
            {"system": "https://github.com/synthetichealth/synthea", "value": person},
            {
                "type": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                            "code": "MR",
                            "display": "Medical Record Number",
                        }
                    ],
                    "text": "Medical Record Number",
                },
                "system": "http://hospital.smarthealthit.org",
                "value": person,
            },
            {
                "type": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                            "code": "SS",
                            "display": "Social Security Number",
                        }
                    ],
                    "text": "Social Security Number",
                },
                "system": "http://hl7.org/fhir/sid/us-ssn",
                "value": f"999-{rng.randint(10, 99)}-{rng.randint(1000, 9999)}",
            },
            {
                "type": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                            "code": "DL",
                            "display": "Driver's License",
                        }
                    ],
                    "text": "Driver's License",
                },
                "system": "urn:oid:2.16.840.1.113883.4.3.25",
                "value": f"S{rng.randint(10**7, 10**8 - 1)}",
            },
            {
                "type": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                            "code": "PPN",
                            "display": "Passport Number",
                        }
                    ],
                    "text": "Passport Number",
                },
                "system": "http://standardhealthrecord.org/fhir/StructureDefinition/passportNumber",
                "value": f"X{rng.randint(10**7, 10**8 - 1)}X",
            },
        ],
        "name": [
            {"use": "official", "family": family, "given": [given], "prefix": ["Mr." if gender == "male" else "Ms."]}
        ],
        "telecom": [
            {"system": "phone", "value": f"555-{rng.randint(100, 999)}-{rng.randint(1000, 9999)}", "use": "home"}
        ],
        "gender": gender,
        "birthDate": birth_date,
        "address": [
            {
                "extension": [
                    {
                        "url": "http://hl7.org/fhir/StructureDefinition/geolocation",
                        "extension": [
                            {"url": "latitude", "valueDecimal": make.number(41, 43, 6)},
                            {"url": "longitude", "valueDecimal": make.number(-73, -70, 6)},
                        ],
                    }
                ],
                "line": [f"{rng.randint(100, 999)} {rng.choice(FAMILY)} Gateway Suite {rng.randint(1, 99)}"],
                "city": "Springfield",
                "state": "Massachusetts",
                "postalCode": f"01{rng.randint(100, 999)}",
                "country": "US",
            }
        ],
        "maritalStatus": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "code": "M"}],
            "text": "M",
        },
        "multipleBirthBoolean": False,
        "communication": [{"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": "en-US"}]}}],
    }
    resources: list[dict[str, Any]] = [patient, organization, practitioner]
    subject = _ref(patient, f"{given} {family}")
    subject = {"reference": subject["reference"]}  # Synthea's subject references carry no display

    conditions = []
    for number, (code, display) in enumerate(CONDITIONS[: 1 + seed % len(CONDITIONS)]):
        conditions.append(
            {
                "resourceType": "Condition",
                "id": make.uuid(),
                "clinicalStatus": {
                    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]
                },
                "verificationStatus": {
                    "coding": [
                        {"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}
                    ]
                },
                "code": {"coding": [{"system": SNOMED, "code": code, "display": display}], "text": display},
                "subject": subject,
                "onsetDateTime": _instant(start + timedelta(days=number)),
                "recordedDate": _instant(start + timedelta(days=number)),
            }
        )

    for visit in range(encounters):
        when = start + timedelta(days=90 * visit, minutes=rng.randint(0, 600))
        encounter = {
            "resourceType": "Encounter",
            "id": make.uuid(),
            "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "type": [
                {
                    "coding": [
                        {"system": SNOMED, "code": "185349003", "display": "Encounter for check up (procedure)"}
                    ],
                    "text": "Encounter for check up (procedure)",
                }
            ],
            "subject": subject,
            "participant": [{"individual": _ref(practitioner)}],
            "period": {"start": _instant(when), "end": _instant(when + timedelta(minutes=30))},
            "serviceProvider": _ref(organization),
        }
        resources.append(encounter)
        if visit == 0:
            for condition in conditions:
                condition["encounter"] = _ref(encounter)
            resources += conditions
        for code, display, unit, low, high, decimals in VITALS:
            resources.append(
                _observation(
                    make, code, display, unit, make.number(low, high, decimals), "vital-signs", subject, encounter, when
                )
            )
        panel = [
            _observation(
                make, code, display, unit, make.number(low, high, decimals), "laboratory", subject, encounter, when
            )
            for code, display, unit, low, high, decimals in LABS
        ]
        resources += panel
        resources.append(
            {
                "resourceType": "DiagnosticReport",
                "id": make.uuid(),
                "status": "final",
                "category": [
                    {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/v2-0074",
                                "code": "LAB",
                                "display": "Laboratory",
                            }
                        ]
                    }
                ],
                "code": {
                    "coding": [{"system": LOINC, "code": "24323-8", "display": "Comprehensive metabolic 2000 panel"}]
                },
                "subject": subject,
                "encounter": _ref(encounter),
                "effectiveDateTime": _instant(when),
                "issued": when.isoformat(timespec="milliseconds"),
                "result": [_ref(o, o["code"]["text"]) for o in panel],
            }
        )
        code, display = PROCEDURES[visit % len(PROCEDURES)]
        procedure = {
            "resourceType": "Procedure",
            "id": make.uuid(),
            "status": "completed",
            "code": {"coding": [{"system": SNOMED, "code": code, "display": display}], "text": display},
            "subject": subject,
            "encounter": _ref(encounter),
            "performedPeriod": {"start": _instant(when), "end": _instant(when + timedelta(minutes=15))},
        }
        resources.append(procedure)
        if visit % 2 == 0:
            code, display = VACCINES[(visit // 2) % len(VACCINES)]
            resources.append(
                {
                    "resourceType": "Immunization",
                    "id": make.uuid(),
                    "status": "completed",
                    "vaccineCode": {"coding": [{"system": CVX, "code": code, "display": display}], "text": display},
                    "patient": subject,
                    "encounter": _ref(encounter),
                    "occurrenceDateTime": _instant(when),
                    "primarySource": True,
                }
            )
        claim = _claim(make, subject, organization, encounter, when, [procedure, *conditions[:1]])
        resources.append(claim)
        resources.append(_explanation_of_benefit(make, subject, organization, practitioner, claim, when))

    first = datetime.fromisoformat(resources[3]["period"]["start"]) if encounters else start
    last_encounter = next((r for r in reversed(resources) if r["resourceType"] == "Encounter"), None)
    for number in range(medications):
        code, display = MEDICATIONS[number % len(MEDICATIONS)]
        request = {
            "resourceType": "MedicationRequest",
            "id": make.uuid(),
            "status": "active",
            "intent": "order",
            "medicationCodeableConcept": {
                "coding": [{"system": RXNORM, "code": code, "display": display}],
                "text": display,
            },
            "subject": subject,
            "authoredOn": _instant(first + timedelta(days=number)),
            "requester": _ref(practitioner),
            "dosageInstruction": [
                {
                    "sequence": 1,
                    "timing": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d"}},
                    "asNeededBoolean": False,
                }
            ],
        }
        if last_encounter:
            request["encounter"] = _ref(last_encounter)
        if conditions:
            request["reasonReference"] = [_ref(conditions[0])]
        resources.append(request)
        resources.append(
            _claim(
                make, subject, organization, last_encounter, first + timedelta(days=number), [], prescription=request
            )
        )

    resources.append(
        {
            "resourceType": "ImagingStudy",
            "id": make.uuid(),
            "status": "available",
            "subject": subject,
            "started": _instant(first),
            "numberOfSeries": 1,
            "numberOfInstances": 1,
            "series": [
                {
                    "uid": f"1.2.840.99999999.{seed}.1",
                    "number": 1,
                    "modality": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "CT"},
                    "bodySite": {"system": SNOMED, "code": "10200004", "display": "Liver"},
                    "instance": [
                        {
                            "uid": f"1.2.840.99999999.{seed}.1.1",
                            "number": 1,
                            "sopClass": {"system": "urn:ietf:rfc:3986", "code": "urn:oid:1.2.840.10008.5.1.4.1.1.2"},
                        }
                    ],
                }
            ],
        }
    )
    resources.append(
        {
            "resourceType": "CareTeam",
            "id": make.uuid(),
            "status": "active",
            "subject": subject,
            "period": {"start": _instant(first)},
            "participant": [
                {
                    "role": [{"coding": [{"system": SNOMED, "code": "116154003", "display": "Patient"}]}],
                    "member": subject,
                },
                {
                    "role": [
                        {
                            "coding": [
                                {
                                    "system": SNOMED,
                                    "code": "223366009",
                                    "display": "Healthcare professional (occupation)",
                                }
                            ]
                        }
                    ],
                    "member": _ref(practitioner),
                },
            ],
            "managingOrganization": [_ref(organization)],
        }
    )
    resources.append(
        {
            "resourceType": "Provenance",
            "id": make.uuid(),
            "target": [_ref(r) for r in resources],
            "recorded": _instant(first),
            "agent": [
                {
                    "type": {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                                "code": "author",
                            }
                        ]
                    },
                    "who": _ref(practitioner),
                    "onBehalfOf": _ref(organization),
                }
            ],
        }
    )
    return {"resourceType": "Bundle", "type": "transaction", "entry": [_entry(r) for r in resources]}


def _observation(
    make: _Maker,
    code: str,
    display: str,
    unit: str,
    value: float,
    category: str,
    subject: dict,
    encounter: dict,
    when: datetime,
) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": make.uuid(),
        "status": "final",
        "category": [{"coding": [{"system": OBSERVATION_CATEGORY, "code": category, "display": category}]}],
        "code": {"coding": [{"system": LOINC, "code": code, "display": display}], "text": display},
        "subject": subject,
        "encounter": _ref(encounter),
        "effectiveDateTime": _instant(when),
        "issued": when.isoformat(timespec="milliseconds"),
        "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit},
    }


def _claim(
    make: _Maker,
    subject: dict,
    organization: dict,
    encounter: dict | None,
    when: datetime,
    items: list[dict],
    prescription: dict | None = None,
) -> dict[str, Any]:
    claim: dict[str, Any] = {
        "resourceType": "Claim",
        "id": make.uuid(),
        "status": "active",
        "type": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/claim-type",
                    "code": "pharmacy" if prescription else "institutional",
                }
            ]
        },
        "use": "claim",
        "patient": subject,
        "billablePeriod": {"start": _instant(when), "end": _instant(when + timedelta(minutes=30))},
        "created": _instant(when + timedelta(minutes=30)),
        "provider": _ref(organization),
        "priority": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/processpriority", "code": "normal"}]},
        "insurance": [{"sequence": 1, "focal": True, "coverage": {"display": "Medicaid"}}],
        "item": [
            {
                "sequence": 1,
                "productOrService": {
                    "coding": [{"system": SNOMED, "code": "185349003", "display": "Encounter for check up"}]
                },
            }
        ],
        "total": {"value": make.number(50, 900, 2), "currency": "USD"},
    }
    if encounter:
        claim["item"][0]["encounter"] = [_ref(encounter)]
    procedures = [r for r in items if r["resourceType"] == "Procedure"]
    diagnoses = [r for r in items if r["resourceType"] == "Condition"]
    if procedures:
        claim["procedure"] = [{"sequence": n + 1, "procedureReference": _ref(r)} for n, r in enumerate(procedures)]
    if diagnoses:
        claim["diagnosis"] = [{"sequence": n + 1, "diagnosisReference": _ref(r)} for n, r in enumerate(diagnoses)]
    if prescription:
        claim["prescription"] = _ref(prescription)
    return claim


def _explanation_of_benefit(
    make: _Maker, subject: dict, organization: dict, practitioner: dict, claim: dict, when: datetime
) -> dict[str, Any]:
    return {
        "resourceType": "ExplanationOfBenefit",
        "id": make.uuid(),
        "status": "active",
        "identifier": [{"system": "https://bluebutton.cms.gov/resources/variables/clm_id", "value": claim["id"]}],
        "type": claim["type"],
        "use": "claim",
        "patient": subject,
        "billablePeriod": claim["billablePeriod"],
        "created": claim["created"],
        "insurer": {"display": "Medicaid"},
        "provider": _ref(practitioner),
        "claim": _ref(claim),
        "outcome": "complete",
        "insurance": [{"focal": True, "coverage": {"display": "Medicaid"}}],
        "total": [
            {
                "category": {
                    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/adjudication", "code": "submitted"}]
                },
                "amount": claim["total"],
            }
        ],
        "payment": {"amount": {"value": 0.0, "currency": "USD"}},
        "facility": _ref(organization),
    }


def resources_of(bundle: dict[str, Any], resource_type: str | None = None) -> list[dict[str, Any]]:
    return [
        e["resource"]
        for e in bundle["entry"]
        if resource_type is None or e["resource"]["resourceType"] == resource_type
    ]


def counts(bundle: dict[str, Any]) -> Counter:
    return Counter(e["resource"]["resourceType"] for e in bundle["entry"])


def kept_part(bundle: dict[str, Any], kept_types: tuple[str, ...]) -> dict[str, Any]:
    """The transaction cut down to the given types, references to the entries left out removed."""
    kept = [e for e in bundle["entry"] if e["resource"]["resourceType"] in kept_types]
    urls = {e["fullUrl"] for e in kept}

    def dangling(value: Any) -> bool:
        return (
            isinstance(value, dict)
            and str(value.get("reference", "")).startswith("urn:")
            and value["reference"] not in urls
        )

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if not dangling(v)}
        if isinstance(value, list):
            return [strip(v) for v in value if not dangling(v)]
        return value

    return {**bundle, "entry": [strip(e) for e in kept]}
