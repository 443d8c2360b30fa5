"""Derived endpoints (issue 15 part 5, CRF-SPEC 8): RFS and OS with event, days, date, evidence and conflicts,
recomputed in the transaction of every write through either door, on hand-worked cases; the open items; the
route's access rules and access log; the sponsor's de-identified endpoints dataset. Real HTTP, SQLite and
PostgreSQL.

Randomisation is never back-dated (CRF-SPEC 9.7), so a subject randomised today has no follow-up yet. The
dated cases therefore give an enrolled subject an allocation row dated day 20 after surgery, written straight
into the allocation table (append-only: an insert is what the allocation itself does), and enter every
follow-up fact through the public doors; one case randomises through the API and reads day 0."""

import csv
import io
import json
import re
import secrets
import time
import uuid
from datetime import UTC, date, datetime

import pytest
from sqlmodel import Session, select

from ecrf.endpoints.models import EndpointState
from ecrf.randomisation.models import RandomisationAllocation
from tests.crf_support import SURGERY, day, enrol, save
from tests.test_randomisation import eligible, randomise

FHIR_JSON = {"Content-Type": "application/fhir+json"}
LOCAL = "http://example.org/fhir/CodeSystem/nct04163237"
R0 = 20  # the randomisation date: day(20), day 0 of the endpoints


def days(offset: int) -> int:
    """Endpoint days of a date given as days after surgery."""
    return offset - R0


def entries(subject_id: str, form_id: str, visit: str | None = None) -> str:
    return f"/api/v1/subjects/{subject_id}/forms/{form_id}/{visit + '/' if visit else ''}entries"


def patient_of(http, subject_id: str) -> str:
    response = http.get(f"/fhir/ResearchSubject/{subject_id}")
    assert response.status_code == 200, response.text
    return response.json()["individual"]["reference"].split("/")[1]


def randomised(server, http, arm: str = "SORA") -> tuple[str, str]:
    """An enrolled subject (surgery on day 0) allocated on day(20); (subject id, patient id)."""
    subject_id = enrol(http)["id"]
    assert save(http, subject_id, "surgery").status_code == 201
    patient_id = patient_of(http, subject_id)
    number = f"T-{uuid.uuid4().hex[:12]}"
    research_subject = http.get(f"/fhir/ResearchSubject/{subject_id}").json()
    scheme = server.runtime.randomisation
    allocated = http.put(
        f"/fhir/ResearchSubject/{subject_id}",
        headers=FHIR_JSON,
        json={
            **research_subject,
            "status": "on-study",
            "assignedArm": arm,
            "identifier": research_subject.get("identifier", [])
            + [{"use": "official", "system": scheme.identifier_system, "value": number}],
        },
    )
    assert allocated.status_code == 200, allocated.text  # what the allocation writes, as the allocation writes it
    with Session(server.runtime.engine) as session:
        session.add(
            RandomisationAllocation(
                study_id=server.runtime.study.id,
                stratum="S01-A",
                sequence=10_000 + secrets.randbelow(10**9),
                subject_id=subject_id,
                patient_id=patient_id,
                site="S01",
                number=number,
                arm=arm,
                randomisation_date=date.fromisoformat(day(R0)),
                allocated_at=datetime.now(UTC),
                allocated_by="test",
                allocated_role="investigator",
            )
        )
        session.commit()
    return subject_id, patient_id


def assess(http, subject_id: str, status: str, when: int, recurrence: int | None = None, visit: str = "M3") -> dict:
    items = {"status": status, "assessment_date": day(when), "method": "ct"}
    if recurrence is not None:
        items |= {"recurrence_site": "intrahepatic", "recurrence_date": day(recurrence)}
    created = http.post(entries(subject_id, "disease_assessment", visit), json={"items": items})
    assert created.status_code == 201, created.text
    return created.json()


def end_of_study(http, subject_id: str, **items) -> dict:
    created = http.post(entries(subject_id, "end_of_study"), json={"items": items})
    assert created.status_code == 201, created.text
    return created.json()


def died(http, subject_id: str, death: int, end: int | None = None) -> dict:
    return end_of_study(
        http,
        subject_id,
        status="died",
        end_date=day(end or death),
        death_date=day(death),
        cause_of_death="disease_recurrence",
    )


