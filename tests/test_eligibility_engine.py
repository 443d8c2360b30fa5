"""The engine over real FHIR resources written through the ClinicalStore (both backends), with a fixed R.

The synthetic patients of tests/data/eligibility are re-used here with R moved into the past, so every
criterion's met / not_met / unknown cases and boundaries also hold away from "today"."""

from datetime import date

import pytest

from tests.eligibility_support import (
    compose,
    condition,
    criterion,
    day,
    local_coded,
    outcomes,
    quantity,
    store_patient,
    variants,
)

PATIENTS = variants()
R = date(2025, 3, 1)  # any fixed day; the fixtures are relative to R


@pytest.mark.parametrize("variant", PATIENTS, ids=[p["id"] for p in PATIENTS])
def test_every_synthetic_patient_through_the_store(server, variant):
    patient = compose(variant, R)
    _, result = store_patient(server, patient["resources"], patient["forms"], R)
    expected = variant["expect"]
    found = outcomes(result)
    assert {k: found[k] for k in expected["criteria"]} == expected["criteria"]
    assert result.status == expected["status"]
    assert result.reference_date == R and not result.randomised


def _patient(changes=None, forms=None):
    patient = compose({"resources": changes or {}, "forms": forms or {}}, R)
    return patient["resources"], patient["forms"]


def test_evidence_carries_references_versions_and_canonical_values(server):
    resources, forms = _patient({"platelets": quantity("777-3", 42000, "/uL", day("R-2d", R))})
    _, result = store_patient(server, resources, forms, R)
    platelets = criterion(result, "I08_platelets")
    assert platelets["result"] == "not_met"
    assert platelets["reason"] == f"platelets 42 10*9/L on {day('R-2d', R)} < 50"
    [evidence] = platelets["evidence"]
    assert evidence["reference"].startswith("Observation/") and evidence["version"] == 1
    assert (evidence["value"], evidence["unit"], evidence["as_sent"]) == ("42", "10*9/L", "42000 /uL")


def test_uln_comes_from_the_reference_range_in_its_own_unit(server):
    resources, forms = _patient(
        {
            "creatinine": quantity("2160-0", 1.65, "mg/dL", day("R-5d", R), uln=1.1),
            "crcl": quantity("35591-7", 60, "mL/min", day("R-5d", R)),
        }
    )
    _, result = store_patient(server, resources, forms, R)
    renal = criterion(result, "I10_renal")
    creatinine = next(e for e in renal["evidence"] if e["item"] == "creatinine")
    assert (creatinine["value"], creatinine["uln"], creatinine["uln_defaulted"]) == ("145.86", "97.24", False)
    assert renal["result"] == "met" and "ULN defaulted" not in renal["reason"]


def test_missing_uln_is_defaulted_and_said_so(server):
    resources, forms = _patient({"ast": {**quantity("1920-8", 100, "U/L", day("R-5d", R)), "referenceRange": None}})
    _, result = store_patient(server, resources, forms, R)
    ast = criterion(result, "I11_transaminases")
    assert ast["result"] == "met" and "2.5 x ULN 40 = 100 (ULN defaulted)" in ast["reason"]
    assert next(e for e in ast["evidence"] if e["item"] == "ast")["uln_defaulted"] is True


def test_a_value_in_a_unit_that_does_not_convert_is_never_evidence(server):
    resources, forms = _patient({"platelets": quantity("777-3", 180, "mg", day("R-5d", R))})
    _, result = store_patient(server, resources, forms, R)
    platelets = criterion(result, "I08_platelets")
    assert platelets["result"] == "unknown" and platelets["evidence"] == []
    [missing] = [m for m in result.missing if m["criterion"] == "I08_platelets"]
    assert missing["item"] == "platelets" and missing["form"] == "labs" and missing["unusable"]


def test_missing_names_the_item_form_and_window_that_would_settle_it(server):
    resources, forms = _patient({"anc": {"effectiveDateTime": day("R-20d", R)}})
    _, result = store_patient(server, resources, forms, R)
    [missing] = [m for m in result.missing if m["criterion"] == "I07_anc"]
    assert missing["item"] == "anc" and missing["form"] == "labs" and "SCR" in missing["visits"]
    assert missing["window"] == {"from": day("R-14d", R), "to": R.isoformat()}
    assert "1 outside it" in missing["detail"]
    assert result.status == "incomplete"


def test_without_surgery_date_the_lab_window_names_the_anchor(server):
    resources, forms = _patient({"surgery": None})
    _, result = store_patient(server, resources, forms, R)
    items = {m["item"] for m in result.missing if m["criterion"] == "I08_platelets"}
    assert items == {"platelets"}
    assert "surgery_date has no value" in next(m["detail"] for m in result.missing if m["criterion"] == "I08_platelets")
    assert {m["item"] for m in result.missing if m["criterion"] == "I02_surgery"} == {"surgery_date"}


