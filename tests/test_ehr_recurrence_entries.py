"""A recurrence Condition an EHR pushes through /fhir lands in the subject's disease assessments (issue 15,
CRF-SPEC 7.4): an entry (`source: fhir`) of the repeating form disease_assessment at the visit whose window
holds its onset date, its items read from the Condition (`ehr_entries` of forms/forms/disease_assessment.yaml);
refuted or entered in error it does not land (or is withdrawn); an update re-places it, a delete withdraws it; a
save through the form writes the form's Observation beside the EHR's Condition and never rewrites nor deletes
it, and takes the items the Condition gives as they are; the endpoints count the recurrence once. Real HTTP, SQLite and PostgreSQL."""

import json

from crf_support import day
from fhir_builders import FHIR_JSON
from test_endpoints import endpoints, randomised, recurrence_condition
from test_ehr_log_entries import enrolled, link, subject  # noqa: F401 (fixtures)

FORM = "disease_assessment"


def visit_entries(http, subject_id: str, visit: str) -> list[dict]:
    response = http.get(f"/api/v1/subjects/{subject_id}/forms/{FORM}/{visit}/entries")
    assert response.status_code == 200, response.text
    return response.json()


def all_entries(http, subject_id: str) -> list[dict]:
    response = http.get(f"/api/v1/subjects/{subject_id}/forms/{FORM}/entries")
    assert response.status_code == 200, response.text
    return response.json()


def of_condition(listed: list[dict], condition_id: str) -> list[dict]:
    reference = f"Condition/{condition_id}"
    return [e for e in listed if any(i.get("resource") == reference for i in e["items"].values())]


def push(http, condition: dict, condition_id: str | None = None) -> dict:
    if condition_id is None:
        response = http.post("/fhir/Condition", content=json.dumps(condition), headers=FHIR_JSON)
        assert response.status_code == 201, response.text
    else:
        response = http.put(
            f"/fhir/Condition/{condition_id}", content=json.dumps({**condition, "id": condition_id}), headers=FHIR_JSON
        )
        assert response.status_code == 200, response.text
    return response.json()


def test_a_recurrence_condition_lands_at_the_visit_whose_window_holds_its_onset(server, subject):
    with server.client("ehr", "S01") as ehr:
        at_m3 = push(ehr, recurrence_condition(subject, 90))
        between = push(ehr, recurrence_condition(subject, 140))  # M3 ends on day 105, M6 starts on day 168
        refuted = push(ehr, recurrence_condition(subject, 180, "refuted"))
        voided = push(ehr, recurrence_condition(subject, 185, "entered-in-error"))
    with server.client("coordinator", "S01") as http:
        [entry] = of_condition(visit_entries(http, subject, "M3"), at_m3["id"])
        assert entry["source"] == "fhir" and entry["visit_id"] == "M3" and entry["visit_date"] == day(90)
        items = entry["items"]
        assert items["status"]["value"] == "recurrence" and items["status"]["source"] == "fhir"
        assert items["assessment_date"]["value"] == day(90) and items["recurrence_date"]["value"] == day(90)
        assert items["recurrence_date"]["resource"] == f"Condition/{at_m3['id']}"
        assert "method" not in items and entry["status"] == "draft"  # the site completes the assessment
        assert entry["version"] == 1
        listed = all_entries(http, subject)
        assert [e["id"] for e in listed] == [entry["id"]]  # outside every window, refuted, voided: no entry
        for resource in (between, refuted, voided):
            assert of_condition(listed, resource["id"]) == []
        assert visit_entries(http, subject, "M6") == []


def test_an_update_replaces_the_entry_a_void_or_a_delete_withdraws_it(server, subject):
    with server.client("ehr", "S01") as ehr:
        first = push(ehr, recurrence_condition(subject, 92))
        second = push(ehr, recurrence_condition(subject, 95))
    with server.client("coordinator", "S01") as http:
        [entry] = of_condition(visit_entries(http, subject, "M3"), first["id"])
        [other] = of_condition(visit_entries(http, subject, "M3"), second["id"])
    with server.client("ehr", "S01") as ehr:
        push(ehr, recurrence_condition(subject, 180), first["id"])  # re-dated into M6
    with server.client("coordinator", "S01") as http:
        assert of_condition(visit_entries(http, subject, "M3"), first["id"]) == []
        [moved] = of_condition(visit_entries(http, subject, "M6"), first["id"])
        assert moved["id"] == entry["id"] and moved["visit_id"] == "M6" and moved["visit_date"] == day(180)
        assert moved["items"]["recurrence_date"]["value"] == day(180)
    with server.client("ehr", "S01") as ehr:
        push(ehr, recurrence_condition(subject, 180, "refuted"), first["id"])
        assert ehr.delete(f"/fhir/Condition/{second['id']}").status_code in (200, 204)
    with server.client("coordinator", "S01") as http:
        listed = {e["id"]: e for e in all_entries(http, subject)}
        assert listed[entry["id"]]["status"] == "entered_in_error"
        assert f"Condition/{first['id']}" in listed[entry["id"]]["withdrawn_reason"]
        assert listed[other["id"]]["status"] == "entered_in_error"
        assert listed[other["id"]]["withdrawn_reason"].startswith(f"Condition/{second['id']} deleted through /fhir")
        # the refuted Condition stays the EHR's, as it sent it (not deleted): created, re-dated, refuted
        history = http.get(f"/fhir/Condition/{first['id']}/_history")
        assert history.status_code == 200 and history.json()["total"] == 3
        current = http.get(f"/fhir/Condition/{first['id']}")
        assert current.status_code == 200 and current.json()["verificationStatus"]["coding"][0]["code"] == "refuted"


