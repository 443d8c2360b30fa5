"""Cross-form checks (forms/subject_checks.yaml; CRF-SPEC 7.1, 7.2, 7.5): an entry against facts of its subject
(arm, randomisation date, consent date, the live end of study). Warnings come with the save (item and rule), a
deviation check flags the entry as a protocol deviation (audited as a visit-window deviation is), and the FHIR
door is never refused by them. Real HTTP, SQLite and PostgreSQL."""

import json

import pytest
from crf_support import VALID, day, enrol, entered_randomisation, save
from fhir_builders import FHIR_JSON, MRN, bundle, post, urn

LOCAL = "http://example.org/fhir/CodeSystem/nct04163237"
SCREENING_FORMS = ("surgery", "demographics", "baseline", "labs", "pathology", "afp", "history")


def entries_url(subject_id: str, form_id: str) -> str:
    return f"/api/v1/subjects/{subject_id}/forms/{form_id}/entries"


def randomised(server, arm: str) -> dict:
    """A subject consented on day 14, screened, allocated `arm` on day 22 (a version-1 allocation: the arm
    entered through the form service, so the test chooses it)."""
    with server.client("investigator", "S01") as http:
        subject = enrol(http, "S01")
        for form_id in SCREENING_FORMS:
            assert save(http, subject["id"], form_id).status_code in (200, 201), form_id
    entered_randomisation(server, subject["id"], "S01", {"arm": arm, "randomisation_date": day(22)})
    return subject


@pytest.fixture
def sora(server):
    return randomised(server, "SORA")


@pytest.fixture
def both(server):
    return randomised(server, "PD1_SORA")


def infusion(**changes) -> dict:
    return {
        "drug": "pd1",
        "start_date": day(30),
        "dose": 200,
        "route": "iv",
        "frequency": "q3w",
        "modification": "none",
        **changes,
    }


def event(**changes) -> dict:
    return {
        "ctcae_term": "rash",
        "onset_date": day(30),
        "grade": 1,
        "serious": False,
        "outcome": "recovering",
        "related_pd1": "not_related",
        "related_sorafenib": "related",
        **changes,
    }


def death(**changes) -> dict:
    return {"status": "died", "end_date": day(60), "death_date": day(60), "cause_of_death": "adverse_event", **changes}


def findings(response) -> set[tuple[str, str]]:
    assert response.status_code in (200, 201), response.text
    return {(w["item"], w["rule"]) for w in response.json()["warnings"]}


def deviations(http, subject_id: str, form_id: str) -> list[dict]:
    trail = http.get(f"/api/v1/subjects/{subject_id}/audit", params={"form": form_id, "limit": 500}).json()["items"]
    return [e for e in trail if e["action"] == "form.deviation"]


def test_pd1_for_a_sora_subject_is_accepted_with_a_warning_and_a_deviation(server, sora):
    with server.client("coordinator", "S01") as http:
        saved = http.post(entries_url(sora["id"], "exposure"), json={"items": infusion()})
        assert ("drug", "pd1_for_sora") in findings(saved)
        entry = saved.json()
        assert entry["deviation"] and "SORA" in entry["deviation"]
        assert (
            http.get(f"{entries_url(sora['id'], 'exposure')}/{entry['id']}").json()["deviation"] == entry["deviation"]
        )
        [audited] = deviations(http, sora["id"], "exposure")
        assert audited["new_value"] == entry["deviation"]
        tablets = http.post(
            entries_url(sora["id"], "exposure"),
            json={"items": {**infusion(drug="sorafenib", route="oral", frequency="bid", dose=400)}},
        )
        assert findings(tablets) == set() and tablets.json()["deviation"] is None
        # corrected to sorafenib: the finding and the deviation are gone
        fixed = http.put(
            f"{entries_url(sora['id'], 'exposure')}/{entry['id']}",
            json={"items": infusion(drug="sorafenib", route="oral", frequency="bid", dose=400), "reason": "wrong drug"},
        )
        assert findings(fixed) == set() and fixed.json()["deviation"] is None


def test_pd1_for_a_pd1_sora_subject_is_no_finding(server, both):
    with server.client("coordinator", "S01") as http:
        saved = http.post(entries_url(both["id"], "exposure"), json={"items": infusion()})
        assert findings(saved) == set() and saved.json()["deviation"] is None
        assert deviations(http, both["id"], "exposure") == []


