"""Enrolment and subjects through /api/v1: one id in both doors, site scoping, duplicates, paging."""

import uuid

from crf_support import SURGERY, TODAY, day, enrol, save
from fhir_builders import FHIR_JSON, MRN


def test_enrolment_creates_patient_and_research_subject_with_one_id(server):
    with server.client("coordinator", "S01") as http:
        response = http.post(
            "/api/v1/subjects", json={"site": "S01", "mrn": "MRN-" + uuid.uuid4().hex[:8], "consent_date": "2026-01-05"}
        )
        assert response.status_code == 201, response.text
        subject = response.json()
        assert response.headers["location"] == f"/api/v1/subjects/{subject['id']}"
        assert subject["patient_id"] == subject["id"] and subject["site"] == "S01"
        assert subject["status"] == "candidate" and subject["consent_date"] == "2026-01-05"
        assert subject["study"] == "ResearchStudy/NCT04163237" and subject["mrn"].startswith("MRN-")
        assert http.get(f"/api/v1/subjects/{subject['id']}").json()["id"] == subject["id"]
    with server.client("investigator", "S01") as http:
        research_subject = http.get(f"/fhir/ResearchSubject/{subject['id']}")
        patient = http.get(f"/fhir/Patient/{subject['id']}")
    assert research_subject.status_code == 200, research_subject.text
    body = research_subject.json()
    assert body["study"]["reference"] == "ResearchStudy/NCT04163237"
    assert body["individual"]["reference"] == f"Patient/{subject['id']}"
    assert body["status"] == "candidate" and body["period"]["start"] == "2026-01-05"
    assert patient.json()["identifier"] == [{"system": MRN["S01"], "value": subject["mrn"]}]


def test_duplicate_mrn_at_a_site_is_409(server):
    mrn = uuid.uuid4().hex[:10]
    with server.client("coordinator", "S01") as http:
        first = http.post("/api/v1/subjects", json={"site": "S01", "mrn": mrn, "consent_date": "2026-01-05"})
        second = http.post("/api/v1/subjects", json={"site": "S01", "mrn": mrn, "consent_date": "2026-01-06"})
    assert first.status_code == 201
    assert second.status_code == 409 and "already enrolled" in second.json()["detail"]
    with server.client("coordinator", "S02") as http:
        other_site = http.post("/api/v1/subjects", json={"site": "S02", "mrn": mrn, "consent_date": "2026-01-05"})
    assert other_site.status_code == 201  # MRNs are per site


def test_enrolment_checks_site_consent_date_and_role(server):
    with server.client("coordinator", "S01") as http:
        bad = http.post("/api/v1/subjects", json={"site": "S09", "mrn": "x1", "consent_date": "2999-01-01"})
        assert bad.status_code == 422
        assert {(e["item"], e["rule"]) for e in bad.json()["errors"]} == {
            ("site", "allowed_values"),
            ("consent_date", "future_date"),
        }
        assert (
            http.post("/api/v1/subjects", json={"site": "S02", "mrn": "x2", "consent_date": "2026-01-01"}).status_code
            == 403
        )
        missing = http.post("/api/v1/subjects", json={"site": "S01"})
        assert missing.status_code == 422 and {e["item"] for e in missing.json()["errors"]} == {"mrn", "consent_date"}
    for role, sites in (("monitor", ("S01",)), ("sponsor", ()), ("data_manager", ())):
        with server.client(role, *sites) as http:
            response = http.post("/api/v1/subjects", json={"site": "S01", "mrn": "x3", "consent_date": "2026-01-01"})
        assert response.status_code == 403, role


def test_another_sites_subject_does_not_exist(server):
    with server.client("coordinator", "S01") as http:
        subject = enrol(http)
    with server.client("coordinator", "S02") as http:
        assert http.get(f"/api/v1/subjects/{subject['id']}").status_code == 404
        assert http.get(f"/api/v1/subjects/{subject['id']}/forms/labs/SCR").status_code == 404
        assert save(http, subject["id"], "afp").status_code == 404
        assert http.get(f"/api/v1/subjects/{subject['id']}/audit").status_code == 404
        listed = http.get("/api/v1/subjects", params={"limit": 500}).json()
        assert subject["id"] not in {s["id"] for s in listed["items"]}
    with server.client("data_manager") as http:
        assert http.get(f"/api/v1/subjects/{subject['id']}").status_code == 200


