"""Entries of log forms and repeating forms: each with its own id, version, lifecycle and withdrawal,
through real HTTP on SQLite and PostgreSQL. The log form is study data: a copy of the study with one
more form file (no Python change), served by a server of its own on the same database."""

import secrets
import shutil

import pytest
import yaml
from conftest import running_server
from crf_support import day, enrol, path, save

from ecrf.config import REPO_FORMS_DIR, Settings

SYMPTOM_LOG = {
    "id": "symptom_log",
    "title": "Symptom log",
    "kind": "log",
    "observation_category": "survey",
    "items": [
        {
            "id": "symptom_grade",
            "label": "Symptom grade",
            "type": "integer",
            "required": True,
            "hard_min": 1,
            "hard_max": 5,
            "fhir": {"kind": "observation", "codes": ["LOCAL#symptom-grade Symptom grade"]},
        },
        {
            "id": "symptom_serious",
            "label": "Serious",
            "type": "boolean",
            "required": True,
            "fhir": {"kind": "observation", "codes": ["LOCAL#symptom-serious Symptom is serious"]},
        },
    ],
}


@pytest.fixture(scope="module")
def log_server(database_url, tmp_path_factory):
    forms = tmp_path_factory.mktemp("log-study") / "forms"
    shutil.copytree(REPO_FORMS_DIR, forms)
    (forms / "forms" / "symptom_log.yaml").write_text(yaml.safe_dump(SYMPTOM_LOG))
    study = yaml.safe_load((forms / "study.yaml").read_text())
    study["forms"].append("symptom_log")
    (forms / "study.yaml").write_text(yaml.safe_dump(study, sort_keys=False, allow_unicode=True))
    settings = Settings(
        database_url=database_url, jwt_secret=secrets.token_urlsafe(32), study_dir=forms, _env_file=None
    )
    with running_server(settings) as server:
        yield server


def entries_url(subject_id: str, form_id: str = "symptom_log") -> str:
    return f"/api/v1/subjects/{subject_id}/forms/{form_id}/entries"


def add(http, subject_id: str, items: dict, *, date: str | None = None, url: str | None = None):
    return http.post(url or entries_url(subject_id), json={"items": items, "visit_date": date or day(40)})


@pytest.fixture
def subject(log_server):
    with log_server.client("coordinator", "S01") as http:
        subject = enrol(http)
        assert save(http, subject["id"], "surgery").status_code == 201
    return subject["id"]


def test_a_log_form_takes_any_number_of_entries_each_with_its_own_id(log_server, subject):
    with log_server.client("coordinator", "S01") as http:
        first = add(http, subject, {"symptom_grade": 2, "symptom_serious": False}, date=day(30))
        second = add(http, subject, {"symptom_grade": 3, "symptom_serious": True}, date=day(45))
        assert first.status_code == 201 and second.status_code == 201, first.text
        one, two = first.json(), second.json()
        assert one["id"] != two["id"] and len(one["id"]) == 16
        assert first.headers["Location"].endswith(f"{entries_url(subject)}/{one['id']}")
        assert first.headers["ETag"] == 'W/"1"' and one["status"] == "complete" and one["visit_id"] is None
        assert one["items"]["symptom_grade"]["value"] == 2 and two["items"]["symptom_grade"]["value"] == 3
        listed = http.get(entries_url(subject))
        assert listed.status_code == 200
        assert [e["id"] for e in listed.json()] == [one["id"], two["id"]]
        assert [e["items"]["symptom_grade"]["value"] for e in listed.json()] == [2, 3]  # each shows only its own
        read = http.get(f"{entries_url(subject)}/{two['id']}")
        assert read.status_code == 200 and read.json()["visit_date"] == day(45)
        # two resources in the store, one per entry
        assert one["items"]["symptom_grade"]["resource"] != two["items"]["symptom_grade"]["resource"]
        observation = http.get(f"/fhir/{one['items']['symptom_grade']['resource']}")
        assert observation.status_code == 200 and observation.json()["valueInteger"] == 2