def adverse_event(http, subject_id: str, onset: int, grade: int = 2) -> dict:
    items = {"ctcae_term": "rash", "onset_date": day(onset), "grade": grade, "serious": False, "outcome": "recovering"}
    if grade == 5:
        items |= {
            "ctcae_term": "hepatitis_immune",
            "serious": True,
            "seriousness_criteria": ["death"],
            "outcome": "fatal",
            "resolution_date": day(onset),
        }
    created = http.post(entries(subject_id, "adverse_event"), json={"items": items})
    assert created.status_code == 201, created.text
    return created.json()


def withdraw(http, subject_id: str, form_id: str, entry: dict, visit: str | None = None) -> None:
    response = http.post(
        f"{entries(subject_id, form_id, visit)}/{entry['id']}/withdraw", json={"reason": "wrong subject"}
    )
    assert response.status_code == 200, response.text


def endpoints(http, subject_id: str) -> dict:
    response = http.get(f"/api/v1/subjects/{subject_id}/endpoints")
    assert response.status_code == 200, response.text
    return response.json()


def resource_of(entry: dict, item: str) -> tuple[str, str]:
    resource_type, resource_id = entry["items"][item]["resource"].split("/")
    return resource_type, resource_id


def decided_by(endpoint: dict, entry: dict, item: str) -> None:
    resource_type, resource_id = resource_of(entry, item)
    evidence = endpoint["evidence"]
    assert (evidence["resourceType"], evidence["id"]) == (resource_type, resource_id), endpoint
    assert isinstance(evidence["version"], int) and evidence["version"] >= 1


def recurrence_condition(patient_id: str, onset: int, verification: str = "confirmed") -> dict:
    condition = {
        "resourceType": "Condition",
        "subject": {"reference": f"Patient/{patient_id}"},
        "code": {"coding": [{"system": LOCAL, "code": "recurrence", "display": "HCC recurrence"}]},
        "verificationStatus": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": verification}]
        },
        "onsetDateTime": day(onset),
    }
    if verification != "entered-in-error":
        condition["clinicalStatus"] = {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]
        }
    return condition


def test_recurrence_then_death_rfs_at_the_recurrence_os_at_death_and_withdrawals_recompute(server):
    with server.client("investigator", "S01") as http:
        subject_id, _ = randomised(server, http)
        assess(http, subject_id, "ned", 60)
        recurrence = assess(http, subject_id, "recurrence", 92, recurrence=90)
        death = died(http, subject_id, 97, end=98)
        view = endpoints(http, subject_id)
        assert view["randomised"] is True and view["randomisation_date"] == day(R0) and view["arm"] == "SORA"
        rfs, os = view["rfs"], view["os"]
        assert (rfs["event"], rfs["days"], rfs["date"], rfs["conflicts"]) == (True, days(90), day(90), [])
        decided_by(rfs, recurrence, "recurrence_date")
        assert rfs["evidence"]["item"] == "recurrence_date"
        assert (os["event"], os["days"], os["date"], os["conflicts"]) == (True, days(97), day(97), [])
        decided_by(os, death, "death_date")
        assert view["open_items"] == [] and view["computed_at"]
        # withdrawing the recurrence: death is the first event of rfs now
        withdraw(http, subject_id, "disease_assessment", recurrence)
        rfs = endpoints(http, subject_id)["rfs"]
        assert (rfs["event"], rfs["days"]) == (True, days(97))
        decided_by(rfs, death, "death_date")
        # withdrawing the end of study as well: censored at the last NED assessment, os at the last date alive
        withdraw(http, subject_id, "end_of_study", death)
        view = endpoints(http, subject_id)
        assert (view["rfs"]["event"], view["rfs"]["days"], view["rfs"]["date"]) == (False, days(60), day(60))
        assert view["os"]["event"] is False and view["os"]["days"] == days(60)
    with server.client("data_manager") as http:
        trail = http.get(f"/api/v1/subjects/{subject_id}/audit", params={"limit": 500}).json()["items"]
    changes = [e["new_value"] for e in trail if e["action"] == "endpoints.recomputed"]
    assert f"rfs event day {days(90)}; os event day {days(97)}" in changes  # audited as the system's derivation
    assert changes[-1] == f"rfs censored day {days(60)}; os censored day {days(60)}"
    assert {e["source"] for e in trail if e["action"] == "endpoints.recomputed"} == {"system"}


