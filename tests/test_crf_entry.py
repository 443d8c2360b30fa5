"""Form entry through /api/v1: every form of the spec, valid and invalid, and the server's edit checks."""

import pytest
from crf_support import VALID, day, enrol, entered_randomisation, errors_of, path, save

INVALID = {
    # form -> (items, the (item, rule) pairs the 422 must list)
    "surgery": (
        {"surgery_date": "2020-13-01", "resection_type": "partial", "visible_tumour_thrombus": "no"},
        {("surgery_date", "type"), ("resection_type", "allowed_values"), ("visible_tumour_thrombus", "type")},
    ),
    "demographics": (
        {
            **VALID["demographics"][2],
            "sex": "other",
            "weight": {"value": 70, "unit": "stone"},
            "height": 400,
            "birth_date": "2999-01-01",
        },
        {("sex", "allowed_values"), ("weight", "unit"), ("height", "hard_range"), ("birth_date", "future_date")},
    ),
    "baseline": (
        {**VALID["baseline"][2], "ecog": 7, "bclc_stage": "E", "ascites": True},
        {("ecog", "hard_range"), ("bclc_stage", "allowed_values"), ("ascites", "allowed_values")},
    ),
    "labs": (
        {
            **VALID["labs"][2],
            "platelets": 2500,
            "hemoglobin": {"value": 1, "unit": "g/dL"},
            "anc": "high",
            "inr": {"value": 1.1, "unit": "mg"},
        },
        {("platelets", "hard_range"), ("hemoglobin", "hard_range"), ("anc", "type"), ("inr", "unit")},
    ),
    "pathology": (
        {
            **VALID["pathology"][2],
            "histology": "9999/3",
            "tumour_count": 0,
            "tumour_size": {"value": 900, "unit": "mm"},
        },
        {("histology", "allowed_values"), ("tumour_count", "hard_range"), ("tumour_size", "hard_range")},
    ),
    "afp": ({"afp": -1}, {("afp", "hard_range")}),
    "ctc": (
        {"ctc_count": 2.5, "blood_volume": 50, "method": "magic"},
        {("ctc_count", "type"), ("blood_volume", "hard_range"), ("method", "allowed_values")},
    ),
    "history": (
        {**VALID["history"][2], "mi_date": "yesterday", "vaccine_date": "2999-12-31", "steroid_gt10mg_14d": 1},
        {("mi_date", "type"), ("vaccine_date", "future_date"), ("steroid_gt10mg_14d", "type")},
    ),
    # v2: both items are the system's allocation, never typed (rule `derived`), and still checked
    "randomisation": (
        {"arm": "PLACEBO", "randomisation_date": "2999-01-01"},
        {
            ("arm", "allowed_values"),
            ("randomisation_date", "future_date"),
            ("arm", "derived"),
            ("randomisation_date", "derived"),
        },
    ),
}


@pytest.fixture
def subject(server):
    with server.client("investigator", "S01") as http:
        subject = enrol(http)
        assert save(http, subject["id"], "surgery").status_code == 201
    return subject


@pytest.mark.parametrize("form_id", list(VALID))
def test_every_form_accepts_a_valid_entry_and_reads_it_back(server, subject, form_id):
    visit, visit_date, items = VALID[form_id]
    with server.client("investigator", "S01", sub="dr-wei") as http:
        if form_id == "randomisation":  # only an eligible subject is randomised: the other valid forms make one
            for other in VALID:
                if other not in ("surgery", "randomisation"):
                    assert save(http, subject["id"], other).status_code == 201, other
            # v2: typed, the arm and the date are refused (the system allocates them); a version-1 entry,
            # written as version 1's door did, must still be read back as entered
            typed = save(http, subject["id"], form_id)
            assert errors_of(typed) == {("arm", "derived"), ("randomisation_date", "derived")}, typed.text
            entered_randomisation(server, subject["id"], sub="dr-wei")
        else:
            response = (
                save(http, subject["id"], form_id)
                if form_id != "surgery"
                else http.get(path(subject["id"], "surgery", "PREOP"))
            )
            assert response.status_code in (200, 201), response.text
        read = http.get(path(subject["id"], form_id, visit))
    assert read.status_code == 200
    form = read.json()
    assert form["status"] == "complete" and form["missing"] == []
    assert read.headers["etag"] == f'W/"{form["version"]}"' and form["version"] >= 1
    assert form["visit_date"] == (visit_date or items.get("surgery_date"))
    for item_id, value in items.items():
        shown = form["items"][item_id]
        assert shown["source"] == "form", item_id
        expected = (
            value["value"] * 10
            if isinstance(value, dict) and value.get("unit") == "g/dL"
            else (value["value"] if isinstance(value, dict) else value)
        )
        assert shown["value"] == expected, (item_id, shown)
    if form_id != "surgery":
        assert form["updated"]["by"] == "dr-wei" and form["updated"]["role"] == "investigator"


