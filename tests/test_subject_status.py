"""Subject status from the data (issue 15 part 4, CRF-SPEC 7.5): the end_of_study entry sets
ResearchSubject.status and period.end and Patient.deceasedDateTime in the write's transaction, through either
door; withdrawing the entry undoes it; an EHR's other death date is never overwritten. Real HTTP, SQLite and
PostgreSQL."""

from tests.crf_support import day, enrol, save
from tests.eligibility_support import TODAY
from tests.test_randomisation import eligible, randomise

FHIR_JSON = {"Content-Type": "application/fhir+json"}


def end_url(subject_id: str) -> str:
    return f"/api/v1/subjects/{subject_id}/forms/end_of_study/entries"


def subject_and_patient(http, subject_id: str) -> tuple[dict, dict]:
    research_subject = http.get(f"/fhir/ResearchSubject/{subject_id}")
    assert research_subject.status_code == 200, research_subject.text
    patient_id = research_subject.json()["individual"]["reference"].split("/")[1]
    return research_subject.json(), http.get(f"/fhir/Patient/{patient_id}").json()


def test_a_randomised_subject_goes_off_study_and_a_death_date_reaches_the_patient(server):
    with server.client("investigator", "S01") as http:
        subject_id = eligible(http)
        assert randomise(http, subject_id).status_code == 201
        assert subject_and_patient(http, subject_id)[0]["status"] == "on-study"
        end = TODAY.isoformat()
        created = http.post(
            end_url(subject_id),
            json={
                "items": {"status": "died", "end_date": end, "death_date": end, "cause_of_death": "disease_recurrence"}
            },
        )
        assert created.status_code == 201, created.text
        research_subject, patient = subject_and_patient(http, subject_id)
        assert research_subject["status"] == "off-study" and research_subject["period"]["end"] == end
        assert research_subject["assignedArm"] in ("PD1_SORA", "SORA")  # the allocation is untouched
        shown = http.get(f"/api/v1/subjects/{subject_id}").json()  # the eCRF door's subject says the same
        assert (shown["status"], shown["end_date"]) == ("off-study", end), shown
        assert patient["deceasedDateTime"] == end
        withdrawn = http.post(
            f"{end_url(subject_id)}/{created.json()['id']}/withdraw", json={"reason": "wrong subject"}
        )
        assert withdrawn.status_code == 200, withdrawn.text
        research_subject, _ = subject_and_patient(http, subject_id)
        assert research_subject["status"] == "on-study" and "end" not in research_subject.get("period", {})
        shown = http.get(f"/api/v1/subjects/{subject_id}").json()
        assert (shown["status"], shown["end_date"]) == ("on-study", None), shown
    with server.client("data_manager") as http:
        trail = http.get(f"/api/v1/subjects/{subject_id}/audit", params={"limit": 500}).json()["items"]
    reasons = {
        e["reason"] for e in trail if e["resource"] == f"ResearchSubject/{subject_id}" and e["source"] == "system"
    }
    assert "end_of_study: status off-study" in reasons and "end_of_study: status on-study" in reasons


def test_a_screen_failure_never_randomised_is_withdrawn_or_ineligible(server):
    with server.client("coordinator", "S01") as http:
        subject = enrol(http)["id"]
        assert save(http, subject, "surgery").status_code == 201
        created = http.post(end_url(subject), json={"items": {"status": "screen_failure", "end_date": day(20)}})
        assert created.status_code == 201, created.text
        research_subject, patient = subject_and_patient(http, subject)
        assert research_subject["status"] == "withdrawn" and research_subject["period"]["end"] == day(20)
        assert "deceasedDateTime" not in patient
        ineligible = eligible(
            http,
            {
                "resources": {
                    "bclc_stage": {
                        "valueCodeableConcept": {
                            "coding": [
                                {"system": "http://example.org/fhir/CodeSystem/nct04163237", "code": "bclc_stage-D"}
                            ]
                        }
                    }
                }
            },
        )
        assert subject_and_patient(http, ineligible)[0]["status"] == "ineligible"
        ended = http.post(
            end_url(ineligible), json={"items": {"status": "screen_failure", "end_date": TODAY.isoformat()}}
        )
        assert ended.status_code == 201, ended.text
        assert subject_and_patient(http, ineligible)[0]["status"] == "ineligible"
        assert subject_and_patient(http, ineligible)[0]["period"]["end"] == TODAY.isoformat()


def test_an_ehr_death_date_is_not_overwritten(server):
    with server.client("investigator", "S01") as http:
        subject_id = eligible(http)
        assert randomise(http, subject_id).status_code == 201
        _, patient = subject_and_patient(http, subject_id)
        ehr_death = TODAY.isoformat()
        pushed = http.put(
            f"/fhir/Patient/{patient['id']}", json={**patient, "deceasedDateTime": ehr_death}, headers=FHIR_JSON
        )
        assert pushed.status_code == 200, pushed.text
        created = http.post(
            end_url(subject_id),
            json={
                "items": {"status": "died", "end_date": ehr_death, "death_date": day(30), "cause_of_death": "unknown"}
            },
        )
        assert created.status_code == 201, created.text
        research_subject, patient = subject_and_patient(http, subject_id)
        assert research_subject["status"] == "off-study"
        assert patient["deceasedDateTime"] == ehr_death  # the EHR's date stays: a conflict, not an overwrite


def test_an_end_of_study_pushed_through_fhir_ends_participation_the_same_way(server):
    local = "http://example.org/fhir/CodeSystem/nct04163237"
    with server.client("investigator", "S01") as http:
        subject_id = eligible(http)
        assert randomise(http, subject_id).status_code == 201
        _, patient = subject_and_patient(http, subject_id)
        pushed = http.post(
            "/fhir/Observation",
            headers=FHIR_JSON,
            json={
                "resourceType": "Observation",
                "status": "final",
                "subject": {"reference": f"Patient/{patient['id']}"},
                "code": {"coding": [{"system": local, "code": "end-of-study"}]},
                "valueCodeableConcept": {"coding": [{"system": local, "code": "end_of_study_status-completed"}]},
                "effectiveDateTime": TODAY.isoformat(),
            },
        )
        assert pushed.status_code == 201, pushed.text
        entries = http.get(end_url(subject_id)).json()
        assert [e["source"] for e in entries] == ["fhir"]
        research_subject, _ = subject_and_patient(http, subject_id)
        assert research_subject["status"] == "off-study" and research_subject["period"]["end"] == TODAY.isoformat()