def test_a_form_save_writes_its_observation_beside_the_ehrs_condition_and_never_touches_it(server):
    with server.client("investigator", "S01") as http:
        subject_id, patient_id = randomised(server, http)
        condition = push(http, recurrence_condition(patient_id, 93))
        reference = f"Condition/{condition['id']}"
        before = http.get(f"/fhir/{reference}").json()
        [entry] = of_condition(visit_entries(http, subject_id, "M3"), condition["id"])
        url = f"/api/v1/subjects/{subject_id}/forms/{FORM}/M3/entries/{entry['id']}"
        items = {
            "status": "recurrence",
            "assessment_date": day(93),
            "method": "mri",
            "recurrence_site": "intrahepatic",
            "recurrence_date": day(93),
        }
        # the items the Condition gives are the EHR's: another date or status would be a second, different fact
        refused = http.put(
            url, json={"items": {**items, "recurrence_date": day(91), "status": "recurrence"}, "reason": "x"}
        )
        assert refused.status_code == 422, refused.text
        [error] = refused.json()["errors"]
        assert (error["item"], error["rule"]) == ("recurrence_date", "ehr_value")
        assert reference in error["message"] and day(93) in error["message"]
        refused = http.put(
            url, json={"items": {"status": "ned", "assessment_date": day(93), "method": "ct"}, "reason": "x"}
        )
        assert refused.status_code == 422, refused.text
        assert {(e["item"], e["rule"]) for e in refused.json()["errors"]} >= {("status", "ehr_value")}
        assert http.get(f"/fhir/{reference}").json()["meta"]["versionId"] == "1"
        saved = http.put(url, json={"items": items, "reason": "completed from the imaging report"})
        assert saved.status_code == 200, saved.text
        view = saved.json()
        assert view["id"] == entry["id"] and view["source"] == "fhir" and view["status"] == "complete"
        observation = view["items"]["method"]["resource"]
        assert observation.startswith("Observation/")
        assert view["items"]["status"] == {**view["items"]["status"], "value": "recurrence", "resource": observation}
        assert view["items"]["recurrence_date"]["value"] == day(93)
        after = http.get(f"/fhir/{reference}")
        assert after.status_code == 200 and after.json()["resourceType"] == "Condition"
        assert after.json()["meta"]["versionId"] == before["meta"]["versionId"] == "1"
        written = http.get(f"/fhir/{observation}").json()
        assert written["valueCodeableConcept"]["coding"][0]["code"] == "disease_status-recurrence"

        # the endpoints count the recurrence once, on the one date both give
        rfs = endpoints(http, subject_id)["rfs"]
        assert (rfs["event"], rfs["date"], rfs["conflicts"]) == (True, day(93), [])

        # a second save (another method), then a withdrawal through the form: the Condition stays as it is
        again = http.put(
            url,
            json={"items": {**items, "method": "ct"}, "reason": "method corrected"},
            headers={"If-Match": f'W/"{view["version"]}"'},
        )
        assert again.status_code == 200, again.text
        assert again.json()["items"]["method"] == {**again.json()["items"]["method"], "value": "ct"}
        assert http.get(f"/fhir/{reference}").json()["meta"]["versionId"] == "1"
        withdrawn = http.post(
            f"/api/v1/subjects/{subject_id}/forms/{FORM}/entries/{entry['id']}/withdraw",
            json={"reason": "duplicate"},
            headers={"If-Match": f'W/"{again.json()["version"]}"'},
        )
        assert withdrawn.status_code == 200, withdrawn.text
        kept = http.get(f"/fhir/{reference}")
        assert kept.status_code == 200 and kept.json()["meta"]["versionId"] == "1"
        assert http.get(f"/fhir/{observation}").status_code == 410  # the form's own resource is deleted
        # the EHR's Condition is the endpoints' evidence still (CRF-SPEC 8), on its own date
        rfs = endpoints(http, subject_id)["rfs"]
        assert (rfs["event"], rfs["date"]) == (True, day(93))
        assert (rfs["evidence"]["resourceType"], rfs["evidence"]["id"]) == ("Condition", condition["id"])


def test_an_ehr_withdrawal_deletes_the_forms_observation_beside_the_condition(server):
    with server.client("investigator", "S01") as http:
        subject_id, patient_id = randomised(server, http)
        assessed = http.post(
            f"/api/v1/subjects/{subject_id}/forms/{FORM}/M3/entries",
            json={"items": {"status": "ned", "assessment_date": day(80), "method": "ct"}},
        )
        assert assessed.status_code == 201, assessed.text
        condition = push(http, recurrence_condition(patient_id, 96))
        [entry] = of_condition(visit_entries(http, subject_id, "M3"), condition["id"])
        url = f"/api/v1/subjects/{subject_id}/forms/{FORM}/M3/entries/{entry['id']}"
        items = {
            "status": "recurrence",
            "assessment_date": day(96),
            "method": "ct",
            "recurrence_site": "both",
            "recurrence_date": day(96),
        }
        saved = http.put(url, json={"items": items, "reason": "completed"})
        assert saved.status_code == 200, saved.text
        observation = saved.json()["items"]["method"]["resource"]
        assert endpoints(http, subject_id)["rfs"]["date"] == day(96)
        push(http, recurrence_condition(patient_id, 96, "entered-in-error"), condition["id"])
        withdrawn = http.get(url).json()
        assert withdrawn["status"] == "entered_in_error"
        assert http.get(f"/fhir/{observation}").status_code == 410
        rfs = endpoints(http, subject_id)["rfs"]
        assert (rfs["event"], rfs["date"]) == (False, day(80))  # censored at the ned assessment
