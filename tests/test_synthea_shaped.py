"""The generated Synthea-shaped Bundles (tests/synthea_shaped.py) are what the tests take them for: valid R4,
shaped like a Synthea export, readable by the study's mappings, and accepted by the FHIR door where the
types are kept."""

import json
import re

import pytest
from fhir.resources.R4B.bundle import Bundle

from ecrf.fhir.validation import WRITABLE_TYPES
from study_model.loader import default_study_dir, load_study
from fhir_mappings.mapping import resource_to_items
from tests.fhir_builders import FHIR_JSON
from tests.samples import GENERATED_BUNDLES
from tests.synthea_shaped import counts, kept_part, patient_bundle, resources_of

URN = re.compile(r"^urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
SYNTHEA_TYPES = {
    "Patient",
    "Encounter",
    "Claim",
    "ExplanationOfBenefit",
    "CareTeam",
    "Provenance",
    "DiagnosticReport",
    "MedicationRequest",
    "ImagingStudy",
    "Observation",
    "Condition",
    "Procedure",
    "Immunization",
    "Organization",
    "Practitioner",
}


def _references(value):
    if isinstance(value, dict):
        if isinstance(value.get("reference"), str):
            yield value["reference"]
        for inner in value.values():
            yield from _references(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from _references(inner)


@pytest.mark.parametrize("name", list(GENERATED_BUNDLES))
def test_a_generated_bundle_is_valid_r4b(name):
    Bundle.model_validate(GENERATED_BUNDLES[name])


@pytest.mark.parametrize("name", list(GENERATED_BUNDLES))
def test_a_generated_bundle_is_shaped_like_a_synthea_export(name):
    bundle = GENERATED_BUNDLES[name]
    assert bundle["type"] == "transaction"
    urls = [entry["fullUrl"] for entry in bundle["entry"]]
    assert len(set(urls)) == len(urls) and all(URN.match(url) for url in urls)
    for entry in bundle["entry"]:
        assert entry["request"] == {"method": "POST", "url": entry["resource"]["resourceType"]}
        assert entry["fullUrl"] == f"urn:uuid:{entry['resource']['id']}"
        for reference in _references(entry["resource"]):
            assert reference in urls, (entry["resource"]["resourceType"], reference)
    assert set(counts(bundle)) == SYNTHEA_TYPES
    (patient,) = resources_of(bundle, "Patient")
    systems = {identifier["system"] for identifier in patient["identifier"]}
    assert {"http://hl7.org/fhir/sid/us-ssn", "http://hospital.smarthealthit.org"} <= systems
    assert patient["name"][0]["given"] and patient["telecom"] and patient["address"][0]["line"]
    encounters = counts(bundle)["Encounter"]
    assert counts(bundle)["ExplanationOfBenefit"] == encounters
    assert counts(bundle)["Claim"] == encounters + counts(bundle)["MedicationRequest"]
    (provenance,) = resources_of(bundle, "Provenance")
    assert len(provenance["target"]) == len(bundle["entry"]) - 1


def test_the_same_seed_makes_the_same_bundle_and_another_seed_another():
    assert json.dumps(patient_bundle(7)) == json.dumps(patient_bundle(7))
    assert resources_of(patient_bundle(7), "Patient") != resources_of(patient_bundle(8), "Patient")
    assert counts(patient_bundle(5, encounters=3, medications=2))["Encounter"] == 3


def test_the_study_reads_its_labs_and_vitals_from_a_generated_bundle():
    study = load_study(default_study_dir())
    bundle = patient_bundle(11, encounters=2)
    found = {}
    for observation in resources_of(bundle, "Observation"):
        for value in resource_to_items(study, observation):
            assert value.error is None, value
            found.setdefault(value.item_id, []).append(value)
    assert set(found) == {"hemoglobin", "platelets", "ast", "alt", "bilirubin", "albumin", "weight", "height"}
    assert all(len(values) == 2 for values in found.values())
    (patient,) = resources_of(bundle, "Patient")
    assert {v.item_id for v in resource_to_items(study, patient)} == {"birth_date", "sex"}


def test_the_fhir_door_keeps_the_kept_types_of_a_generated_patient(server):
    bundle = patient_bundle(21, encounters=2, medications=1)
    part = kept_part(bundle, WRITABLE_TYPES)
    # v2 (issue 12): the study keeps Encounter, MedicationRequest and DiagnosticReport too (forms/study.yaml)
    assert set(counts(part)) == {
        "Patient",
        "Observation",
        "Condition",
        "Procedure",
        "Immunization",
        "Encounter",
        "MedicationRequest",
        "DiagnosticReport",
    }
    with server.client("ehr", "S01", sub="synthea-shaped") as http:
        reply = http.post("/fhir", json=part, headers=FHIR_JSON)
        assert reply.status_code == 200, reply.text[:2000]
        statuses = [entry["response"]["status"] for entry in reply.json()["entry"]]
        assert statuses == ["201 Created"] * len(part["entry"])
        patient_id = reply.json()["entry"][0]["response"]["location"].split("/")[1]
        labs = http.get("/fhir/Observation", params={"subject": f"Patient/{patient_id}", "code": "718-7"})
        assert labs.status_code == 200 and labs.json()["total"] == 2
        whole = http.post("/fhir", json=bundle, headers=FHIR_JSON)  # v2: the whole Bundle goes in as sent
    assert whole.status_code == 200, whole.text[:2000]
    held = {
        e["response"]["outcome"]["issue"][0]["diagnostics"].split(" ", 1)[0]
        for e in whole.json()["entry"]
        if "location" not in e["response"]
    }
    assert held == set(counts(bundle)) - set(counts(part))  # each type not kept is named, and only those