def test_treatment_before_the_randomisation_date_is_a_warning_and_a_deviation(server, both):
    with server.client("coordinator", "S01") as http:
        early = http.post(entries_url(both["id"], "exposure"), json={"items": infusion(start_date=day(21))})
        assert findings(early) == {("start_date", "exposure_before_randomisation")}
        assert "randomisation" in early.json()["deviation"]
        on_the_day = http.post(entries_url(both["id"], "exposure"), json={"items": infusion(start_date=day(22))})
        assert findings(on_the_day) == set()


def test_hard_refusals_stay_422_with_item_and_rule_beside_the_cross_form_warnings(server, sora):
    with server.client("coordinator", "S01") as http:
        refused = http.post(entries_url(sora["id"], "exposure"), json={"items": infusion(route="oral")})
        assert refused.status_code == 422
        assert {(e["item"], e["rule"]) for e in refused.json()["errors"]} == {("route", "route_for_drug")}
        assert http.get(entries_url(sora["id"], "exposure")).json() == []


def test_an_adverse_event_before_consent_or_related_to_pd1_in_a_sora_subject_warns(server, sora):
    with server.client("coordinator", "S01") as http:
        url = entries_url(sora["id"], "adverse_event")
        assert findings(http.post(url, json={"items": event(onset_date=day(13))})) == {
            ("onset_date", "onset_before_consent")
        }
        assert findings(http.post(url, json={"items": event(onset_date=day(14))})) == set()
        assert findings(http.post(url, json={"items": event(related_pd1="related")})) == {
            ("related_pd1", "related_pd1_for_sora")
        }


def test_related_pd1_for_a_pd1_sora_subject_is_no_finding(server, both):
    with server.client("coordinator", "S01") as http:
        saved = http.post(entries_url(both["id"], "adverse_event"), json={"items": event(related_pd1="related")})
        assert findings(saved) == set()


FATAL = {"grade": 5, "serious": True, "seriousness_criteria": ["death"], "outcome": "fatal", "onset_date": day(50)}


def test_grade_5_needs_an_end_of_study_died_on_or_after_the_onset(server, both):
    with server.client("investigator", "S01") as http:
        url = entries_url(both["id"], "adverse_event")
        fatal = http.post(url, json={"items": event(**FATAL)})
        assert findings(fatal) == {("grade", "grade5_without_death")}  # no death record yet: an open item
        end = http.post(
            entries_url(both["id"], "end_of_study"), json={"items": death(death_date=day(49), end_date=day(49))}
        )
        assert end.status_code == 201, end.text
        again = http.put(f"{url}/{fatal.json()['id']}", json={"items": event(**FATAL), "reason": "checked"})
        assert findings(again) == {
            ("grade", "grade5_without_death"),  # died before the onset: still open
            ("onset_date", "after_end_of_study"),
        }
        moved = http.put(
            f"{entries_url(both['id'], 'end_of_study')}/{end.json()['id']}",
            json={"items": death(), "reason": "death date typo"},
        )
        assert moved.status_code == 200, moved.text
        closed = http.put(f"{url}/{fatal.json()['id']}", json={"items": event(**FATAL), "reason": "checked"})
        assert findings(closed) == set()


def test_a_grade_5_event_with_an_end_of_study_other_than_died_warns(server, both):
    with server.client("investigator", "S01") as http:
        end = http.post(
            entries_url(both["id"], "end_of_study"), json={"items": {"status": "completed", "end_date": day(60)}}
        )
        assert end.status_code == 201, end.text
        fatal = http.post(entries_url(both["id"], "adverse_event"), json={"items": event(**FATAL)})
        assert ("grade", "grade5_without_death") in findings(fatal)


def test_data_dated_after_the_end_of_study_is_accepted_with_a_warning(server, both):
    with server.client("investigator", "S01") as http:
        end = http.post(
            entries_url(both["id"], "end_of_study"), json={"items": {"status": "completed", "end_date": day(60)}}
        )
        assert findings(end) == set()  # the end of study itself is dated on its end date
        late = http.post(entries_url(both["id"], "exposure"), json={"items": infusion(start_date=day(61))})
        assert findings(late) == {("start_date", "after_end_of_study")}
        assert late.json()["deviation"] is None  # a warning, not a deviation
        on_the_day = http.post(
            entries_url(both["id"], "conmed"),
            json={"items": {"medication": "paracetamol", "start_date": day(60), "ongoing": True}},
        )
        assert findings(on_the_day) == set()
        visit_form = save(http, both["id"], "afp", {"afp": 12}, visit="M3", visit_date=day(91))
        assert ("visit_date", "after_end_of_study") in findings(visit_form)
        # withdrawn: no live end of study, no finding
        withdrawn = http.post(
            f"{entries_url(both['id'], 'end_of_study')}/{end.json()['id']}/withdraw",
            json={"reason": "entered for the wrong subject"},
        )
        assert withdrawn.status_code == 200, withdrawn.text
        later = http.post(entries_url(both["id"], "exposure"), json={"items": infusion(start_date=day(62))})
        assert findings(later) == set()


