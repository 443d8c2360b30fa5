"""Units, both mapping directions and the Questionnaire, on the real NCT04163237 definition."""

from __future__ import annotations

import json
from datetime import date
from decimal import Decimal
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class

from ecrf.responses import dumps  # the one Decimal-exact encoder, the one the store writes resources with
from study_model.loader import default_study_dir, load_study
from study_model.definitions import StudyDef
from fhir_mappings.mapping import (
    ItemValue,
    form_to_questionnaire,
    form_to_resources,
    resource_to_items,
)
from study_model.units import UnitError, is_ucum_like, resolve_unit, to_canonical
from tests.samples import GENERATED_BUNDLES, hl7_cases, load_case, needs_shared, shared_json
from tests.synthea_shaped import resources_of

UCUM = "http://unitsofmeasure.org"
LOCAL = "http://example.org/fhir/CodeSystem/nct04163237"
PATIENT = "Patient/p-001"


@pytest.fixture(scope="module")
def study() -> StudyDef:
    return load_study(default_study_dir())


def validate_r4b(resource: dict[str, Any]) -> None:
    get_fhir_model_class(resource["resourceType"]).model_validate(json.loads(dumps(resource)))


# --- units --------------------------------------------------------------------------------

# (item, unit, exact factor to the canonical unit) straight from CRF-SPEC section 3
SPEC_FACTORS = [
    ("weight", "kg", "1"),
    ("weight", "[lb_av]", "0.45359237"),
    ("height", "cm", "1"),
    ("height", "[in_i]", "2.54"),
    ("anc", "10*9/L", "1"),
    ("anc", "10*3/uL", "1"),
    ("anc", "/uL", "0.001"),
    ("platelets", "10*9/L", "1"),
    ("platelets", "10*3/uL", "1"),
    ("platelets", "/uL", "0.001"),
    ("hemoglobin", "g/L", "1"),
    ("hemoglobin", "g/dL", "10"),
    ("creatinine", "umol/L", "1"),
    ("creatinine", "mg/dL", "88.4"),
    ("creatinine_uln", "mg/dL", "88.4"),
    ("crcl", "mL/min", "1"),
    ("crcl", "mL/s", "60"),
    ("ast", "U/L", "1"),
    ("ast", "[IU]/L", "1"),
    ("ast", "ukat/L", "60"),
    ("alt", "U/L", "1"),
    ("alt", "[IU]/L", "1"),
    ("alt", "ukat/L", "60"),
    ("bilirubin", "umol/L", "1"),
    ("bilirubin", "mg/dL", "17.1"),
    ("albumin", "g/L", "1"),
    ("albumin", "g/dL", "10"),
    ("inr", "{INR}", "1"),
    ("inr", "1", "1"),
    ("inr", "{ratio}", "1"),
    ("aptt", "s", "1"),
    ("closest_margin", "mm", "1"),
    ("closest_margin", "cm", "10"),
    ("tumour_size", "cm", "1"),
    ("tumour_size", "mm", "0.1"),
    ("afp", "ug/L", "1"),
    ("afp", "ng/mL", "1"),
    ("afp", "[IU]/mL", "1.21"),
    ("blood_volume", "mL", "1"),
]


@pytest.mark.parametrize("item_id, unit, factor", SPEC_FACTORS)
def test_exact_factor(study: StudyDef, item_id: str, unit: str, factor: str) -> None:
    item = study.item(item_id)[1]
    assert to_canonical(item, Decimal(1), unit) == Decimal(factor)
    assert to_canonical(item, "3.7", unit) == Decimal("3.7") * Decimal(factor)


def test_conversions_are_exact_decimals(study: StudyDef) -> None:
    assert to_canonical(study.item("weight")[1], 150, "[lb_av]") == Decimal("68.03885550")
    assert to_canonical(study.item("weight")[1], 1, "[lb_av]") == Decimal("0.45359237")
    assert to_canonical(study.item("afp")[1], 1, "[IU]/mL") == Decimal("1.21")
    assert to_canonical(study.item("ast")[1], 1, "ukat/L") == Decimal("60")
    assert to_canonical(study.item("platelets")[1], 1, "/uL") == Decimal("0.001")
    assert to_canonical(study.item("afp")[1], 0.1, "[IU]/mL") == Decimal("0.121")
    assert to_canonical(study.item("hemoglobin")[1], "9.0", None) == Decimal("9.0")


@pytest.mark.parametrize(
    "item_id, legacy, factor, ucum",
    [
        ("platelets", "K/uL", "1", "10*3/uL"),
        ("anc", "x10^9/L", "1", "10*9/L"),
        ("anc", "10E9/L", "1", "10*9/L"),
        ("hemoglobin", "g/dl", "10", "g/dL"),
        ("hemoglobin", "G/DL", "10", "g/dL"),
        ("afp", "ng/ml", "1", "ng/mL"),
        ("afp", "IU/mL", "1.21", "[IU]/mL"),
        ("ast", "IU/L", "1", "[IU]/L"),
        ("creatinine", "mg/dl", "88.4", "mg/dL"),
        ("bilirubin", "µmol/L", "1", "umol/L"),
        ("bilirubin", "μmol/l", "1", "umol/L"),
        ("crcl", "ml/min", "1", "mL/min"),
        ("weight", "lbs", "0.45359237", "[lb_av]"),
        ("aptt", "sec", "1", "s"),
        ("inr", "INR", "1", "{INR}"),
        ("ctc_count", "cells", "1", "{cells}"),
    ],
)
def test_legacy_spellings(study: StudyDef, item_id: str, legacy: str, factor: str, ucum: str) -> None:
    item = study.item(item_id)[1]
    assert to_canonical(item, 1, legacy) == Decimal(factor)
    assert resolve_unit(item, legacy).ucum == ucum