def test_hard_checks_refuse_an_entry_and_nothing_is_written(log_server, subject):
    with log_server.client("coordinator", "S01") as http:
        refused = add(http, subject, {"symptom_grade": 9, "symptom_serious": False})
        assert refused.status_code == 422, refused.text
        assert {(e["item"], e["rule"]) for e in refused.json()["errors"]} == {("symptom_grade", "hard_range")}
        assert http.get(entries_url(subject)).json() == []


def test_editing_a_complete_entry_needs_a_reason_and_if_match(log_server, subject):
    with log_server.client("coordinator", "S01") as http:
        entry = add(http, subject, {"symptom_grade": 2, "symptom_serious": False}).json()
        url = f"{entries_url(subject)}/{entry['id']}"
        body = {"items": {"symptom_grade": 3, "symptom_serious": False}, "visit_date": day(40)}
        no_reason = http.put(url, json=body)
        assert no_reason.status_code == 422 and no_reason.json()["errors"][0]["rule"] == "reason_required"
        stale = http.put(url, json={**body, "reason": "typo"}, headers={"If-Match": 'W/"7"'})
        assert stale.status_code == 412
        saved = http.put(url, json={**body, "reason": "typo"}, headers={"If-Match": 'W/"1"'})
        assert saved.status_code == 200 and saved.json()["version"] == 2
        assert saved.json()["items"]["symptom_grade"]["value"] == 3
        assert http.put(f"{entries_url(subject)}/{'0' * 16}", json=body).status_code == 404


def test_each_entry_has_the_whole_lifecycle(log_server, subject):
    with log_server.client("coordinator", "S01") as http:
        entry = add(http, subject, {"symptom_grade": 2, "symptom_serious": False}).json()
        other = add(http, subject, {"symptom_grade": 1, "symptom_serious": False}).json()
    url = f"{entries_url(subject)}/{entry['id']}"
    with log_server.client("monitor", "S01") as http:
        assert http.post(url + "/verify").json()["status"] == "verified"
    with log_server.client("coordinator", "S01") as http:
        assert http.post(url + "/sign", json={"meaning": "approved"}).status_code == 403
    with log_server.client("investigator", "S01") as http:
        signed = http.post(url + "/sign", json={"meaning": "I approve this entry"})
        assert signed.status_code == 200 and len(signed.json()["signature"]["hash"]) == 64
    with log_server.client("data_manager") as http:
        assert http.post(url + "/lock").json()["status"] == "locked"
    with log_server.client("coordinator", "S01") as http:
        refused = http.put(url, json={"items": {"symptom_grade": 4, "symptom_serious": False}, "reason": "r"})
        assert refused.status_code == 409 and "locked" in refused.json()["detail"]
        statuses = {e["id"]: e["status"] for e in http.get(entries_url(subject)).json()}
        assert statuses == {entry["id"]: "locked", other["id"]: "complete"}  # the other entry is untouched


def test_an_entry_is_withdrawn_as_entered_in_error_never_deleted(log_server, subject):
    with log_server.client("coordinator", "S01") as http:
        entry = add(http, subject, {"symptom_grade": 2, "symptom_serious": True}).json()
        url = f"{entries_url(subject)}/{entry['id']}"
        resource = entry["items"]["symptom_grade"]["resource"]
        assert http.post(url + "/withdraw", json={}).status_code == 422
        withdrawn = http.post(url + "/withdraw", json={"reason": "entered for the wrong subject"})
        assert withdrawn.status_code == 200, withdrawn.text
        view = withdrawn.json()
        assert view["status"] == "entered_in_error" and view["withdrawn_reason"] == "entered for the wrong subject"
        assert view["items"] == {} and view["missing"] == []
        assert http.get(entries_url(subject)).json()[0]["status"] == "entered_in_error"
        again = http.put(url, json={"items": {"symptom_grade": 2, "symptom_serious": True}, "reason": "r"})
        assert again.status_code == 409
        assert http.get(f"/fhir/{resource}").status_code == 410  # gone from the store, its history kept
        history = http.get(f"/fhir/{resource}/_history").json()
        assert len(history["entry"]) == 2  # the entry's version and its deletion
    with log_server.client("data_manager") as http:
        trail = http.get(f"/api/v1/subjects/{subject}/audit", params={"form": "symptom_log", "limit": 100})
    assert trail.status_code == 200, trail.text
    withdrawal = [e for e in trail.json()["items"] if e["action"] == "form.withdraw"]
    assert len(withdrawal) == 1 and withdrawal[0]["reason"] == "entered for the wrong subject"
    assert withdrawal[0]["old_value"] == "complete" and withdrawal[0]["new_value"] == "entered_in_error"
    assert withdrawal[0]["resource"] == f"FormInstance/{_instance_id(subject, entry)}"
    deleted = [e for e in trail.json()["items"] if e["resource"] == resource and e["reason"]]
    assert deleted and all(e["reason"] == "entered for the wrong subject" for e in deleted)