def test_death_without_recurrence_is_the_rfs_event_too(server):
    with server.client("coordinator", "S01") as http:
        subject_id, _ = randomised(server, http)
        assess(http, subject_id, "ned", 60)
        death = died(http, subject_id, 80)
        view = endpoints(http, subject_id)
    for name in ("rfs", "os"):
        assert (view[name]["event"], view[name]["days"], view[name]["date"]) == (True, days(80), day(80))
        decided_by(view[name], death, "death_date")


def test_censored_at_the_last_ned_assessment_and_os_at_the_latest_date_of_any_data(server):
    with server.client("coordinator", "S01") as http:
        subject_id, _ = randomised(server, http)
        first = assess(http, subject_id, "ned", 60)
        view = endpoints(http, subject_id)
        assert (view["rfs"]["event"], view["rfs"]["days"]) == (False, days(60))
        decided_by(view["rfs"], first, "assessment_date")
        last = assess(http, subject_id, "ned", 92)
        unevaluable = assess(http, subject_id, "not_evaluable", 95, visit="M6")
        adverse_event(http, subject_id, 93)
        view = endpoints(http, subject_id)
    rfs, os = view["rfs"], view["os"]
    assert (rfs["event"], rfs["days"], rfs["date"]) == (False, days(92), day(92))  # not_evaluable does not censor
    decided_by(rfs, last, "assessment_date")
    assert (os["event"], os["days"], os["date"]) == (False, days(95), day(95))
    assert (
        os["evidence"]["resourceType"] == "Observation"
        and os["evidence"]["id"] == resource_of(unevaluable, "status")[1]
    )


def test_no_assessment_censors_rfs_at_day_0(server):
    with server.client("coordinator", "S01") as http:
        subject_id, _ = randomised(server, http)
        adverse_event(http, subject_id, 30)
        view = endpoints(http, subject_id)
    assert (view["rfs"]["event"], view["rfs"]["days"], view["rfs"]["date"]) == (False, 0, day(R0))
    assert view["rfs"]["evidence"] == {"randomisation_date": day(R0)}
    assert (view["os"]["event"], view["os"]["days"]) == (False, days(30))


def test_lost_to_follow_up_is_censored_at_the_last_known_alive_date(server):
    with server.client("coordinator", "S01") as http:
        subject_id, _ = randomised(server, http)
        adverse_event(http, subject_id, 40)
        assess(http, subject_id, "ned", 60)
        end = end_of_study(
            http, subject_id, status="lost_to_follow_up", end_date=day(98), last_known_alive_date=day(96)
        )
        view = endpoints(http, subject_id)
    os = view["os"]
    # the end-of-study date is when the site closed the record, not a sighting: day 96 is the last date alive
    assert (os["event"], os["days"], os["date"]) == (False, days(96), day(96))
    decided_by(os, end, "last_known_alive_date")
    assert (view["rfs"]["event"], view["rfs"]["days"]) == (False, days(60))


def test_an_ehr_death_date_counts_before_the_form_and_a_second_different_one_is_a_conflict(server):
    with server.client("investigator", "S01") as http:
        subject_id, patient_id = randomised(server, http)
        assess(http, subject_id, "ned", 60)
        patient = http.get(f"/fhir/Patient/{patient_id}").json()
        pushed = http.put(
            f"/fhir/Patient/{patient_id}", json={**patient, "deceasedDateTime": day(85)}, headers=FHIR_JSON
        )
        assert pushed.status_code == 200, pushed.text
        os = endpoints(http, subject_id)["os"]  # death evidence before any end-of-study form
        assert (os["event"], os["days"], os["conflicts"]) == (True, days(85), [])
        assert (os["evidence"]["resourceType"], os["evidence"]["id"]) == ("Patient", patient_id)
        assert os["evidence"]["version"] == int(pushed.json()["meta"]["versionId"])
        form = died(http, subject_id, 90)
        view = endpoints(http, subject_id)
    for name in ("os", "rfs"):
        endpoint = view[name]
        assert (endpoint["event"], endpoint["days"], endpoint["date"]) == (True, days(85), day(85))  # the earliest
        [conflict] = endpoint["conflicts"]
        assert conflict["kind"] == "death_dates_differ" and conflict["dates"] == [day(85), day(90)]
        assert conflict["used"] == day(85) and "query" in conflict["suggestion"]
        assert {(e["resourceType"], e["id"]) for e in conflict["evidence"]} == {
            ("Patient", patient_id),
            resource_of(form, "death_date"),
        }