@pytest.mark.parametrize(
    "item_id, unit",
    [
        ("hemoglobin", "mmol/L"),
        ("hemoglobin", "K/uL"),
        ("platelets", "%"),
        ("afp", "U/L"),
        ("creatinine", "mg/L"),
        ("weight", "st"),
        ("ecog", "kg"),
    ],
)
def test_unknown_units_are_refused(study: StudyDef, item_id: str, unit: str) -> None:
    with pytest.raises(UnitError):
        to_canonical(study.item(item_id)[1], 1, unit)


def test_non_numbers_are_refused(study: StudyDef) -> None:
    with pytest.raises(UnitError):
        to_canonical(study.item("hemoglobin")[1], "twelve", "g/dL")


@pytest.mark.parametrize(
    "unit, valid",
    [
        ("10*9/L", True),
        ("/uL", True),
        ("[IU]/mL", True),
        ("{INR}", True),
        ("ukat/L", True),
        ("mL/min/{1.73_m2}", True),
        ("[lb_av]", True),
        ("mm[Hg]", True),
        ("1", True),
        ("IU/L", False),
        ("x10^9/L", False),
        ("cells/uL", False),
        ("mcg/L", False),
        ("", False),
        ("g //L", False),
        ("10E9/L", False),
    ],
)
def test_ucum_syntax_check(unit: str, valid: bool) -> None:
    assert is_ucum_like(unit) is valid


# --- form -> resources -> items -----------------------------------------------------------

ENTRIES: dict[str, dict[str, Any]] = {
    "demographics": {
        "birth_date": date(1960, 5, 17),
        "sex": "female",
        "consent_date": date(2024, 2, 1),
        "weight": {"value": Decimal("150"), "unit": "[lb_av]"},
        "height": {"value": "65", "unit": "[in_i]"},
        "wocbp": True,
        "contraception_agreed": True,
        "tissue_consent": True,
    },
    "baseline": {
        "ecog": 1,
        "child_pugh_class": "A",
        "ascites": "none",
        "encephalopathy": "grade1_2",
        "bclc_stage": "A",
        "distant_metastasis": False,
        "regional_lymph_nodes": True,
        "prior_antitumour_therapy": False,
        "recurrent_hcc": False,
    },
    "labs": {
        "anc": {"value": "2100", "unit": "/uL"},
        "platelets": {"value": 150, "unit": "K/uL"},
        "hemoglobin": {"value": "12.5", "unit": "g/dl"},
        "creatinine": {"value": "0.9", "unit": "mg/dL"},
        "creatinine_uln": {"value": "1.1", "unit": "mg/dL"},
        "crcl": {"value": "1.2", "unit": "mL/s"},
        "ast": {"value": "0.5", "unit": "ukat/L"},
        "ast_uln": 40,
        "alt": {"value": 35, "unit": "IU/L"},
        "alt_uln": {"value": 50, "unit": "[IU]/L"},
        "bilirubin": {"value": "1.1", "unit": "mg/dl"},
        "bilirubin_uln": Decimal("21"),
        "albumin": {"value": "4.1", "unit": "g/dL"},
        "inr": {"value": "1.1", "unit": "1"},
        "inr_uln": {"value": "1.2", "unit": "{ratio}"},
        "aptt": Decimal("30.5"),
        "aptt_uln": {"value": 36, "unit": "sec"},
    },
    "surgery": {"surgery_date": date(2024, 1, 10), "resection_type": "non_anatomical", "visible_tumour_thrombus": True},
    "pathology": {
        "histology": "8170/3",
        "margin_status": "R1",
        "closest_margin": {"value": "0.5", "unit": "cm"},
        "tumour_size": {"value": 45, "unit": "mm"},
        "tumour_count": 2,
        "microvascular_invasion": "M1",
        "pvtt_extent": "Vp2",
        "bile_duct_invasion": False,
        "capsule_complete": True,
        "lymph_node_metastasis": False,
    },
    "afp": {"afp": {"value": "250", "unit": "[IU]/mL"}},
    "ctc": {"ctc_count": 3, "blood_volume": {"value": "7.5", "unit": "mL"}, "method": "other"},
    "history": {
        "autoimmune_disease": False,
        "chronic_kidney_disease": False,
        "congestive_heart_failure": True,
        "mi_date": date(2023, 6, 1),
        "uncontrolled_diabetes": False,
        "uncontrolled_hypertension": False,
        "uncontrolled_infection": False,
        "neuropathy_grade2_plus": False,
        "significant_abnormality": False,
        "vaccine_date": date(2024, 1, 20),
        "steroid_gt10mg_14d": False,
        "immunosuppressant_14d": False,
        "anticoagulant_prophylaxis": True,
        "antitumour_therapy_1m_postop": False,
    },
    "randomisation": {"arm": "SORA", "randomisation_date": date(2024, 2, 10)},
    "exposure": {
        "drug": "pd1",
        "start_date": date(2024, 3, 1),
        "end_date": date(2024, 3, 1),
        "dose": {"value": "200", "unit": "mg"},
        "route": "iv",
        "frequency": "q3w",
        "modification": "reduced",
        "modification_reason": "adverse_event",
    },
    "adverse_event": {
        "ctcae_term": "other",
        "term_verbatim": "itchy scalp",
        "onset_date": date(2024, 3, 1),
        "resolution_date": date(2024, 3, 9),
        "grade": 3,
        "serious": True,
        "seriousness_criteria": ["hospitalisation", "other_important"],
        "related_pd1": "related",
        "related_sorafenib": "not_related",
        "immune_related": False,
        "action_taken": "interrupted",
        "outcome": "recovered",
    },
    "conmed": {
        "medication": "Omeprazole 20 mg",
        "atc": "A",
        "indication": "gastric protection",
        "start_date": date(2024, 2, 20),
        "end_date": date(2024, 3, 20),
        "ongoing": False,
    },
    "disease_assessment": {
        "status": "recurrence",
        "assessment_date": date(2024, 5, 2),
        "method": "mri",
        "recurrence_site": "both",
        "recurrence_date": date(2024, 4, 28),
    },
    "end_of_study": {
        "status": "died",
        "end_date": date(2024, 9, 1),
        "death_date": date(2024, 8, 30),
        "cause_of_death": "disease_recurrence",
        "last_known_alive_date": date(2024, 8, 29),
    },
}