@pytest.mark.parametrize("form_id", list(INVALID))
def test_every_form_refuses_an_invalid_entry_listing_every_failing_item(server, subject, form_id):
    items, expected = INVALID[form_id]
    with server.client("investigator", "S01") as http:
        before = http.get(path(subject["id"], form_id, VALID[form_id][0])).json()
        response = save(http, subject["id"], form_id, items, reason="correction")
        after = http.get(path(subject["id"], form_id, VALID[form_id][0])).json()
    assert errors_of(response) == expected
    assert after["version"] == before["version"] and after["items"] == before["items"]  # nothing stored


def test_422_lists_unknown_items_and_derived_items_too(server, subject):
    with server.client("coordinator", "S01") as http:
        response = save(http, subject["id"], "ctc", {"ctc_count": 2, "ctc_status": "positive", "colour": "red"})
    assert errors_of(response) == {("ctc_status", "derived"), ("colour", "unknown_item")}


def test_bad_body_shape_is_422_with_the_same_error_shape(server, subject):
    with server.client("coordinator", "S01") as http:
        response = http.put(path(subject["id"], "afp", "SCR"), json={"items": [], "visit_date": "soon", "extra": 1})
    assert {item for item, _ in errors_of(response)} == {"items", "visit_date", "extra"}


def test_soft_range_is_accepted_with_a_warning(server, subject):
    with server.client("investigator", "S01") as http:
        response = save(http, subject["id"], "labs", {"hemoglobin": 90, "platelets": 1500})
    assert response.status_code == 201, response.text
    warnings = {(w["item"], w["rule"]) for w in response.json()["warnings"]}
    assert {("hemoglobin", "soft_range"), ("platelets", "soft_range")} <= warnings
    assert response.json()["items"]["platelets"]["value"] == 1500


def test_required_items_decide_completion(server, subject):
    with server.client("investigator", "S01") as http:
        partial = save(http, subject["id"], "pathology", {"histology": "8170/3", "margin_status": "R0"})
        assert partial.status_code == 201
        assert partial.json()["status"] == "draft"
        assert set(partial.json()["missing"]) == {
            "tumour_count",
            "microvascular_invasion",
            "pvtt_extent",
            "bile_duct_invasion",
            "lymph_node_metastasis",
        }
        assert ("tumour_count", "required") in {(w["item"], w["rule"]) for w in partial.json()["warnings"]}
        full = save(http, subject["id"], "pathology")
    assert full.status_code == 200 and full.json()["status"] == "complete" and full.json()["missing"] == []


def test_conditional_item_only_when_its_condition_holds(server, subject):
    items = {**VALID["demographics"][2], "sex": "male", "wocbp": False, "contraception_agreed": True}
    with server.client("investigator", "S01") as http:
        assert errors_of(save(http, subject["id"], "demographics", items)) == {("contraception_agreed", "conditional")}
        items.pop("contraception_agreed")
        assert save(http, subject["id"], "demographics", items).json()["status"] == "complete"
        items.update(wocbp=True)
        needs_answer = save(http, subject["id"], "demographics", items, reason="wocbp corrected")
    assert needs_answer.json()["status"] == "draft" and needs_answer.json()["missing"] == ["contraception_agreed"]


def test_visit_must_be_one_of_the_forms_visits(server, subject):
    with server.client("investigator", "S01") as http:
        assert errors_of(save(http, subject["id"], "labs", visit="PREOP", visit_date=day(-2))) == {
            ("visit_id", "visit")
        }
        assert save(http, subject["id"], "labs", visit="M99").status_code == 404
        assert http.put(path(subject["id"], "vitals", "SCR"), json={"items": {}}).status_code == 404
        assert http.get(path(subject["id"], "labs", "PREOP")).status_code == 404


def test_future_visit_date_is_refused(server, subject):
    with server.client("investigator", "S01") as http:
        response = save(http, subject["id"], "afp", visit="M3", visit_date="2999-01-01")
    assert errors_of(response) == {("visit_date", "future_date")}