def test_a_death_without_a_date_is_a_conflict_and_an_open_item_until_a_date_is_recorded(server):
    """A Patient pushed with deceasedBoolean true (no date): death evidence without a date, reported on both
    endpoints as a conflict and listed as an open item; the endpoints stay censored (no date to count to) until
    the end-of-study form records the date of death, which replaces the boolean."""
    with server.client("investigator", "S01") as http:
        subject_id, patient_id = randomised(server, http)
        assess(http, subject_id, "ned", 60)
        patient = http.get(f"/fhir/Patient/{patient_id}").json()
        alive = http.put(f"/fhir/Patient/{patient_id}", json={**patient, "deceasedBoolean": False}, headers=FHIR_JSON)
        assert alive.status_code == 200, alive.text
        view = endpoints(http, subject_id)
        assert view["open_items"] == [] and view["os"]["conflicts"] == []  # not deceased: nothing to report
        pushed = http.put(
            f"/fhir/Patient/{patient_id}", json={**alive.json(), "deceasedBoolean": True}, headers=FHIR_JSON
        )
        assert pushed.status_code == 200, pushed.text
        again = http.put(  # a later version carrying the same flag: the evidence stays the version that set it
            f"/fhir/Patient/{patient_id}", json={**pushed.json(), "gender": "female"}, headers=FHIR_JSON
        )
        assert again.status_code == 200, again.text
        view = endpoints(http, subject_id)
        evidence = {
            "resourceType": "Patient",
            "id": patient_id,
            "version": int(pushed.json()["meta"]["versionId"]),
            "item": "deceasedBoolean",
        }
        for name in ("os", "rfs"):
            endpoint = view[name]
            assert (endpoint["event"], endpoint["days"]) == (False, days(60)), endpoint  # censored, not an event
            [conflict] = endpoint["conflicts"]
            assert conflict["kind"] == "death_without_date" and conflict["evidence"] == [evidence]
            assert "death recorded without a date" in conflict["message"] and "query" in conflict["suggestion"]
        [item] = view["open_items"]
        assert item["kind"] == "death_without_date" and item["evidence"] == evidence
        assert "death recorded without a date" in item["message"]
        form = died(http, subject_id, 70)
        view = endpoints(http, subject_id)
        assert "deceasedBoolean" not in http.get(f"/fhir/Patient/{patient_id}").json()  # the date replaced it
    assert view["open_items"] == [] and view["os"]["conflicts"] == [] and view["rfs"]["conflicts"] == []
    assert (view["os"]["event"], view["os"]["days"]) == (True, days(70))
    decided_by(view["os"], form, "death_date")


def test_an_ehr_recurrence_condition_counts_unless_refuted_or_entered_in_error(server):
    with server.client("investigator", "S01") as http:
        subject_id, patient_id = randomised(server, http)
        assess(http, subject_id, "ned", 60)
        refuted = http.post("/fhir/Condition", json=recurrence_condition(patient_id, 65, "refuted"), headers=FHIR_JSON)
        assert refuted.status_code == 201, refuted.text
        assert endpoints(http, subject_id)["rfs"]["event"] is False
        pushed = http.post("/fhir/Condition", json=recurrence_condition(patient_id, 70), headers=FHIR_JSON)
        assert pushed.status_code == 201, pushed.text
        rfs = endpoints(http, subject_id)["rfs"]
        assert (rfs["event"], rfs["days"], rfs["date"]) == (True, days(70), day(70))
        assert (rfs["evidence"]["resourceType"], rfs["evidence"]["id"]) == ("Condition", pushed.json()["id"])
        voided = http.put(
            f"/fhir/Condition/{pushed.json()['id']}",
            headers=FHIR_JSON,
            json={**recurrence_condition(patient_id, 70, "entered-in-error"), "id": pushed.json()["id"]},
        )
        assert voided.status_code == 200, voided.text
        rfs = endpoints(http, subject_id)["rfs"]
        assert (rfs["event"], rfs["days"]) == (False, days(60))


def disease_status(patient_id: str, status: str, assessed: int, recurrence: int) -> dict:
    """A disease status Observation (mCODE CancerDiseaseStatus) as an EHR sends it: a recurrence."""
    return {
        "resourceType": "Observation",
        "status": status,
        "subject": {"reference": f"Patient/{patient_id}"},
        "code": {"coding": [{"system": "http://loinc.org", "code": "97509-4"}]},
        "effectiveDateTime": day(assessed),
        "valueCodeableConcept": {"coding": [{"system": LOCAL, "code": "disease_status-recurrence"}]},
        "component": [
            {"code": {"coding": [{"system": LOCAL, "code": "recurrence-date"}]}, "valueDateTime": day(recurrence)}
        ],
    }