VISIT_DATE = date(2024, 2, 5)


def test_every_form_has_a_sample_entry(study: StudyDef) -> None:
    assert set(ENTRIES) == {form.id for form in study.forms}
    for form in study.forms:
        missing = {i.id for i in form.items if i.derived is None} - set(ENTRIES[form.id])
        assert not missing, f"{form.id}: {missing}"


def expected_canonical(study: StudyDef, form_id: str) -> dict[str, Any]:
    expected = {}
    for item_id, value in ENTRIES[form_id].items():
        item = study.form(form_id).item(item_id)
        if item.type == "quantity":
            amount, unit = (value["value"], value["unit"]) if isinstance(value, dict) else (value, None)
            expected[item_id] = to_canonical(item, amount, unit)
        else:
            expected[item_id] = value
    return expected


def all_resources(study: StudyDef, form_id: str) -> list[dict[str, Any]]:
    written = form_to_resources(study, form_id, ENTRIES[form_id], patient_ref=PATIENT, visit_date=VISIT_DATE)
    resources = [resource for _, resource in written.resources]
    if written.patient_patch:
        resources.append({"resourceType": "Patient", "id": "p-001", **written.patient_patch})
    if written.research_subject_patch:
        resources.append(
            {
                "resourceType": "ResearchSubject",
                "status": "on-study",
                "study": {"reference": f"ResearchStudy/{study.id}"},
                "individual": {"reference": PATIENT},
                **written.research_subject_patch,
            }
        )
    return resources


def read_back(study: StudyDef, resources: list[dict[str, Any]]) -> dict[str, ItemValue]:
    found: dict[str, ItemValue] = {}
    for resource in resources:
        for value in resource_to_items(study, resource):
            assert value.item_id not in found, f"{value.item_id} read twice"
            found[value.item_id] = value
    return found


@pytest.mark.parametrize("form_id", list(ENTRIES))
def test_every_resource_validates_with_r4b(study: StudyDef, form_id: str) -> None:
    resources = all_resources(study, form_id)
    assert resources
    for resource in resources:
        validate_r4b(resource)


@pytest.mark.parametrize("form_id", list(ENTRIES))
def test_round_trip_to_the_same_canonical_values(study: StudyDef, form_id: str) -> None:
    found = read_back(study, all_resources(study, form_id))
    for item_id, expected in expected_canonical(study, form_id).items():
        assert item_id in found, item_id
        assert found[item_id].error is None, found[item_id]
        assert found[item_id].value == expected, item_id
        assert found[item_id].form_id == form_id


@pytest.mark.parametrize("form_id", list(ENTRIES))
def test_round_trip_through_json_text(study: StudyDef, form_id: str) -> None:
    resources = [json.loads(dumps(r), parse_float=Decimal) for r in all_resources(study, form_id)]
    found = read_back(study, resources)
    for item_id, expected in expected_canonical(study, form_id).items():
        assert found[item_id].value == expected, item_id


def test_slots_are_unique_and_stable(study: StudyDef) -> None:
    for form_id in ENTRIES:
        first = form_to_resources(study, form_id, ENTRIES[form_id], patient_ref=PATIENT, visit_date=VISIT_DATE)
        again = form_to_resources(study, form_id, ENTRIES[form_id], patient_ref=PATIENT, visit_date=VISIT_DATE)
        slots = [slot for slot, _ in first.resources]
        assert len(slots) == len(set(slots))
        assert slots == [slot for slot, _ in again.resources]
        assert first.resources == again.resources


def _written(study: StudyDef, form_id: str, items: dict[str, Any] | None = None):
    return form_to_resources(
        study, form_id, items if items is not None else ENTRIES[form_id], patient_ref=PATIENT, visit_date=VISIT_DATE
    )


