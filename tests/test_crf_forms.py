"""Form definitions through /api/v1/forms and as FHIR Questionnaires."""

from fhir.resources.R4B.questionnaire import Questionnaire

FORMS = [
    "demographics",
    "baseline",
    "labs",
    "surgery",
    "pathology",
    "afp",
    "ctc",
    "history",
    "randomisation",
    "exposure",
    "adverse_event",
    "conmed",
    "disease_assessment",
    "end_of_study",
]


def test_forms_list_every_form_with_items_types_units_values_ranges_and_visits(server):
    with server.client("sponsor") as http:
        forms = http.get("/api/v1/forms").json()
        labs = http.get("/api/v1/forms/labs").json()
        assert http.get("/api/v1/forms/vitals").status_code == 404
    assert [form["id"] for form in forms] == FORMS
    assert [visit["id"] for visit in labs["visits"]] == ["SCR", "M1", "M3", "M6", "M9", "M12"]
    assert labs["visits"][0] == {
        "id": "SCR",
        "label": "Post-operative screening / eligibility",
        "target_day": 21,
        "window_start": 14,
        "window_end": 28,
        "before_day_zero": False,
    }
    hemoglobin = next(item for item in labs["items"] if item["id"] == "hemoglobin")
    assert hemoglobin["type"] == "quantity" and hemoglobin["unit"] == "g/L"
    assert hemoglobin["accepted_units"]["g/dL"] == "10" and hemoglobin["accepted_units"]["g/L"] == "1"
    assert (hemoglobin["hard_min"], hemoglobin["hard_max"], hemoglobin["soft_min"]) == ("20", "250", "115")
    demographics = next(form for form in forms if form["id"] == "demographics")
    contraception = next(item for item in demographics["items"] if item["id"] == "contraception_agreed")
    assert contraception["enable_when"] == {"item": "wocbp", "equals": True}
    sex = next(item for item in demographics["items"] if item["id"] == "sex")
    assert sex["values"] == ["male", "female"] and sex["required"] is True


def test_exposure_is_a_log_form_whose_drug_chooses_the_resource(server):
    with server.client("sponsor") as http:
        exposure = http.get("/api/v1/forms/exposure").json()
        questionnaire = http.get("/fhir/Questionnaire/exposure")
    assert exposure["kind"] == "log" and exposure["date_item"] == "start_date" and exposure["visits"] == []
    items = {item["id"]: item for item in exposure["items"]}
    assert items["drug"]["values"] == ["pd1", "sorafenib"]
    assert items["drug"]["fhir"]["resource_type_by_value"] == {
        "pd1": "MedicationAdministration",
        "sorafenib": "MedicationStatement",
    }
    assert items["dose"]["unit"] == "mg" and (items["dose"]["hard_min"], items["dose"]["hard_max"]) == ("0", "2000")
    assert items["start_date"]["fhir"]["path_by_type"] == {"MedicationAdministration": "effectiveDateTime"}
    assert items["modification"]["values"] == ["none", "reduced", "interrupted", "discontinued"]
    assert questionnaire.status_code == 200, questionnaire.text
    Questionnaire.model_validate(questionnaire.json())
    assert [q["linkId"] for q in questionnaire.json()["item"]] == list(items)


def test_questionnaire_is_the_same_form_as_fhir_r4(server):
    with server.client("investigator", "S01") as http:
        response = http.get("/fhir/Questionnaire/demographics")
        missing = http.get("/fhir/Questionnaire/vitals")
        labs = http.get("/fhir/Questionnaire/labs").json()
    assert response.status_code == 200 and response.headers["content-type"].startswith("application/fhir+json")
    questionnaire = response.json()
    Questionnaire.model_validate(questionnaire)
    items = {item["linkId"]: item for item in questionnaire["item"]}
    assert items["contraception_agreed"]["enableWhen"] == [
        {"question": "wocbp", "operator": "=", "answerBoolean": True}
    ]
    assert items["weight"]["code"][0]["code"] == "29463-7"
    assert {"birth_date", "sex", "consent_date", "weight", "height", "wocbp", "tissue_consent"} <= set(items)
    hemoglobin = next(item for item in labs["item"] if item["linkId"] == "hemoglobin")
    assert any(
        ext["valueCoding"]["code"] == "g/L"
        for ext in hemoglobin["extension"]
        if ext["url"].endswith("questionnaire-unit")
    )
    assert missing.status_code == 404 and missing.json()["resourceType"] == "OperationOutcome"
    with server.client() as http:
        assert http.get("/fhir/Questionnaire/labs").status_code == 401