def test_list_is_paginated_and_filtered_by_site_and_status(server):
    with server.client("coordinator", "S02") as http:
        enrolled = {enrol(http, site="S02")["id"] for _ in range(3)}
    with server.client("data_manager") as http:
        seen, offset = [], 0
        while True:
            page = http.get("/api/v1/subjects", params={"site": "S02", "limit": 2, "offset": offset}).json()
            assert page["limit"] == 2 and len(page["items"]) <= 2
            seen += page["items"]
            offset += 2
            if offset >= page["total"]:
                break
        assert enrolled <= {s["id"] for s in seen} and {s["site"] for s in seen} == {"S02"}
        assert len({s["id"] for s in seen}) == len(seen) == page["total"]
        candidates = http.get("/api/v1/subjects", params={"site": "S02", "status": "candidate", "limit": 500}).json()
        assert enrolled <= {s["id"] for s in candidates["items"]}
        assert http.get("/api/v1/subjects", params={"status": "follow-up"}).json()["total"] == 0
    with server.client("sponsor") as http:
        assert http.get("/api/v1/subjects").status_code == 403


def test_research_subject_pushed_by_an_ehr_is_a_subject(server):
    with server.client("ehr", "S01") as http:
        patient = http.post(
            "/fhir/Patient",
            headers=FHIR_JSON,
            json={
                "resourceType": "Patient",
                "identifier": [{"system": MRN["S01"], "value": uuid.uuid4().hex[:10]}],
                "gender": "male",
                "birthDate": "1960-02-03",
            },
        )
        assert patient.status_code == 201, patient.text
        patient_id = patient.json()["id"]
        research_subject = http.post(
            "/fhir/ResearchSubject",
            headers=FHIR_JSON,
            json={
                "resourceType": "ResearchSubject",
                "status": "on-study",
                "study": {"reference": "ResearchStudy/NCT04163237"},
                "individual": {"reference": f"Patient/{patient_id}"},
                "period": {"start": "2026-02-01"},
            },
        )
        assert research_subject.status_code == 201, research_subject.text
    subject_id = research_subject.json()["id"]
    assert subject_id != patient_id
    with server.client("investigator", "S01") as http:
        subject = http.get(f"/api/v1/subjects/{subject_id}").json()
        assert subject["patient_id"] == patient_id and subject["status"] == "on-study"
        saved = save(http, subject_id, "surgery")
        assert saved.status_code == 201, saved.text
        demographics = http.get(f"/api/v1/subjects/{subject_id}/forms/demographics/SCR").json()
    assert demographics["items"]["sex"]["value"] == "male" and demographics["items"]["sex"]["source"] == "fhir"
    assert demographics["items"]["birth_date"]["value"] == "1960-02-03"
    assert demographics["items"]["consent_date"]["value"] == "2026-02-01"
    with server.client("investigator", "S01") as http:
        assert (
            http.get(f"/fhir/Procedure/{saved.json()['items']['surgery_date']['resource'].split('/')[1]}").json()[
                "subject"
            ]["reference"]
            == f"Patient/{patient_id}"
        )


def test_subject_shows_visit_schedule_with_derived_status(server):
    with server.client("investigator", "S01") as http:
        subject = enrol(http)
        before = http.get(f"/api/v1/subjects/{subject['id']}").json()
        assert before["day_zero"] is None and {v["status"] for v in before["visits"]} == {"not_due"}
        for form_id in ("surgery", "baseline", "afp", "ctc"):
            assert (
                save(
                    http,
                    subject["id"],
                    form_id,
                    visit="PREOP" if form_id in ("afp", "ctc") else None,
                    visit_date=day(-2) if form_id in ("afp", "ctc") else None,
                ).status_code
                == 201
            )
        visits = {v["id"]: v for v in http.get(f"/api/v1/subjects/{subject['id']}").json()["visits"]}
    assert visits["PREOP"]["status"] == "done"
    assert visits["PREOP"]["window_start"] == day(-14) and visits["PREOP"]["window_end"] == day(0)
    assert visits["POD7"]["status"] == "overdue" and visits["SCR"]["status"] == "overdue"
    assert visits["M3"]["status"] == "due" and visits["M3"]["target_date"] == day(91)
    assert visits["M6"]["status"] == "not_due"
    assert visits["SCR"]["forms"]["labs"] == "not_started"
    assert SURGERY < TODAY


def test_enrolment_takes_over_a_patient_an_ehr_pushed_with_that_mrn(server):
    mrn = uuid.uuid4().hex[:10]
    with server.client("ehr", "S01") as http:
        pushed = http.post(
            "/fhir/Patient",
            headers=FHIR_JSON,
            json={"resourceType": "Patient", "identifier": [{"system": MRN["S01"], "value": mrn}], "gender": "female"},
        )
    with server.client("coordinator", "S01") as http:
        subject = http.post("/api/v1/subjects", json={"site": "S01", "mrn": mrn, "consent_date": "2026-01-05"})
        again = http.post("/api/v1/subjects", json={"site": "S01", "mrn": mrn, "consent_date": "2026-01-05"})
    assert subject.status_code == 201 and subject.json()["patient_id"] == pushed.json()["id"] == subject.json()["id"]
    assert again.status_code == 409