def test_quantity_keeps_the_entered_value_and_the_canonical_one(study: StudyDef) -> None:
    slots = dict(_written(study, "labs").resources)
    hemoglobin = slots["hemoglobin"]
    assert hemoglobin["status"] == "final"
    assert hemoglobin["subject"] == {"reference": PATIENT}
    assert hemoglobin["effectiveDateTime"] == "2024-02-05"
    assert hemoglobin["category"][0]["coding"][0]["code"] == "laboratory"
    quantity = hemoglobin["valueQuantity"]
    assert (quantity["value"], quantity["unit"], quantity["system"], quantity["code"]) == (
        Decimal("12.5"),
        "g/dl",
        UCUM,
        "g/dL",
    )
    canonical = quantity["extension"][0]
    assert canonical["url"] == study.canonical_quantity_extension
    assert canonical["valueQuantity"]["value"] == Decimal("125.0")
    assert canonical["valueQuantity"]["code"] == "g/L"


def test_uln_goes_to_reference_range_high_of_the_same_observation(study: StudyDef) -> None:
    written = _written(study, "labs")
    slots = dict(written.resources)
    assert "creatinine_uln" not in slots
    high = slots["creatinine"]["referenceRange"][0]["high"]
    assert (high["value"], high["code"]) == (Decimal("1.1"), "mg/dL")
    value = next(v for v in resource_to_items(study, slots["creatinine"]) if v.item_id == "creatinine")
    assert value.uln == Decimal("1.1") * Decimal("88.4")
    assert value.value == Decimal("0.9") * Decimal("88.4")


def test_uln_without_its_base_value_is_dropped(study: StudyDef) -> None:
    written = _written(study, "labs", {"ast_uln": 40})
    assert written.resources == [] and written.dropped == ["ast_uln"]


def test_code_items_use_the_local_item_value_code(study: StudyDef) -> None:
    baseline = dict(_written(study, "baseline").resources)
    pathology = dict(_written(study, "pathology").resources)
    assert baseline["bclc_stage"]["code"]["coding"][0]["code"] == "C115134"
    assert baseline["bclc_stage"]["valueCodeableConcept"]["coding"][0] == {
        "system": LOCAL,
        "code": "bclc_stage-A",
        "display": "A",
    }
    assert pathology["margin_status"]["valueCodeableConcept"]["coding"][0]["code"] == "margin_status-R1"
    assert pathology["pvtt_extent"]["valueCodeableConcept"]["coding"][0]["code"] == "pvtt_extent-Vp2"
    assert baseline["ecog"]["valueInteger"] == 1
    assert baseline["distant_metastasis"]["valueBoolean"] is False


def test_histology_is_a_condition_with_icdo3_morphology(study: StudyDef) -> None:
    for morphology, icd10 in (("8170/3", "C22.0"), ("8160/3", "C22.1"), ("8180/3", "C22.0")):
        written = _written(study, "pathology", {**ENTRIES["pathology"], "histology": morphology})
        condition = dict(written.conditions)["histology"]
        assert condition["code"]["coding"][0]["code"] == icd10
        assert condition["code"]["coding"][0]["system"] == "http://hl7.org/fhir/sid/icd-10"
        extension = condition["extension"][0]
        assert extension["url"] == (
            "http://hl7.org/fhir/us/mcode/StructureDefinition/mcode-histology-morphology-behavior"
        )
        assert extension["valueCodeableConcept"]["coding"][0] == {
            "system": "http://terminology.hl7.org/CodeSystem/icd-o-3",
            "code": morphology,
        }
        validate_r4b(condition)


def test_surgery_is_a_completed_procedure(study: StudyDef) -> None:
    written = _written(study, "surgery")
    procedure = dict(written.procedures)["surgery_date"]
    assert procedure["status"] == "completed"
    assert procedure["performedDateTime"] == "2024-01-10"
    assert [c["code"] for c in procedure["code"]["coding"]] == ["hepatectomy", "hepatectomy-non-anatomical"]
    assert dict(written.observations)["visible_tumour_thrombus"]["valueBoolean"] is True


def test_patient_and_research_subject_patches(study: StudyDef) -> None:
    demographics = _written(study, "demographics")
    assert demographics.patient_patch == {"birthDate": "1960-05-17", "gender": "female"}
    assert demographics.research_subject_patch == {"period": {"start": "2024-02-01"}}
    assert _written(study, "randomisation").research_subject_patch == {"assignedArm": "SORA"}


@pytest.mark.parametrize(
    "count, volume, status",
    [
        (0, None, "NEG"),
        (1, None, "POS"),
        (1, "5", "POS"),
        (1, "7.5", "NEG"),
        (2, "7.5", "POS"),
        (1, "5.01", "NEG"),
        (1, "4", "POS"),
    ],
)
def test_ctc_status_is_one_cell_per_5_ml(study: StudyDef, count: int, volume: str | None, status: str) -> None:
    entry: dict[str, Any] = {"ctc_count": count}
    if volume is not None:
        entry["blood_volume"] = {"value": volume, "unit": "mL"}
    observation = dict(_written(study, "ctc", entry).resources)["ctc_count"]
    validate_r4b(observation)
    assert observation["interpretation"][0]["coding"][0] == {
        "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
        "code": status,
        "display": "Positive" if status == "POS" else "Negative",
    }
    assert observation["valueQuantity"]["code"] == "{cells}"
    component = observation["component"][0]
    assert component["code"]["coding"][0]["code"] == "analysed-volume"
    assert component["valueQuantity"]["value"] == (Decimal(volume) if volume else 5)
    assert observation["method"]["coding"][0]["code"] == "ctc-method-neg_enrichment_tpcr"