def _mrn_of(server, subject_id: str) -> str:
    with server.client("coordinator", "S01") as http:
        [found] = [
            s
            for s in http.get("/api/v1/subjects", params={"site": "S01", "limit": 500}).json()["items"]
            if s["id"] == subject_id
        ]
    return found["mrn"]


def test_the_fhir_door_is_not_refused_by_the_warnings_and_flags_the_deviation(server, sora):
    """An EHR's pd1 infusion for a SORA subject, before the randomisation date: stored (201), landed in exposure,
    the entry flagged with both deviations and audited; the warnings never refuse a push."""
    mrn = _mrn_of(server, sora["id"])
    with server.client("ehr", "S01") as ehr:
        linked = ehr.post(
            "/fhir",
            json=bundle(
                [post({"resourceType": "Patient", "identifier": [{"system": MRN["S01"], "value": mrn}]}, urn())]
            ),
            headers=FHIR_JSON,
        )
        assert linked.status_code == 200, linked.text
        administration = {
            "resourceType": "MedicationAdministration",
            "status": "completed",
            "subject": {"reference": f"Patient/{sora['id']}"},
            "effectiveDateTime": day(20),
            "medicationCodeableConcept": {"coding": [{"system": LOCAL, "code": "pd1-antibody"}]},
            "dosage": {"route": {"coding": [{"system": LOCAL, "code": "route-iv"}]}},
        }
        response = ehr.post("/fhir/MedicationAdministration", content=json.dumps(administration), headers=FHIR_JSON)
        assert response.status_code == 201, response.text
        reference = f"MedicationAdministration/{response.json()['id']}"
    with server.client("coordinator", "S01") as http:
        [entry] = [
            e
            for e in http.get(entries_url(sora["id"], "exposure")).json()
            if e["items"]["drug"]["resource"] == reference
        ]
        assert entry["source"] == "fhir" and entry["items"]["drug"]["value"] == "pd1"
        assert "SORA" in entry["deviation"] and "randomisation" in entry["deviation"]
        [audited] = deviations(http, sora["id"], "exposure")
        assert audited["new_value"] == entry["deviation"]
    with server.client("ehr", "S01") as ehr:  # the EHR corrects the date: the entry is checked again
        moved = {**administration, "id": reference.split("/")[1], "effectiveDateTime": day(30)}
        response = ehr.put(f"/fhir/{reference}", content=json.dumps(moved), headers=FHIR_JSON)
        assert response.status_code == 200, response.text
    with server.client("coordinator", "S01") as http:
        again = http.get(f"{entries_url(sora['id'], 'exposure')}/{entry['id']}").json()
        assert again["visit_date"] == day(30)
        assert "SORA" in again["deviation"] and "randomisation" not in again["deviation"]
        assert [e["new_value"] for e in deviations(http, sora["id"], "exposure")] == [
            entry["deviation"],
            again["deviation"],
        ]


def test_the_rules_are_study_data(server):
    """The checks and facts come from the study files; every name resolves (the loader refuses others)."""
    study = server.runtime.study
    assert {check.rule for check in study.subject_checks} == {
        "pd1_for_sora",
        "exposure_before_randomisation",
        "onset_before_consent",
        "related_pd1_for_sora",
        "grade5_without_death",
        "after_end_of_study",
    }
    assert study.subject_facts["arm"].item == "randomisation.arm"
    assert VALID["randomisation"][2]["randomisation_date"] == day(22)


def test_the_loader_refuses_a_check_naming_an_unknown_fact(tmp_path):
    import shutil

    import yaml

    from ecrf.config import REPO_FORMS_DIR
    from study_model.loader import load_study
    from study_model.loader import StudyDefinitionError

    forms = tmp_path / "forms"
    shutil.copytree(REPO_FORMS_DIR, forms)
    data = yaml.safe_load((forms / "subject_checks.yaml").read_text())
    data["checks"][0]["when"] = {"item": "subject.allocation", "equals": "SORA"}
    (forms / "subject_checks.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(StudyDefinitionError, match="subject.allocation"):
        load_study(forms)