def test_an_ehr_disease_status_counts_once_final_and_a_preliminary_one_is_no_evidence(server):
    with server.client("investigator", "S01") as http:
        subject_id, patient_id = randomised(server, http)
        assess(http, subject_id, "ned", 60)
        pushed = http.post(
            "/fhir/Observation", json=disease_status(patient_id, "preliminary", 75, 74), headers=FHIR_JSON
        )
        assert pushed.status_code == 201, pushed.text
        view = endpoints(http, subject_id)
        assert (view["rfs"]["event"], view["rfs"]["days"]) == (False, days(60))  # CRF-SPEC 9.3
        assert view["os"]["days"] == days(60)  # nor is its date evidence the subject was alive
        observation_id = pushed.json()["id"]
        final = http.put(
            f"/fhir/Observation/{observation_id}",
            headers=FHIR_JSON,
            json={**disease_status(patient_id, "final", 75, 74), "id": observation_id},
        )
        assert final.status_code == 200, final.text
        view = endpoints(http, subject_id)
    rfs = view["rfs"]
    assert (rfs["event"], rfs["days"], rfs["date"]) == (True, days(74), day(74))
    assert (rfs["evidence"]["resourceType"], rfs["evidence"]["id"], rfs["evidence"]["version"]) == (
        "Observation",
        observation_id,
        int(final.json()["meta"]["versionId"]),
    )
    assert view["os"]["days"] == days(75)


def test_a_recurrence_after_death_is_a_conflict_and_death_decides(server):
    with server.client("investigator", "S01") as http:
        subject_id, patient_id = randomised(server, http)
        death = died(http, subject_id, 80)
        late = http.post("/fhir/Condition", json=recurrence_condition(patient_id, 85), headers=FHIR_JSON)
        assert late.status_code == 201, late.text
        rfs = endpoints(http, subject_id)["rfs"]
    assert (rfs["event"], rfs["days"]) == (True, days(80))
    decided_by(rfs, death, "death_date")
    [conflict] = rfs["conflicts"]
    assert conflict["kind"] == "recurrence_after_death" and conflict["used"] == day(80)
    assert [(e["resourceType"], e["id"]) for e in conflict["evidence"]] == [("Condition", late.json()["id"])]


def test_a_grade_5_adverse_event_without_a_death_record_is_an_open_item(server):
    with server.client("investigator", "S01") as http:
        subject_id, _ = randomised(server, http)
        fatal = adverse_event(http, subject_id, 50, grade=5)
        [item] = endpoints(http, subject_id)["open_items"]
        assert item["kind"] == "fatal_adverse_event_without_death"
        assert (item["evidence"]["resourceType"], item["evidence"]["id"]) == resource_of(fatal, "grade")
        early = died(http, subject_id, 48, end=55)  # a death before the AE's onset does not settle it
        assert [i["kind"] for i in endpoints(http, subject_id)["open_items"]] == ["fatal_adverse_event_without_death"]
        withdraw(http, subject_id, "end_of_study", early)
        died(http, subject_id, 52)
        view = endpoints(http, subject_id)
    assert view["open_items"] == []
    assert (view["os"]["event"], view["os"]["days"]) == (True, days(52))