def test_exposure_drug_chooses_the_resource_and_the_paths(study: StudyDef) -> None:
    """pd1: one MedicationAdministration per infusion (effectiveDateTime = start date); sorafenib: a
    MedicationStatement with effectivePeriod and dosage timing; both read back to the same items."""
    [(slot, infusion)] = _written(study, "exposure").resources
    assert slot == "drug" and infusion["resourceType"] == "MedicationAdministration"
    assert infusion["medicationCodeableConcept"]["coding"][0]["code"] == "pd1-antibody"
    assert infusion["effectiveDateTime"] == "2024-03-01" and "effectivePeriod" not in infusion
    assert infusion["dosage"]["route"]["coding"][0]["code"] == "route-iv"
    assert infusion["dosage"]["dose"]["code"] == "mg"
    sorafenib = {
        "drug": "sorafenib",
        "start_date": date(2024, 3, 1),
        "end_date": date(2024, 6, 1),
        "dose": 400,
        "route": "oral",
        "frequency": "bid",
        "modification": "none",
    }
    [(_, statement)] = _written(study, "exposure", sorafenib).resources
    validate_r4b(statement)
    assert statement["resourceType"] == "MedicationStatement"
    assert statement["medicationCodeableConcept"]["coding"][0] == {
        "system": LOCAL,
        "code": "sorafenib",
        "display": "Sorafenib",
    }
    assert statement["effectivePeriod"] == {"start": "2024-03-01", "end": "2024-06-01"}
    dosage = statement["dosage"][0]
    assert dosage["doseAndRate"][0]["doseQuantity"]["value"] == 400
    assert dosage["route"]["coding"][0]["code"] == "route-oral"
    assert dosage["timing"]["code"]["coding"][0]["code"] == "frequency-bid"
    found = read_back(study, [json.loads(dumps(statement), parse_float=Decimal)])
    assert {item_id: v.value for item_id, v in found.items()} == {**sorafenib, "dose": Decimal(400)}
    assert {v.form_id for v in found.values()} == {"exposure"}  # not conmed: no verbatim name
    # a pd1 value in a MedicationStatement is no exposure entry (pd1 writes a MedicationAdministration)
    wrong = {**statement, "medicationCodeableConcept": infusion["medicationCodeableConcept"]}
    assert resource_to_items(study, wrong) == []


def test_relatedness_is_a_suspect_entity_with_its_causality(study: StudyDef) -> None:
    """CRF-SPEC 7.2: related_pd1 / related_sorafenib are AdverseEvent.suspectEntity entries, each naming its drug
    (extension suspect-medication), its instance a contained Medication of the drug until the eCRF door points it
    at the subject's exposure resource, causality.assessment LOCAL#related / not-related; no local extensions."""
    [(_, event)] = _written(study, "adverse_event").resources
    validate_r4b(event)
    assert not [e for e in event["extension"] if "related-" in e["url"]]
    by_drug = {
        entity["extension"][0]["valueCodeableConcept"]["coding"][0]["code"]: entity for entity in event["suspectEntity"]
    }
    assert set(by_drug) == {"pd1-antibody", "sorafenib"}
    assert by_drug["pd1-antibody"]["extension"][0]["url"] == study.extension_url("suspect-medication")
    assert by_drug["pd1-antibody"]["instance"] == {"reference": "#pd1-antibody"}
    assert by_drug["pd1-antibody"]["causality"][0]["assessment"]["coding"][0]["code"] == "related"
    assert by_drug["sorafenib"]["causality"][0]["assessment"]["coding"][0]["code"] == "not-related"
    assert {(c["resourceType"], c["id"], c["code"]["coding"][0]["code"]) for c in event["contained"]} == {
        ("Medication", "pd1-antibody", "pd1-antibody"),
        ("Medication", "sorafenib", "sorafenib"),
    }
    # pointed at exposure resources (as the eCRF door does), the drugs are still told apart by the extension
    linked = json.loads(dumps(event))
    for entity, reference in zip(linked["suspectEntity"], ("MedicationAdministration/a", "MedicationStatement/b")):
        entity["instance"] = {"reference": reference}
    del linked["contained"]
    validate_r4b(linked)
    values = {v.item_id: v.value for v in resource_to_items(study, linked)}
    assert (values["related_pd1"], values["related_sorafenib"]) == ("related", "not_related")
    # an EHR's suspect entity naming only a contained Medication of the drug reads too
    ehr = json.loads(dumps(event))
    for entity in ehr["suspectEntity"]:
        del entity["extension"]
    values = {v.item_id: v.value for v in resource_to_items(study, ehr)}
    assert (values["related_pd1"], values["related_sorafenib"]) == ("related", "not_related")
    # a version written before suspectEntity (local extensions related-pd1 / related-sorafenib) still reads
    old = {key: value for key, value in json.loads(dumps(event)).items() if key not in ("suspectEntity", "contained")}
    old["extension"] = [
        *old["extension"],
        *(
            {
                "url": study.extension_url(f"related-{drug}"),
                "valueCodeableConcept": {"coding": [{"system": LOCAL, "code": code}]},
            }
            for drug, code in (("pd1", "not-related"), ("sorafenib", "related"))
        ),
    ]
    values = {v.item_id: v.value for v in resource_to_items(study, old)}
    assert (values["related_pd1"], values["related_sorafenib"]) == ("not_related", "related")