def _instance_id(subject_id: str, entry: dict) -> str:
    from ecrf.crf.locate import derived_id

    return derived_id(subject_id, "symptom_log", "LOG", "entry", entry["id"])


def test_a_log_form_has_no_visit_path_and_visit_forms_have_no_entries(log_server, subject):
    with log_server.client("coordinator", "S01") as http:
        assert http.put(path(subject, "symptom_log", "SCR"), json={"items": {}}).status_code == 422
        assert http.get(entries_url(subject, "labs")).status_code == 404
        assert http.post(entries_url(subject, "labs"), json={"items": {}}).status_code == 404
        assert http.get(entries_url(subject, "nope")).status_code == 404


def test_other_sites_never_see_a_subjects_entries(log_server, subject):
    with log_server.client("coordinator", "S01") as http:
        entry = add(http, subject, {"symptom_grade": 2, "symptom_serious": False}).json()
    with log_server.client("coordinator", "S02") as http:
        assert http.get(entries_url(subject)).status_code == 404
        assert http.get(f"{entries_url(subject)}/{entry['id']}").status_code == 404
        assert add(http, subject, {"symptom_grade": 2, "symptom_serious": False}).status_code == 404


def test_the_log_form_is_described_in_the_study_and_the_questionnaire(log_server):
    with log_server.client("coordinator", "S01") as http:
        form = http.get("/api/v1/forms/symptom_log").json()
        assert form["kind"] == "log" and form["visits"] == []
        adverse = http.get("/api/v1/forms/adverse_event").json()
        items = {i["id"]: i for i in adverse["items"]}  # the screens read the text limit from the definition
        assert items["term_verbatim"]["max_length"] == 500 and "max_length" not in items["grade"]
        study = http.get("/api/v1/study").json()  # and which items the system's allocation writes
        assert study["randomisation"] == {
            "form": "randomisation",
            "visit": "SCR",
            "derived_items": ["arm", "randomisation_date"],
        }
        study_forms = {f["id"]: f for f in http.get("/api/v1/study").json()["forms"]}
        assert study_forms["symptom_log"]["kind"] == "log"
        assert study_forms["afp"]["repeating"] is True
        questionnaire = http.get("/fhir/Questionnaire/symptom_log")
        assert questionnaire.status_code == 200, questionnaire.text


def test_a_repeating_form_takes_several_entries_at_one_visit(server):
    """afp is declared repeating (CRF-SPEC 3.6): entries at a visit beside the visit's own form."""
    with server.client("coordinator", "S01") as http:
        subject = enrol(http)["id"]
        assert save(http, subject, "surgery").status_code == 201
        assert save(http, subject, "afp", {"afp": 250}).status_code == 201  # the visit's own form
        visit_entries = f"{path(subject, 'afp', 'SCR')}/entries"
        first = http.post(visit_entries, json={"items": {"afp": 300}, "visit_date": day(21)})
        second = http.post(visit_entries, json={"items": {"afp": 410}, "visit_date": day(22)})
        assert first.status_code == 201 and second.status_code == 201, first.text
        assert first.json()["visit_id"] == "SCR"
        assert [e["items"]["afp"]["value"] for e in http.get(visit_entries).json()] == [300, 410]
        assert http.get(path(subject, "afp", "SCR")).json()["items"]["afp"]["value"] == 250  # not replaced
        assert http.get(f"{path(subject, 'afp', 'M1')}/entries").json() == []
        entry = first.json()["id"]
        assert http.get(f"{visit_entries}/{entry}").status_code == 200
        assert http.get(f"{path(subject, 'afp', 'M1')}/entries/{entry}").status_code == 404
        assert http.get(f"{entries_url(subject, 'afp')}/{entry}").status_code == 200
        assert http.post(entries_url(subject, "afp"), json={"items": {"afp": 1}}).status_code == 404  # needs a visit
        assert http.post(f"{path(subject, 'afp', 'POD7')}/entries", json={"items": {"afp": 1}}).status_code == 422