def test_a_grade_5_event_is_settled_by_a_death_on_or_after_its_onset_at_save_time_and_in_the_endpoints(server):
    """CRF-SPEC 7.5 "died on the AE's onset or resolution date or later", read as: a death on the onset date or
    later settles the event (the resolution date is never before the onset, and a fatal event's resolution is
    the death), the same at save time (forms/subject_checks.yaml, grade5_without_death) and on the endpoints'
    open item: a death on the onset date settles it, even before the recorded resolution date; a death the day
    before the onset does not."""
    with server.client("investigator", "S01") as http:
        subject_id, _ = randomised(server, http)
        died(http, subject_id, 50, end=55)
        fatal = {
            "ctcae_term": "hepatitis_immune",
            "grade": 5,
            "serious": True,
            "seriousness_criteria": ["death"],
            "outcome": "fatal",
        }
        on_the_day = http.post(
            entries(subject_id, "adverse_event"),
            json={"items": {**fatal, "onset_date": day(50), "resolution_date": day(52)}},
        )
        assert on_the_day.status_code == 201, on_the_day.text
        assert "grade5_without_death" not in {w["rule"] for w in on_the_day.json()["warnings"]}
        assert endpoints(http, subject_id)["open_items"] == []
        after = http.post(
            entries(subject_id, "adverse_event"),
            json={"items": {**fatal, "onset_date": day(51), "resolution_date": day(51)}},
        )
        assert after.status_code == 201, after.text
        assert ("grade", "grade5_without_death") in {(w["item"], w["rule"]) for w in after.json()["warnings"]}
        [item] = endpoints(http, subject_id)["open_items"]
    assert item["kind"] == "fatal_adverse_event_without_death" and day(51) in item["message"]
    assert (item["evidence"]["resourceType"], item["evidence"]["id"]) == resource_of(after.json(), "grade")


def test_data_after_the_end_of_study_are_an_open_item_and_still_alive_evidence(server):
    with server.client("coordinator", "S01") as http:
        subject_id, _ = randomised(server, http)
        assess(http, subject_id, "ned", 55)
        end_of_study(http, subject_id, status="completed", end_date=day(60))
        assert endpoints(http, subject_id)["open_items"] == []
        late = adverse_event(http, subject_id, 70)
        view = endpoints(http, subject_id)
    [item] = view["open_items"]
    assert item["kind"] == "data_after_end_of_study" and item["end_of_study"]["date"] == day(60)
    assert resource_of(late, "onset_date") in {(e.get("resourceType"), e.get("id")) for e in item["evidence"]}
    assert (view["os"]["event"], view["os"]["days"], view["os"]["date"]) == (False, days(70), day(70))


def test_randomising_through_the_api_computes_day_0_in_the_allocation_transaction(server):
    with server.client("investigator", "S01") as http:
        subject_id = eligible(http)
        not_yet = endpoints(http, subject_id)
        assert not_yet["randomised"] is False and not_yet["rfs"] is None and not_yet["os"] is None
        assert "not randomised" in not_yet["reason"]
        allocation = randomise(http, subject_id)
        assert allocation.status_code == 201, allocation.text
        with Session(server.runtime.engine) as session:  # kept by the derived hook, not computed on read
            state = session.exec(select(EndpointState).where(EndpointState.subject_id == subject_id)).one()
        assert (state.rfs_days, state.rfs_event, state.os_days, state.os_event) == (0, False, 0, False)
        view = endpoints(http, subject_id)
    assert view["randomisation_date"] == allocation.json()["randomisation_date"]
    assert (view["rfs"]["days"], view["os"]["days"], view["rfs"]["event"]) == (0, 0, False)
    assert view["computed_at"] is not None