# --- EHR-shaped resources -----------------------------------------------------------------

# Each Synthea case runs on a generated Synthea-shaped Bundle, and on the shared Synthea export it stands in
# for when ../shared is there (tests/samples.py).
TOM = "synthea/Tom_Goodwin_e20de9eb-6f2d-4871-a43f-bbede53293ed.json"
LIKE_TOM = [
    pytest.param("synthea-shaped-1968-male", id="generated"),
    pytest.param(TOM, id="shared-Tom_Goodwin", marks=needs_shared),
]


def _bundle_resources(name: str) -> list[dict[str, Any]]:
    bundle = GENERATED_BUNDLES[name] if name in GENERATED_BUNDLES else shared_json(name)
    return resources_of(bundle)


def _observations_with(resources: list[dict[str, Any]], code: str) -> list[dict[str, Any]]:
    return [
        r
        for r in resources
        if r["resourceType"] == "Observation" and any(c.get("code") == code for c in r["code"].get("coding", []))
    ]


@pytest.mark.parametrize(
    "bundle",
    [
        *(pytest.param(name, id=name) for name in GENERATED_BUNDLES),
        pytest.param(TOM, id="shared-Tom_Goodwin", marks=needs_shared),
        pytest.param("synthea/fa4fda35-5bfc-e2e3-d317-3f912f954289.json", id="shared-fa4fda35", marks=needs_shared),
    ],
)
def test_synthea_hemoglobin_in_g_per_dl(study: StudyDef, bundle: str) -> None:
    observations = _observations_with(_bundle_resources(bundle), "718-7")
    assert observations
    for observation in observations:
        (value,) = resource_to_items(study, observation)
        quantity = observation["valueQuantity"]
        assert quantity["code"] == "g/dL"
        assert (value.form_id, value.item_id, value.error) == ("labs", "hemoglobin", None)
        assert value.value == Decimal(str(quantity["value"])) * 10
        assert (value.unit, value.original_unit) == ("g/L", quantity["unit"])
        assert value.effective is not None and value.effective.isoformat().startswith(
            observation["effectiveDateTime"][:10]
        )


@pytest.mark.parametrize("bundle", LIKE_TOM)
def test_synthea_platelets_and_chemistry(study: StudyDef, bundle: str) -> None:
    resources = _bundle_resources(bundle)
    expectations = {
        "777-3": ("platelets", "1"),
        "1920-8": ("ast", "1"),
        "1742-6": ("alt", "1"),
        "1975-2": ("bilirubin", "17.1"),
    }
    for code, (item_id, factor) in expectations.items():
        observations = _observations_with(resources, code)
        assert observations, code
        for observation in observations:
            (value,) = resource_to_items(study, observation)
            assert value.item_id == item_id and value.error is None
            assert value.value == Decimal(str(observation["valueQuantity"]["value"])) * Decimal(factor)


@pytest.mark.parametrize("bundle", LIKE_TOM)
def test_synthea_creatinine_in_blood_is_not_serum_creatinine(study: StudyDef, bundle: str) -> None:
    observations = _observations_with(_bundle_resources(bundle), "38483-4")
    assert observations
    assert all(resource_to_items(study, o) == [] for o in observations)


@pytest.mark.parametrize("bundle", LIKE_TOM)
def test_synthea_patient(study: StudyDef, bundle: str) -> None:
    patient = next(r for r in _bundle_resources(bundle) if r["resourceType"] == "Patient")
    found = {v.item_id: v.value for v in resource_to_items(study, patient)}
    assert found == {"birth_date": date(1968, 4, 30), "sex": "male"}


@pytest.mark.parametrize("case", hl7_cases("hemoglobin-with-reference-range"))
def test_hl7_hemoglobin_example_with_reference_range(study: StudyDef, case) -> None:
    (value,) = resource_to_items(study, load_case(case))
    assert (value.item_id, value.value, value.uln) == ("hemoglobin", Decimal("72.0"), Decimal("100"))
    assert (value.original_value, value.original_unit) == (7.2, "g/dl")
    assert value.effective.isoformat() == "2013-04-05T10:30:10+01:00"


@pytest.mark.parametrize("case", hl7_cases("body-weight-in-pounds"))
def test_hl7_body_weight_in_pounds(study: StudyDef, case) -> None:
    (value,) = resource_to_items(study, load_case(case))
    assert (value.item_id, value.value) == ("weight", Decimal("185") * Decimal("0.45359237"))


@pytest.mark.parametrize("case", hl7_cases("ecog-value-integer"))
def test_mcode_ecog_value_integer(study: StudyDef, case) -> None:
    (value,) = resource_to_items(study, load_case(case))
    assert (value.item_id, value.value, value.error) == ("ecog", 0, None)