# -- the adverse event log (CRF-SPEC 7.2): AdverseEvent resources, checks as data ------------------------

AE = {
    "ctcae_term": "rash",
    "onset_date": day(40),
    "grade": 3,
    "serious": True,
    "seriousness_criteria": ["hospitalisation"],
    "related_pd1": "related",
    "related_sorafenib": "not_related",
    "immune_related": True,
    "action_taken": "interrupted",
    "outcome": "recovering",
}


def ae_url(subject_id: str) -> str:
    return entries_url(subject_id, "adverse_event")


@pytest.fixture
def ae_subject(server):
    with server.client("coordinator", "S01") as http:
        subject = enrol(http)
        assert save(http, subject["id"], "surgery").status_code == 201
    return subject["id"]


def test_an_adverse_event_entry_is_an_adverse_event_resource_read_back_item_by_item(server, ae_subject):
    with server.client("coordinator", "S01") as http:
        created = http.post(ae_url(ae_subject), json={"items": AE})
        assert created.status_code == 201, created.text
        view = created.json()
    assert view["status"] == "complete" and view["visit_date"] == day(40)  # the onset date is the entry's date
    shown = {item: entry["value"] for item, entry in view["items"].items()}
    assert shown == {**AE, "severity": "severe"}  # every item read back from the stored resource; severity derived
    assert {entry["source"] for entry in view["items"].values()} == {"form"}
    resource = view["items"]["ctcae_term"]["resource"]
    assert resource.startswith("AdverseEvent/") and {e["resource"] for e in view["items"].values()} == {resource}
    stored = server.runtime  # the store holds one AdverseEvent with the R4 elements of CRF-SPEC 7.2
    from ecrf.store.unit import read_only

    with read_only(stored, _reader()) as store:
        content = store.read("AdverseEvent", resource.split("/")[1]).content
    assert content["actuality"] == "actual" and content["subject"] == {
        "reference": f"Patient/{_patient(server, ae_subject)}"
    }
    assert content["date"] == content["detected"] == day(40)
    assert content["seriousness"]["coding"][0]["code"] == "serious"
    assert content["severity"]["coding"][0] == {
        "system": "http://terminology.hl7.org/CodeSystem/adverse-event-severity",
        "code": "severe",
        "display": "Severe",
    }
    assert content["outcome"]["coding"][0]["code"] == "recovering"
    assert content["event"]["coding"][0]["code"] == "ae-rash"
    grade = [e for e in content["extension"] if e["url"].endswith("/ctcae-grade")]
    assert grade == [{"url": "http://example.org/fhir/StructureDefinition/ctcae-grade", "valueInteger": 3}]


def _reader():
    from ecrf.auth.actor import Actor

    return Actor(sub="test-reader", roles=frozenset({"data_manager"}))


def _patient(server, subject_id: str) -> str:
    with server.client("coordinator", "S01") as http:
        return http.get(f"/api/v1/subjects/{subject_id}").json()["patient_id"]