def test_a_version_1_allocation_counts_from_its_entered_randomisation_date(server):
    """Allocations entered under version 1 (the arm typed in) stay as they are (README, Randomisation): day 0
    is the subject's randomisation_date item."""
    with server.client("investigator", "S01") as http:
        subject_id = enrol(http)["id"]
        assert save(http, subject_id, "surgery").status_code == 201
        patient_id = patient_of(http, subject_id)
        research_subject = http.get(f"/fhir/ResearchSubject/{subject_id}").json()
        typed = http.put(
            f"/fhir/ResearchSubject/{subject_id}", headers=FHIR_JSON, json={**research_subject, "assignedArm": "SORA"}
        )
        assert typed.status_code == 200, typed.text
        assert endpoints(http, subject_id)["randomised"] is False  # no randomisation date yet
        dated = http.post(
            "/fhir/Observation",
            headers=FHIR_JSON,
            json={
                "resourceType": "Observation",
                "status": "final",
                "subject": {"reference": f"Patient/{patient_id}"},
                "category": [
                    {
                        "coding": [
                            {"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "survey"}
                        ]
                    }
                ],
                "code": {"coding": [{"system": LOCAL, "code": "randomisation-date"}]},
                "effectiveDateTime": day(R0),
                "valueDateTime": day(R0),
            },
        )
        assert dated.status_code == 201, dated.text
        assert http.get(f"/api/v1/subjects/{subject_id}/randomisation").json()["method"] == "entered"
        assess(http, subject_id, "ned", 60)
        view = endpoints(http, subject_id)
        assert (view["randomised"], view["randomisation_method"], view["arm"], view["stratum"]) == (
            True,
            "entered",
            "SORA",
            None,
        )
        assert view["randomisation_date"] == day(R0)
        assert (view["rfs"]["event"], view["rfs"]["days"]) == (False, days(60))
        taken_back = http.put(
            f"/fhir/ResearchSubject/{subject_id}",
            headers=FHIR_JSON,
            json={k: v for k, v in typed.json().items() if k not in ("assignedArm", "meta")},
        )
        assert taken_back.status_code == 200, taken_back.text
        assert endpoints(http, subject_id)["randomised"] is False
    with Session(server.runtime.engine) as session:
        assert session.get(EndpointState, subject_id) is None


def test_the_route_is_for_identified_roles_at_their_sites_and_is_access_logged(server):
    with server.client("coordinator", "S01") as http:
        subject_id, patient_id = randomised(server, http)
    with server.client("sponsor") as http:
        assert http.get(f"/api/v1/subjects/{subject_id}/endpoints").status_code == 403
    with server.client("investigator", "S02") as http:
        assert http.get(f"/api/v1/subjects/{subject_id}/endpoints").status_code == 404
        assert http.get("/api/v1/subjects/nobody/endpoints").status_code == 404
    reader = f"monitor-{uuid.uuid4().hex[:8]}"
    with server.client("monitor", "S01", sub=reader) as http:
        assert http.get(f"/api/v1/subjects/{subject_id}/endpoints").status_code == 200
    with server.client("admin") as admin:
        log = admin.get("/api/v1/access-log", params={"subject": subject_id, "sub": reader})
        assert log.status_code == 200, log.text
    shown = [e for e in log.json()["items"] if e["interaction"] == "endpoints.read"]
    assert [(e["who"]["role"], e["patient_id"]) for e in shown] == [("monitor", patient_id)]
    assert shown[0]["route"].endswith(f"{subject_id}/endpoints")


def _download(http, url: str) -> str:
    response = http.get(url)
    assert response.status_code == 200, response.text
    return response.text


def test_the_sponsor_endpoints_dataset_has_days_and_pseudonyms_only(server):
    from ecrf.export.bulk import deidentifier

    with server.client("investigator", "S01") as http:
        subject_id, patient_id = randomised(server, http, arm="PD1_SORA")
        assess(http, subject_id, "recurrence", 92, recurrence=90)
        died(http, subject_id, 97)
    with server.client("sponsor") as http:
        assert http.get("/api/v1/exports/endpoints").status_code == 400  # asynchronous only
        kicked = http.get("/api/v1/exports/endpoints", headers={"Prefer": "respond-async"})
        assert kicked.status_code == 202, kicked.text
        status_url = kicked.headers["Content-Location"]
        deadline = time.monotonic() + 60
        while (status := http.get(status_url)).status_code == 202 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert status.status_code == 200, status.text
        files = {entry["type"]: entry for entry in status.json()["output"]}
        text = _download(http, files["endpoints"]["url"])
        manifest = json.loads(_download(http, files["manifest"]["url"]))
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == ["subject", "arm", "stratum", "rfs_days", "rfs_event", "os_days", "os_event"]
    assert files["endpoints"]["count"] == len(rows) == manifest["rows"]
    import hashlib

    assert manifest["sha256"] == files["endpoints"]["sha256"] == hashlib.sha256(text.encode()).hexdigest()
    pseudonym = deidentifier(server.runtime).pseudonym(patient_id)
    [row] = [r for r in rows if r["subject"] == pseudonym]
    assert row == {
        "subject": pseudonym,
        "arm": "PD1_SORA",
        "stratum": "S01-A",
        "rfs_days": str(days(90)),
        "rfs_event": "1",
        "os_days": str(days(97)),
        "os_event": "1",
    }
    assert subject_id not in text and patient_id not in text
    assert not re.search(r"\d{4}-\d{2}-\d{2}", text), "no dates in the dataset"
    assert SURGERY.isoformat() not in json.dumps(manifest)


@pytest.mark.parametrize("role", ["investigator", "monitor"])
def test_only_exporters_may_kick_off_the_dataset(server, role):
    with server.client(role, "S01") as http:
        assert http.get("/api/v1/exports/endpoints", headers={"Prefer": "respond-async"}).status_code == 403