def test_visit_date_outside_the_window_is_a_flagged_deviation(server, subject):
    with server.client("investigator", "S01") as http:
        response = save(http, subject["id"], "labs", visit="SCR", visit_date=day(40))
        assert response.status_code == 201, response.text
        body = response.json()
        assert ("visit_date", "visit_window") in {(w["item"], w["rule"]) for w in body["warnings"]}
        assert body["deviation"].startswith(f"visit date {day(40)} is outside the SCR window {day(14)}")
        audit = http.get(f"/api/v1/subjects/{subject['id']}/audit", params={"form": "labs"}).json()["items"]
        assert [e["action"] for e in audit if e["action"] == "form.deviation"] == ["form.deviation"]
        fixed = save(http, subject["id"], "labs", visit="SCR", visit_date=day(21), reason="visit date typo")
    assert fixed.json()["deviation"] is None and fixed.json()["warnings"] == []


def test_defaults_and_derived_items_of_ctc(server, subject):
    with server.client("investigator", "S01") as http:
        response = save(http, subject["id"], "ctc", {"ctc_count": 1}, visit="M1", visit_date=day(30))
        assert response.status_code == 201, response.text
        items = response.json()["items"]
        assert items["blood_volume"]["value"] == 5 and items["method"]["value"] == "neg_enrichment_tpcr"
        assert items["ctc_status"]["value"] == "positive" and response.json()["status"] == "complete"
        negative = save(
            http, subject["id"], "ctc", {"ctc_count": 1, "blood_volume": 7.5}, visit="M3", visit_date=day(91)
        )
    assert negative.json()["items"]["ctc_status"]["value"] == "negative"


def test_dependent_item_needs_its_owner(server, subject):
    with server.client("investigator", "S01") as http:
        response = save(http, subject["id"], "labs", {"creatinine_uln": 97, "hemoglobin": 130})
    assert errors_of(response) == {("creatinine_uln", "depends_on")}


def test_a_put_is_the_whole_form_items_left_out_are_cleared(server, subject):
    with server.client("investigator", "S01") as http:
        first = save(http, subject["id"], "labs", {"hemoglobin": 130, "albumin": 40}).json()
        albumin = first["items"]["albumin"]["resource"]
        second = save(
            http, subject["id"], "labs", {"hemoglobin": 131}, reason="albumin was from another patient"
        ).json()
        assert "albumin" not in second["items"]
        assert second["items"]["hemoglobin"]["resource"] == first["items"]["hemoglobin"]["resource"]
        assert second["items"]["hemoglobin"]["resource_version"] == 2
        assert http.get(f"/fhir/{albumin}").status_code == 410


def test_randomisation_asks_the_eligibility_hook(server, subject):
    """v2: the randomise action asks the hook (typing the arm is refused, tests/test_randomisation.py)."""

    def ineligible(store, patient_id):
        return {
            "overall": "ineligible",
            "criteria": [
                {"id": "I05_ecog_0_1", "kind": "inclusion", "outcome": "not_met", "reason": "latest ECOG is 2"},
                {"id": "E03_ecog_2_plus", "kind": "exclusion", "outcome": "met", "reason": "latest ECOG is 2"},
                {"id": "I02_surgery", "kind": "inclusion", "outcome": "met", "reason": "hepatectomy"},
            ],
        }

    def eligible(store, patient_id):
        return {"overall": "eligible", "criteria": [{"id": "I02_surgery", "kind": "inclusion", "outcome": "met"}]}

    with server.client("investigator", "S01") as http:
        assert save(http, subject["id"], "baseline").status_code == 201  # the stratum's BCLC stage
        try:
            server.runtime.eligibility = ineligible
            refused = http.post(f"/api/v1/subjects/{subject['id']}/randomise")
            server.runtime.eligibility = eligible
            accepted = http.post(f"/api/v1/subjects/{subject['id']}/randomise")
        finally:
            del server.runtime.eligibility
        subject_after = http.get(f"/api/v1/subjects/{subject['id']}").json()
        form = http.get(path(subject["id"], "randomisation", "SCR")).json()
    assert refused.status_code == 409
    assert {(e["item"], e["rule"]) for e in refused.json()["errors"]} == {
        ("I05_ecog_0_1", "not_met"),
        ("E03_ecog_2_plus", "met"),
    }
    assert accepted.status_code == 201 and form["eligibility_basis"]["overall"] == "eligible"
    assert subject_after["arm"] == accepted.json()["arm"] and subject_after["status"] == "on-study"