@pytest.mark.parametrize(
    "change,expected",
    [
        ({"grade": 5}, {("outcome", "grade_outcome"), ("seriousness_criteria", "grade5_serious_death")}),
        ({"outcome": "fatal"}, {("outcome", "grade_outcome")}),
        ({"grade": 5, "outcome": "fatal", "seriousness_criteria": ["death"]}, set()),
        ({"resolution_date": day(45)}, {("resolution_date", "resolution_with_outcome")}),
        ({"resolution_date": day(35), "outcome": "recovered"}, {("resolution_date", "resolution_before_onset")}),
        ({"ctcae_term": "other"}, {("term_verbatim", "verbatim_required")}),
        ({"ctcae_term": "other", "term_verbatim": "itchy scalp"}, set()),
        ({"seriousness_criteria": None}, {("seriousness_criteria", "seriousness_criteria_required")}),
        ({"seriousness_criteria": ["hospitalisation", "nope"]}, {("seriousness_criteria", "allowed_values")}),
        ({"seriousness_criteria": "hospitalisation"}, {("seriousness_criteria", "type")}),
        ({"term_verbatim": "x" * 501}, {("term_verbatim", "max_length")}),
        ({"grade": 6}, {("grade", "hard_range")}),
        ({"severity": "mild"}, {("severity", "derived")}),
    ],
)
def test_the_checks_of_an_adverse_event(server, ae_subject, change, expected):
    items = {key: value for key, value in {**AE, **change}.items() if value is not None}
    with server.client("coordinator", "S01") as http:
        response = http.post(ae_url(ae_subject), json={"items": items})
        if expected:
            assert response.status_code == 422, response.text
            assert {(e["item"], e["rule"]) for e in response.json()["errors"]} == expected
            assert http.get(ae_url(ae_subject)).json() == []  # nothing written
        else:
            assert response.status_code == 201, response.text


def test_text_and_codes_items_in_the_form_and_the_questionnaire(server):
    with server.client("coordinator", "S01") as http:
        form = http.get("/api/v1/forms/adverse_event").json()
        assert form["kind"] == "log" and form["visits"] == []
        adverse = http.get("/api/v1/forms/adverse_event").json()
        items = {i["id"]: i for i in adverse["items"]}  # the screens read the text limit from the definition
        assert items["term_verbatim"]["max_length"] == 500 and "max_length" not in items["grade"]
        study = http.get("/api/v1/study").json()  # and which items the system's allocation writes
        assert study["randomisation"] == {
            "form": "randomisation",
            "visit": "SCR",
            "derived_items": ["arm", "randomisation_date"],
        }
        questionnaire = http.get("/fhir/Questionnaire/adverse-event").json()
        assert questionnaire["id"] == "adverse-event"
        assert http.get("/fhir/Questionnaire/adverse_event").json() == questionnaire  # by the form id too
    questions = {q["linkId"]: q for q in questionnaire["item"]}
    assert questions["term_verbatim"]["type"] == "text" and questions["term_verbatim"]["maxLength"] == 500
    assert questions["seriousness_criteria"]["repeats"] is True
    assert [o["valueCoding"]["code"] for o in questions["seriousness_criteria"]["answerOption"]][
        0
    ] == "seriousness_criteria-death"


# -- concomitant medication (7.3) and disease assessment (7.4) ----------------------------------------


def test_a_conmed_entry_is_a_medication_statement_and_its_checks(server, ae_subject):
    url = entries_url(ae_subject, "conmed")
    items = {
        "medication": "Omeprazole 20 mg",
        "atc": "A",
        "indication": "gastric protection",
        "start_date": day(30),
        "ongoing": True,
    }
    with server.client("coordinator", "S01") as http:
        created = http.post(url, json={"items": items})
        assert created.status_code == 201, created.text
        view = created.json()
        assert {k: v["value"] for k, v in view["items"].items()} == items
        assert view["items"]["medication"]["resource"].startswith("MedicationStatement/")
        refused = http.post(url, json={"items": {**items, "end_date": day(20)}})
        assert {(e["item"], e["rule"]) for e in refused.json()["errors"]} == {
            ("end_date", "end_before_start"),
            ("end_date", "ongoing_with_end_date"),
        }
        stopped = http.put(
            f"{url}/{view['id']}", json={"items": {**items, "ongoing": False, "end_date": day(50)}, "reason": "stopped"}
        )
        assert stopped.status_code == 200 and stopped.json()["items"]["ongoing"]["value"] is False
    from ecrf.store.unit import read_only

    with read_only(server.runtime, _reader()) as store:
        content = store.read("MedicationStatement", view["items"]["medication"]["resource"].split("/")[1]).content
    assert content["status"] == "completed" and content["effectivePeriod"] == {"start": day(30), "end": day(50)}
    assert content["medicationCodeableConcept"]["text"] == "Omeprazole 20 mg"
    assert content["medicationCodeableConcept"]["coding"][0]["code"] == "atc-A"