@pytest.mark.parametrize("case", hl7_cases("local-code"))
def test_local_code_observation_maps_to_nothing(study: StudyDef, case) -> None:
    assert resource_to_items(study, load_case(case)) == []


def _lab(code: str, value: Any, unit: str | None, **extra: Any) -> dict[str, Any]:
    quantity = {"value": value, "system": UCUM}
    if unit is not None:
        quantity.update(unit=unit, code=unit)
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": PATIENT},
        "effectiveDateTime": "2024-02-01T08:00:00+08:00",
        "valueQuantity": quantity,
        **extra,
    }


def test_alternate_loinc_codes_are_matched(study: StudyDef) -> None:
    for code, item_id in (
        ("26515-7", "platelets"),
        ("26499-4", "anc"),
        ("14682-9", "creatinine"),
        ("38875-1", "inr"),
        ("3173-2", "aptt"),
        ("2164-2", "crcl"),
        ("14631-6", "bilirubin"),
    ):
        item = study.item(item_id)[1]
        (value,) = [v for v in resource_to_items(study, _lab(code, 2, item.unit)) if v.item_id == item_id]
        assert value.value == Decimal(2) and value.error is None, code


def test_legacy_unit_text_without_ucum_code(study: StudyDef) -> None:
    resource = _lab("777-3", 210, None)
    resource["valueQuantity"] = {"value": 210, "unit": "K/uL"}
    (value,) = resource_to_items(study, resource)
    assert (value.value, value.original_unit, value.error) == (Decimal(210), "K/uL", None)


def test_unconvertible_unit_is_flagged_and_kept_as_entered(study: StudyDef) -> None:
    (value,) = resource_to_items(study, _lab("718-7", 7.8, "mmol/L"))
    assert value.error and "mmol/L" in value.error
    assert (value.value, value.original_value, value.unit) == (7.8, 7.8, None)


def test_missing_unit_is_flagged_unless_dimensionless(study: StudyDef) -> None:
    (hemoglobin,) = resource_to_items(study, _lab("718-7", 125, None))
    assert hemoglobin.error
    (inr,) = resource_to_items(study, _lab("6301-6", 1.1, None))
    assert (inr.value, inr.error) == (Decimal("1.1"), None)


def test_ehr_uln_in_another_unit_is_converted(study: StudyDef) -> None:
    resource = _lab(
        "2160-0",
        1.0,
        "mg/dL",
        referenceRange=[{"low": {"value": 0.6, "unit": "mg/dL"}, "high": {"value": 1.2, "unit": "mg/dL"}}],
    )
    values = {v.item_id: v for v in resource_to_items(study, resource)}
    assert values["creatinine"].uln == Decimal("1.2") * Decimal("88.4")
    assert values["creatinine_uln"].value == Decimal("1.2") * Decimal("88.4")


def test_ehr_uln_without_a_unit_is_in_the_unit_of_its_result(study: StudyDef) -> None:
    resource = _lab("2160-0", 1.0, "mg/dL", referenceRange=[{"high": {"value": 1.2}}])
    values = {v.item_id: v for v in resource_to_items(study, resource)}
    assert values["creatinine"].value == Decimal("88.4")
    assert values["creatinine"].uln == Decimal("1.2") * Decimal("88.4")  # not 1.2 umol/L
    uln = values["creatinine_uln"]
    assert (uln.value, uln.original_unit, uln.error) == (Decimal("1.2") * Decimal("88.4"), "mg/dL", None)


def test_ehr_uln_without_a_unit_beside_a_result_without_one_is_no_uln(study: StudyDef) -> None:
    """No unit is guessed for a ULN: without one on it or on its result there is no ULN, never 97 umol/L."""
    resource = _lab("2160-0", 80, None, referenceRange=[{"high": {"value": 97}}])
    values = {v.item_id: v for v in resource_to_items(study, resource)}
    assert values["creatinine"].uln is None and values["creatinine"].error
    assert values["creatinine_uln"].error and "no unit" in values["creatinine_uln"].error


def test_ehr_uln_of_a_dimensionless_result_needs_no_unit(study: StudyDef) -> None:
    for unit in ("{INR}", None):
        resource = _lab("6301-6", 1.1, unit, referenceRange=[{"high": {"value": 1.3}}])
        values = {v.item_id: v for v in resource_to_items(study, resource)}
        assert (values["inr"].uln, values["inr_uln"].value, values["inr_uln"].error) == (
            Decimal("1.3"),
            Decimal("1.3"),
            None,
        ), unit


def test_entered_in_error_carries_nothing(study: StudyDef) -> None:
    assert resource_to_items(study, {**_lab("718-7", 12, "g/dL"), "status": "entered-in-error"}) == []


def test_value_aliases_of_other_systems(study: StudyDef) -> None:
    resource = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "17964000"}]},
        "subject": {"reference": PATIENT},
        "valueCodeableConcept": {"coding": [{"system": "http://snomed.info/sct", "code": "1222639002"}]},
    }
    (value,) = resource_to_items(study, resource)
    assert (value.item_id, value.value) == ("margin_status", "R1")


def _condition(system: str, code: str, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Condition",
        "subject": {"reference": PATIENT},
        "code": {"coding": [{"system": system, "code": code}]},
        **extra,
    }