def test_entered_child_pugh_wins_and_the_conflict_is_reported(server):
    resources, forms = _patient(
        {"child_pugh_entered": local_coded("child-pugh-class", "child_pugh_class-B", day("R-31d", R))}
    )
    _, result = store_patient(server, resources, forms, R)
    child_pugh = criterion(result, "I04_child_pugh_a")
    assert child_pugh["result"] == "not_met"
    assert "conflict: child_pugh_class_computed A" in child_pugh["reason"]
    assert {e["item"] for e in child_pugh["evidence"]} >= {"child_pugh_class", "bilirubin", "albumin", "inr"}


def test_cockcroft_gault_evidence_and_exact_arithmetic(server):
    resources, forms = _patient(
        {
            "creatinine": quantity("2160-0", 100, "umol/L", day("R-5d", R), uln=97),
            "patient": {"gender": "male", "birthDate": day("R-40y-1d", R)},
        },
        {
            "demographics": {
                "items": {
                    "sex": "male",
                    "birth_date": day("R-40y-1d", R),
                    "wocbp": False,
                    "contraception_agreed": None,
                    "weight": {"value": 89.78, "unit": "[lb_av]"},
                }
            }
        },
    )
    _, result = store_patient(server, resources, forms, R)
    renal = criterion(result, "I10_renal")
    # 89.78 lb = 40.7236... kg: (140 - 40) x 40.7236 / 81.45 < 50, no rounding after conversion
    assert renal["result"] == "not_met"
    assert {"weight", "creatinine", "birth_date", "sex"} <= {e["item"] for e in renal["evidence"]}


def test_a_voided_condition_is_not_evidence(server):
    resources, forms = _patient(
        {
            "metastasis": condition(
                "http://hl7.org/fhir/sid/icd-10",
                "C78.0",
                day("R-20d", R),
                verificationStatus={"coding": [{"code": "entered-in-error"}]},
            )
        }
    )
    _, result = store_patient(server, resources, forms, R)
    assert criterion(result, "E07_distant_metastasis")["result"] == "not_met"


def test_lab_values_from_the_form_door_and_the_fhir_door_agree(server):
    fhir_resources, forms = _patient()
    labs = {
        key: None
        for key in ("anc", "platelets", "hemoglobin", "creatinine", "ast", "alt", "bilirubin", "albumin", "inr", "aptt")
    }
    form_resources, _ = _patient(labs)
    lab_form = {
        "visit": "SCR",
        "visit_date": day("R-5d", R),
        "items": {
            "anc": 2.5,
            "platelets": 180,
            "hemoglobin": {"value": 13.2, "unit": "g/dL"},
            "creatinine": 80,
            "creatinine_uln": 97,
            "ast": 30,
            "ast_uln": 40,
            "alt": 35,
            "alt_uln": 50,
            "bilirubin": 15,
            "bilirubin_uln": 21,
            "albumin": 40,
            "inr": 1.0,
            "inr_uln": 1.2,
            "aptt": 30,
            "aptt_uln": 36,
        },
    }
    _, from_fhir = store_patient(server, fhir_resources, forms, R)
    _, from_forms = store_patient(server, form_resources, {**forms, "labs": lab_form}, R)
    assert outcomes(from_fhir) == outcomes(from_forms)
    assert from_forms.status == "eligible"
    for criterion_id in ("I08_platelets", "I10_renal", "I13_coagulation"):
        assert criterion(from_fhir, criterion_id)["reason"] == criterion(from_forms, criterion_id)["reason"]


def test_the_randomisation_date_is_r(server):
    """Once randomised, R is the randomisation date: labs count relative to it, not to the evaluation day."""
    resources, forms = _patient()
    forms["randomisation"] = {
        "visit": "SCR",
        "visit_date": day("R-1d", R),
        "items": {"arm": "SORA", "randomisation_date": day("R-1d", R)},
    }
    _, later = store_patient(server, resources, forms, date(2025, 9, 1))
    assert later.randomised and later.reference_date == date.fromisoformat(day("R-1d", R))
    assert later.status == "eligible"


def test_before_randomisation_r_is_the_date_at_the_subject_s_site():
    from datetime import UTC, datetime

    from ecrf.config import Settings
    from ecrf.eligibility.engine import evaluate
    from ecrf.eligibility.patient_data import PatientData
    from study_model.loader import load_study

    study = load_study(Settings(_env_file=None).study_dir)
    evening_in_utc = datetime(2026, 11, 26, 17, 30, tzinfo=UTC)  # 01:30 on the 27th in Guangxi (S01)
    at_s01 = evaluate(study, PatientData("p"), evening_in_utc, study.today_at("S01", evening_in_utc))
    assert at_s01.reference_date == date(2026, 11, 27)
    assert evaluate(study, PatientData("p"), evening_in_utc).reference_date == date(2026, 11, 26)