def test_disease_assessments_repeat_at_their_visits_as_cancer_disease_status_observations(server, ae_subject):
    url = f"{path(ae_subject, 'disease_assessment', 'M3')}/entries"
    recurrence = {
        "status": "recurrence",
        "assessment_date": day(92),
        "method": "ct",
        "recurrence_site": "intrahepatic",
        "recurrence_date": day(90),
    }
    with server.client("coordinator", "S01") as http:
        ned = http.post(url, json={"items": {"status": "ned", "assessment_date": day(88), "method": "mri"}})
        found = http.post(url, json={"items": recurrence})
        assert ned.status_code == 201 and found.status_code == 201, found.text
        assert [e["items"]["status"]["value"] for e in http.get(url).json()] == ["ned", "recurrence"]
        assert {k: v["value"] for k, v in found.json()["items"].items()} == recurrence
        observation = http.get(f"/fhir/{found.json()['items']['status']['resource']}").json()
        assert observation["code"]["coding"][0]["code"] == "97509-4" and observation["status"] == "final"
        assert observation["effectiveDateTime"] == day(92)
        checks = [
            (
                {"status": "recurrence", "assessment_date": day(92), "method": "ct"},
                {("recurrence_site", "recurrence_site_required"), ("recurrence_date", "recurrence_date_required")},
            ),
            ({**recurrence, "recurrence_date": day(95)}, {("recurrence_date", "recurrence_after_assessment")}),
            ({**recurrence, "status": "ned"}, {("status", "recurrence_without_recurrence")}),
        ]
        for items, expected in checks:
            refused = http.post(url, json={"items": items})
            assert refused.status_code == 422, refused.text
            assert {(e["item"], e["rule"]) for e in refused.json()["errors"]} == expected


def test_end_of_study_is_once_per_subject_unless_the_entry_is_withdrawn(server, ae_subject):
    url = entries_url(ae_subject, "end_of_study")
    items = {"status": "completed", "end_date": day(60)}
    with server.client("coordinator", "S01") as http:
        forms = {f["id"]: f for f in http.get("/api/v1/study").json()["forms"]}
        assert forms["end_of_study"]["max_entries"] == 1 and forms["adverse_event"]["max_entries"] is None
        assert http.get("/api/v1/forms/end_of_study").json()["max_entries"] == 1
        first = http.post(url, json={"items": items})
        assert first.status_code == 201, first.text
        second = http.post(url, json={"items": {**items, "status": "other"}})
        assert second.status_code == 409 and first.json()["id"] in second.text, second.text
        assert [e["id"] for e in http.get(url).json()] == [first.json()["id"]]  # nothing half-written
        refused = http.post(url, json={"items": {"status": "died", "end_date": day(60)}})
        assert refused.status_code == 409  # the count comes first: no second entry whatever its data
        withdrawn = http.post(f"{url}/{first.json()['id']}/withdraw", json={"reason": "wrong subject"})
        assert withdrawn.status_code == 200, withdrawn.text
        again = http.post(
            url, json={"items": {**items, "status": "lost_to_follow_up", "last_known_alive_date": day(55)}}
        )
        assert again.status_code == 201, again.text
        listed = http.get(url).json()
        assert [e["status"] for e in listed] == ["entered_in_error", "complete"]
        missing = http.post(url, json={"items": {"status": "died", "end_date": day(60)}})
        assert missing.status_code == 409
