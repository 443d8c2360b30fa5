"""EHR results outside every window of their form are kept as its unscheduled results (CRF-SPEC 2): the
read-only pseudo-visit UNS of the form view and rows with visit UNS in the form's CSV export."""

import csv
import io

from crf_support import day, enrol, path, save
from fhir_builders import FHIR_JSON, lab


def _push(server, resource):
    """Through the FHIR door, so the result's source is fhir."""
    with server.client("coordinator", "S01") as http:
        response = http.post(f"/fhir/{resource['resourceType']}", json=resource, headers=FHIR_JSON)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def _subject_with_results(server):
    """Surgery on day 0; labs on days 21 (SCR), 50 and 60 (no labs window: M1 ends on 37, M3 starts on 77)."""
    with server.client("investigator", "S01") as http:
        subject = enrol(http)
        assert save(http, subject["id"], "surgery").status_code == 201
        # a form entry dated outside its window is a deviation of that visit, never an unscheduled result
        saved = save(http, subject["id"], "labs", {"albumin": 40}, visit="M1", visit_date=day(50))
        assert saved.status_code == 201 and saved.json()["deviation"]
    patient = f"Patient/{subject['patient_id']}"
    ids = {
        "scr": _push(server, lab(patient, "718-7", 12.5, "g/dL", day(21))),
        "alt": _push(server, lab(patient, "1742-6", 30, "U/L", day(50))),
        "hemoglobin": _push(server, lab(patient, "718-7", 12.1, "g/dL", f"{day(60)}T09:30:00+08:00", uln=17.5)),
        "platelets": _push(server, lab(patient, "777-3", 150, "10*3/uL", day(60))),
    }
    return subject, ids


def test_results_outside_every_window_are_listed_by_date_under_uns(server):
    subject, ids = _subject_with_results(server)
    with server.client("monitor", "S01") as http:
        response = http.get(path(subject["id"], "labs", "UNS"))
        scr = http.get(path(subject["id"], "labs", "SCR")).json()
        m1 = http.get(path(subject["id"], "labs", "M1")).json()
    assert response.status_code == 200, response.text
    view = response.json()
    assert (view["subject_id"], view["form_id"], view["visit_id"], view["day_zero"]) == (
        subject["id"],
        "labs",
        "UNS",
        day(0),
    )
    assert [(r["date"], r["study_day"], sorted(r["items"])) for r in view["results"]] == [
        (day(50), 50, ["alt"]),
        (day(60), 60, ["hemoglobin", "platelets"]),
    ]
    hemoglobin = view["results"][1]["items"]["hemoglobin"]
    assert (hemoglobin["value"], hemoglobin["uln"], hemoglobin["source"], hemoglobin["effective"]) == (
        121.0,
        175.0,
        "fhir",
        day(60),
    )
    assert hemoglobin["resource"] == f"Observation/{ids['hemoglobin']}"
    assert scr["items"]["hemoglobin"]["resource"] == f"Observation/{ids['scr']}" and "alternatives" not in scr["items"]
    assert set(m1["items"]) == {"albumin"} and m1["items"]["albumin"]["source"] == "form"


def test_before_the_surgery_date_every_ehr_result_is_unscheduled_until_it_can_be_placed(server):
    with server.client("investigator", "S01") as http:
        subject = enrol(http)
    hemoglobin = _push(server, lab(f"Patient/{subject['patient_id']}", "718-7", 12.1, "g/dL", day(21)))
    with server.client("investigator", "S01") as http:
        before = http.get(path(subject["id"], "labs", "UNS")).json()
        assert save(http, subject["id"], "surgery").status_code == 201
        after = http.get(path(subject["id"], "labs", "UNS")).json()
        scr = http.get(path(subject["id"], "labs", "SCR")).json()
    assert before["day_zero"] is None
    assert [(r["date"], r["study_day"], r["items"]["hemoglobin"]["resource"]) for r in before["results"]] == [
        (day(21), None, f"Observation/{hemoglobin}")
    ]
    assert after["results"] == [] and scr["items"]["hemoglobin"]["resource"] == f"Observation/{hemoglobin}"


def test_uns_is_read_only_and_scoped_to_the_callers_sites(server):
    subject, _ = _subject_with_results(server)
    with server.client("investigator", "S01") as http:
        refused = http.put(
            path(subject["id"], "labs", "UNS"), json={"items": {"hemoglobin": 120}, "visit_date": day(60)}
        )
        unchanged = http.get(path(subject["id"], "labs", "UNS")).json()
        unknown_form = http.get(path(subject["id"], "no_such_form", "UNS"))
    with server.client("investigator", "S02") as http:
        other_site = http.get(path(subject["id"], "labs", "UNS"))
    assert refused.status_code == 422, refused.text
    assert [(e["item"], e["rule"]) for e in refused.json()["errors"]] == [("visit_id", "visit")]
    assert [r["date"] for r in unchanged["results"]] == [day(50), day(60)]
    assert "hemoglobin" not in unchanged["results"][0]["items"]
    assert unknown_form.status_code == 404 and other_site.status_code == 404


def test_the_form_csv_has_a_row_per_subject_and_unscheduled_date(server):
    subject, _ = _subject_with_results(server)
    with server.client("data_manager") as http:
        identified = http.get("/api/v1/exports/forms/labs.csv", params={"deidentify": "false"})
    with server.client("sponsor") as http:
        deidentified = http.get("/api/v1/exports/forms/labs.csv")
    assert identified.status_code == 200 and deidentified.status_code == 200
    rows = [row for row in csv.DictReader(io.StringIO(identified.text)) if row["subject"] == subject["id"]]
    assert [(r["visit"], r["visit_date"], r["study_day"]) for r in rows] == [
        ("SCR", day(21), "21"),
        ("M1", day(50), "50"),
        ("UNS", day(50), "50"),
        ("UNS", day(60), "60"),
    ]
    unscheduled = {r["visit_date"]: r for r in rows if r["visit"] == "UNS"}
    assert unscheduled[day(50)]["alt [U/L]"] == "30" and unscheduled[day(50)]["hemoglobin [g/L]"] == ""
    assert (
        float(unscheduled[day(60)]["hemoglobin [g/L]"]) == 121 and unscheduled[day(60)]["platelets [10*9/L]"] == "150"
    )
    shared = [
        r
        for r in csv.DictReader(io.StringIO(deidentified.text))
        if r["visit"] == "UNS" and r["study_day"] == "60" and r["platelets [10*9/L]"] == "150"
    ]
    assert shared and all(r["visit_date"] != day(60) and r["subject"] != subject["id"] for r in shared)