ICD10 = "http://hl7.org/fhir/sid/icd-10"
HISTOLOGY = "http://hl7.org/fhir/us/mcode/StructureDefinition/mcode-histology-morphology-behavior"


def test_hcc_condition_with_histology_extension(study: StudyDef) -> None:
    resource = _condition(
        ICD10,
        "C22.0",
        extension=[
            {
                "url": HISTOLOGY,
                "valueCodeableConcept": {
                    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/icd-o-3", "code": "8172/3"}]
                },
            }
        ],
    )
    validate_r4b(resource)
    (value,) = resource_to_items(study, resource)
    assert (value.item_id, value.value, value.error) == ("histology", "8172/3", None)


def test_hcc_condition_without_histology_leaves_it_unknown(study: StudyDef) -> None:
    (value,) = resource_to_items(study, _condition(ICD10, "C22.0"))
    assert value.item_id == "histology" and value.value is None and value.error


def test_comorbidity_conditions_answer_history_items(study: StudyDef) -> None:
    ckd = resource_to_items(study, _condition("http://hl7.org/fhir/sid/icd-10-cm", "N18.31"))
    assert [(v.item_id, v.value) for v in ckd] == [("chronic_kidney_disease", True)]
    mi = resource_to_items(study, _condition(ICD10, "I21.4", onsetDateTime="2023-12-24"))
    assert [(v.item_id, v.value) for v in mi] == [("mi_date", date(2023, 12, 24))]
    autoimmune = resource_to_items(study, _condition(ICD10, "M35.01"))
    assert [(v.item_id, v.value) for v in autoimmune] == [("autoimmune_disease", True)]
    assert resource_to_items(study, _condition(ICD10, "I25.2")) == []
    assert resource_to_items(study, _condition("http://snomed.info/sct", "N18")) == []


def test_immunization_answers_vaccine_date(study: StudyDef) -> None:
    immunization = {
        "resourceType": "Immunization",
        "status": "completed",
        "vaccineCode": {"coding": [{"system": "http://hl7.org/fhir/sid/cvx", "code": "140"}]},
        "patient": {"reference": PATIENT},
        "occurrenceDateTime": "2024-01-28T10:00:00Z",
    }
    validate_r4b(immunization)
    assert [(v.item_id, v.value) for v in resource_to_items(study, immunization)] == [
        ("vaccine_date", date(2024, 1, 28))
    ]


def test_ehr_hepatectomy_procedure(study: StudyDef) -> None:
    procedure = {
        "resourceType": "Procedure",
        "status": "completed",
        "code": {"coding": [{"system": LOCAL, "code": "hepatectomy-anatomical"}]},
        "subject": {"reference": PATIENT},
        "performedDateTime": "2024-01-09T09:30:00+08:00",
    }
    found = {v.item_id: v.value for v in resource_to_items(study, procedure)}
    assert found == {"surgery_date": date(2024, 1, 9), "resection_type": "anatomical"}


@pytest.mark.parametrize("case", hl7_cases("appendectomy"))
def test_an_unrelated_procedure_maps_to_nothing(study: StudyDef, case) -> None:
    assert resource_to_items(study, load_case(case)) == []


def test_other_gender_is_flagged(study: StudyDef) -> None:
    (value,) = resource_to_items(study, {"resourceType": "Patient", "gender": "other"})
    assert value.item_id == "sex" and value.error


# --- Questionnaire ------------------------------------------------------------------------


@pytest.mark.parametrize("form_id", list(ENTRIES))
def test_questionnaire_validates_with_r4b(study: StudyDef, form_id: str) -> None:
    questionnaire = form_to_questionnaire(study, form_id)
    validate_r4b(questionnaire)
    form = study.form(form_id)
    link_ids = [q["linkId"] for q in questionnaire["item"]]
    assert [i.id for i in form.items] == [lid for lid in link_ids if lid != "visit_date"]


def test_questionnaire_details(study: StudyDef) -> None:
    demographics = {q["linkId"]: q for q in form_to_questionnaire(study, "demographics")["item"]}
    assert demographics["contraception_agreed"]["enableWhen"] == [
        {"question": "wocbp", "operator": "=", "answerBoolean": True}
    ]
    weight = demographics["weight"]
    assert weight["type"] == "quantity"
    assert weight["code"][0]["code"] == "29463-7"
    units = [(e["url"].rsplit("-", 1)[-1], e["valueCoding"]["code"]) for e in weight["extension"]]
    assert units == [("unit", "kg"), ("unitOption", "kg"), ("unitOption", "[lb_av]")]
    assert [o["valueCoding"]["code"] for o in demographics["sex"]["answerOption"]] == ["male", "female"]
    pathology = {q["linkId"]: q for q in form_to_questionnaire(study, "pathology")["item"]}
    assert pathology["margin_status"]["type"] == "choice"
    assert pathology["histology"]["answerOption"][0]["valueCoding"]["system"] == (
        "http://terminology.hl7.org/CodeSystem/icd-o-3"
    )
    ctc = {q["linkId"]: q for q in form_to_questionnaire(study, "ctc")["item"]}
    assert ctc["ctc_status"]["readOnly"] is True
    assert ctc["blood_volume"]["initial"][0]["valueQuantity"]["value"] == 5
