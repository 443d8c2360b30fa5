"""The FHIR door keeps the rules of the eCRF door and of the study: form locks and signatures, one
subject per patient, pushed demographics, study-only de-identified exports, readable audit filters and
Questionnaire ids."""

import threading
import uuid
from contextlib import contextmanager

import pytest
from fhir.resources.R4B import get_fhir_model_class
from sqlalchemy import event
from sqlmodel import Session, select

from ecrf.audit.models import AuditEntry
from tests.crf_support import enrol, path, save
from tests.fhir_builders import FHIR_JSON, MRN, bundle, lab, post
from tests.test_export_protocol import download, export

STUDY = "NCT04163237"


def _form(http, subject_id, form_id="labs", visit_id="SCR"):
    response = http.get(path(subject_id, form_id, visit_id))
    assert response.status_code == 200, response.text
    return response.json()


def _form_audit(server, patient_id, action):
    with Session(server.runtime.engine) as session:
        return session.exec(
            select(AuditEntry)
            .where(AuditEntry.patient_id == patient_id, AuditEntry.action == action)
            .order_by(AuditEntry.seq)
        ).all()


def _lifecycle(server, url, until):
    """verify, sign, lock the form at `url`, stopping after `until`."""
    with server.client("monitor", "S01", sub="mon-li") as http:
        assert http.post(url + "/verify").status_code == 200
    if until == "verified":
        return
    with server.client("investigator", "S01", sub="dr-wei") as http:
        assert http.post(url + "/sign", json={"meaning": "I approve the data of this form"}).status_code == 200
    if until == "signed":
        return
    with server.client("data_manager", sub="dm-zhao") as http:
        assert http.post(url + "/lock").status_code == 200


@pytest.fixture
def labs_form(server):
    """A subject with complete labs at SCR: (subject, form url, the hemoglobin Observation as stored)."""
    with server.client("coordinator", "S01") as http:
        subject = enrol(http)
        assert save(http, subject["id"], "surgery").status_code == 201
        saved = save(http, subject["id"], "labs", {"hemoglobin": 130, "platelets": 200})
        assert saved.json()["status"] == "complete", saved.text
        reference = saved.json()["items"]["hemoglobin"]["resource"]
        observation = http.get(f"/fhir/{reference}").json()
    return subject, path(subject["id"], "labs", "SCR"), observation


def _changed(observation, value=99):
    quantity = {key: part for key, part in observation["valueQuantity"].items() if key != "extension"}
    return {**observation, "valueQuantity": {**quantity, "value": value}}


def test_a_locked_form_cannot_be_changed_or_emptied_through_fhir(server, labs_form):
    subject, url, observation = labs_form
    reference = f"Observation/{observation['id']}"
    _lifecycle(server, url, "locked")
    with server.client("investigator", "S01") as http:
        before = _form(http, subject["id"])
        refused = http.put(f"/fhir/{reference}", json=_changed(observation), headers=FHIR_JSON)
        assert refused.status_code == 409, refused.text
        [problem] = refused.json()["issue"]
        assert problem["code"] in ("conflict", "business-rule")
        assert (
            "locked" in problem["diagnostics"] and "labs" in problem["diagnostics"] and "SCR" in problem["diagnostics"]
        )
    with server.client("coordinator", "S01") as http:
        gone = http.delete(f"/fhir/{reference}")
        assert gone.status_code == 409, gone.text
        assert http.get(f"/fhir/{reference}").json()["meta"]["versionId"] == observation["meta"]["versionId"]
    with server.client("investigator", "S01") as http:
        after = _form(http, subject["id"])
    assert after["status"] == "locked" and after["signature"] == before["signature"]
    assert after["items"]["hemoglobin"] == before["items"]["hemoglobin"]
    assert after["version"] == before["version"]


def test_a_transaction_touching_a_locked_form_is_refused_whole_and_a_batch_only_fails_that_entry(server, labs_form):
    subject, url, observation = labs_form
    _lifecycle(server, url, "locked")
    patient_ref = f"Patient/{subject['patient_id']}"
    put = {"resource": _changed(observation), "request": {"method": "PUT", "url": f"Observation/{observation['id']}"}}
    other = lab(patient_ref, "718-7", 12.1, "g/dL", "2026-01-05")
    with server.client("investigator", "S01") as http:
        refused = http.post("/fhir", json=bundle([post(other), put]), headers=FHIR_JSON)
        assert refused.status_code == 409, refused.text
        assert "locked" in refused.json()["issue"][0]["diagnostics"]
        found = http.get("/fhir/Observation", params={"subject": patient_ref, "date": "2026-01-05"}).json()
        assert found["total"] == 0  # nothing of the refused transaction was stored

        batch = http.post("/fhir", json=bundle([post(other), put], kind="batch"), headers=FHIR_JSON)
        assert batch.status_code == 200, batch.text
        created, failed = batch.json()["entry"]
        assert created["response"]["status"].startswith("201")
        assert failed["response"]["status"].startswith("409")
        assert failed["response"]["outcome"]["issue"][0]["code"] in ("conflict", "business-rule")
    with server.client("investigator", "S01") as http:
        assert _form(http, subject["id"])["items"]["hemoglobin"]["value"] == 130


@pytest.mark.parametrize("stage", ["verified", "signed"])
def test_a_fhir_change_of_a_verified_or_signed_form_drops_sdv_and_signature_audited(server, labs_form, stage):
    subject, url, observation = labs_form
    _lifecycle(server, url, stage)
    with server.client("coordinator", "S01", sub="crc-s01") as http:
        changed = http.put(f"/fhir/Observation/{observation['id']}", json=_changed(observation, 101), headers=FHIR_JSON)
        assert changed.status_code == 200, changed.text
    with server.client("investigator", "S01") as http:
        form = _form(http, subject["id"])
    assert form["status"] == "complete" and form["verified"] is None and form["signature"] is None
    assert form["items"]["hemoglobin"]["value"] == 101
    [status_change] = _form_audit(server, subject["patient_id"], "form.status")[-1:]
    assert (status_change.old_value, status_change.new_value) == (stage, "complete")
    assert status_change.source == "fhir" and status_change.actor_sub == "crc-s01"
    assert f"Observation/{observation['id']}" in status_change.reason


def test_a_fhir_delete_from_a_signed_form_drops_the_signature_and_the_item(server, labs_form):
    subject, url, observation = labs_form
    _lifecycle(server, url, "signed")
    with server.client("coordinator", "S01") as http:
        assert http.delete(f"/fhir/Observation/{observation['id']}").status_code == 204
    with server.client("investigator", "S01") as http:
        form = _form(http, subject["id"])
    assert form["signature"] is None and form["verified"] is None and form["status"] in ("complete", "draft")
    assert "hemoglobin" not in form["items"]


def test_a_fhir_change_of_a_complete_form_keeps_its_status_and_moves_its_etag(server, labs_form):
    subject, url, observation = labs_form
    with server.client("investigator", "S01") as http:
        before = http.get(url)
        assert (
            http.put(
                f"/fhir/Observation/{observation['id']}", json=_changed(observation, 120), headers=FHIR_JSON
            ).status_code
            == 200
        )
        after = _form(http, subject["id"])
        assert (after["status"], after["version"]) == (before.json()["status"], before.json()["version"] + 1)
        assert after["items"]["hemoglobin"]["value"] == 120
        stale = save(
            http,
            subject["id"],
            "labs",
            {"hemoglobin": 130, "platelets": 200},
            reason="re-entry",
            headers={"If-Match": before.headers["ETag"]},
        )
        assert stale.status_code == 412, stale.text  # the save would silently undo the EHR's change


# -- 2: a pushed Patient's demographics reach the enrolled subject -------------------------------


def _push_patient(http, mrn, **elements):
    person = {"resourceType": "Patient", "identifier": [{"system": MRN["S01"], "value": mrn}], **elements}
    response = http.post("/fhir", json=bundle([post(person)]), headers=FHIR_JSON)
    assert response.status_code == 200, response.text
    [entry] = response.json()["entry"]
    return entry


def test_a_pushed_patient_merges_its_demographics_into_the_enrolled_patient(server):
    mrn = f"MRN-E1-{uuid.uuid4().hex[:6]}"
    with server.client("coordinator", "S01") as http:
        enrolled = http.post("/api/v1/subjects", json={"site": "S01", "mrn": mrn, "consent_date": "2026-09-01"})
        assert enrolled.status_code == 201, enrolled.text
        subject = enrolled.json()
        before = _eligibility_of(http, subject["id"])
    assert {"sex", "birth_date"} <= {entry["item"] for entry in before["missing"]}
    demographics = {"birthDate": "1961-03-04", "gender": "female", "name": [{"family": "Chen", "given": ["Li"]}]}
    with server.client("ehr", "S01", sub="ehr-s01") as http:
        entry = _push_patient(http, mrn, **demographics)
        assert entry["response"]["status"].startswith("200")
        assert entry["response"]["location"] == f"Patient/{subject['patient_id']}/_history/2"
        stored = http.get(f"/fhir/Patient/{subject['patient_id']}").json()
        assert {key: stored[key] for key in demographics} == demographics
        assert stored["identifier"] == [{"system": MRN["S01"], "value": mrn}]
        again = _push_patient(http, mrn, **demographics)  # same content: no new version
        assert again["response"]["location"] == f"Patient/{subject['patient_id']}/_history/2"
        corrected = _push_patient(http, mrn, gender="male")  # pushed elements win, the others stay
        assert corrected["response"]["location"] == f"Patient/{subject['patient_id']}/_history/3"
        stored = http.get(f"/fhir/Patient/{subject['patient_id']}").json()
        assert stored["gender"] == "male" and stored["birthDate"] == "1961-03-04" and stored["name"]
    with server.client("coordinator", "S01") as http:
        after = _eligibility_of(http, subject["id"])
        demo = _form(http, subject["id"], "demographics", "SCR")
    assert not {"sex", "birth_date"} & {entry["item"] for entry in after["missing"]}
    [age] = [c for c in after["criteria"] if c["id"] == "I06_age_18_75"]
    assert age["result"] == "met", age
    assert demo["items"]["sex"]["value"] == "male" and demo["items"]["birth_date"]["value"] == "1961-03-04"
    with Session(server.runtime.engine) as session:
        updates = session.exec(
            select(AuditEntry).where(
                AuditEntry.resource == f"Patient/{subject['patient_id']}", AuditEntry.action == "update"
            )
        ).all()
    assert updates and {entry.source for entry in updates} == {"fhir"}
    assert {entry.actor_sub for entry in updates} == {"ehr-s01"}


def test_a_scoped_token_needs_update_to_change_the_matched_patient(server):
    mrn = uuid.uuid4().hex[:12]
    with server.client("coordinator", "S01") as http:
        subject = http.post("/api/v1/subjects", json={"site": "S01", "mrn": mrn, "consent_date": "2026-09-01"}).json()
    person = {"resourceType": "Patient", "identifier": [{"system": MRN["S01"], "value": mrn}], "gender": "female"}

    def pushed(scopes):
        token = server.token("ehr", "S01", scopes=scopes)
        with server.client() as http:
            return http.post("/fhir/Patient", json=person, headers={**FHIR_JSON, "Authorization": f"Bearer {token}"})

    refused = pushed(["system/Patient.cs"])
    assert refused.status_code == 403 and "system/Patient.u" in refused.json()["issue"][0]["diagnostics"]
    merged = pushed(["system/Patient.cus"])
    assert merged.status_code == 200 and merged.json()["gender"] == "female"
    assert merged.json()["id"] == subject["patient_id"]
    assert pushed(["system/Patient.cs"]).status_code == 200  # nothing left to change: no update needed


def _eligibility_of(http, subject_id):
    response = http.get(f"/api/v1/subjects/{subject_id}/eligibility")
    assert response.status_code == 200, response.text
    return response.json()


# -- 3: one subject per patient ------------------------------------------------------------------


def _research_subject(patient_id, status="candidate"):
    return {
        "resourceType": "ResearchSubject",
        "status": status,
        "study": {"reference": f"ResearchStudy/{STUDY}"},
        "individual": {"reference": f"Patient/{patient_id}"},
    }


def _subjects_of(http, patient_id):
    listed = http.get("/api/v1/subjects", params={"limit": 500}).json()
    assert listed["total"] <= 500
    return [s for s in listed["items"] if s["patient_id"] == patient_id]


def test_a_second_research_subject_for_an_enrolled_patient_answers_the_existing_one(server):
    with server.client("coordinator", "S01") as http:
        subject = enrol(http)
        again = http.post("/fhir/ResearchSubject", json=_research_subject(subject["patient_id"]), headers=FHIR_JSON)
        assert again.status_code == 200, again.text
        assert again.json()["id"] == subject["id"]
        in_bundle = http.post("/fhir", json=bundle([post(_research_subject(subject["patient_id"]))]), headers=FHIR_JSON)
        assert in_bundle.status_code == 200, in_bundle.text
        assert in_bundle.json()["entry"][0]["response"]["location"].startswith(f"ResearchSubject/{subject['id']}/")
        assert [s["id"] for s in _subjects_of(http, subject["patient_id"])] == [subject["id"]]
        assert (
            http.post(
                "/api/v1/subjects", json={"site": "S01", "mrn": subject["mrn"], "consent_date": "2026-09-01"}
            ).status_code
            == 409
        )


def test_a_pushed_patient_enrolled_through_fhir_cannot_be_enrolled_again(server):
    mrn = uuid.uuid4().hex[:12]
    with server.client("ehr", "S01") as http:
        patient = _push_patient(http, mrn, gender="female")
        patient_id = patient["response"]["location"].split("/")[1]
        first = http.post("/fhir/ResearchSubject", json=_research_subject(patient_id), headers=FHIR_JSON)
        assert first.status_code == 201, first.text
    with server.client("coordinator", "S01") as http:
        again = http.post("/api/v1/subjects", json={"site": "S01", "mrn": mrn, "consent_date": "2026-09-01"})
        assert again.status_code == 409, again.text
        assert [s["id"] for s in _subjects_of(http, patient_id)] == [first.json()["id"]]


def test_a_put_making_a_second_subject_is_refused_and_a_deleted_subject_frees_the_patient(server):
    with server.client("coordinator", "S01") as http:
        subject = enrol(http)
        second = http.put(
            f"/fhir/ResearchSubject/{uuid.uuid4()}", json=_research_subject(subject["patient_id"]), headers=FHIR_JSON
        )
        assert second.status_code == 409, second.text
        [problem] = second.json()["issue"]
        assert problem["code"] == "duplicate" and f"ResearchSubject/{subject['id']}" in problem["diagnostics"]
        current = http.get(f"/fhir/ResearchSubject/{subject['id']}").json()
        assert (
            http.put(
                f"/fhir/ResearchSubject/{subject['id']}", json={**current, "status": "on-study"}, headers=FHIR_JSON
            ).status_code
            == 200
        )  # the subject itself may change
        assert http.delete(f"/fhir/ResearchSubject/{subject['id']}").status_code == 204
        again = http.post("/fhir/ResearchSubject", json=_research_subject(subject["patient_id"]), headers=FHIR_JSON)
        assert again.status_code == 201, again.text
        assert [s["id"] for s in _subjects_of(http, subject["patient_id"])] == [again.json()["id"]]


def test_a_transaction_enrolling_one_patient_twice_is_refused(server):
    with server.client("coordinator", "S01") as http:
        subject = enrol(http)
        twice = http.post(
            "/fhir",
            json=bundle(
                [post(_research_subject(subject["patient_id"])), post(_research_subject(subject["patient_id"]))]
            ),
            headers=FHIR_JSON,
        )
        assert twice.status_code == 400 and twice.json()["issue"][0]["code"] == "duplicate", twice.text


def test_concurrent_research_subjects_for_one_patient_give_one_subject(server):
    mrn = uuid.uuid4().hex[:12]
    with server.client("ehr", "S01") as http:
        patient_id = _push_patient(http, mrn)["response"]["location"].split("/")[1]
    statuses, barrier = [], threading.Barrier(6)

    def create():
        with server.client("coordinator", "S01") as http:
            barrier.wait()
            statuses.append(
                http.post("/fhir/ResearchSubject", json=_research_subject(patient_id), headers=FHIR_JSON).status_code
            )

    threads = [threading.Thread(target=create) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [200] * 5 + [201]
    with server.client("coordinator", "S01") as http:
        assert len(_subjects_of(http, patient_id)) == 1


@contextmanager
def _paused_at_first_conditional_key_read(engine, reached: threading.Event, resume: threading.Event):
    """The next statement on conditional_key (of any request) waits until `resume`: forces one interleaving."""
    armed = [True]

    def pause(_conn, _cursor, statement, *_args):
        if armed[0] and "conditional_key" in statement and statement.lstrip().upper().startswith("SELECT"):
            armed[0] = False
            reached.set()
            resume.wait(30)

    event.listen(engine, "before_cursor_execute", pause)
    try:
        yield
    finally:
        event.remove(engine, "before_cursor_execute", pause)


def test_a_research_subject_committed_while_another_create_checks_its_key_is_found_not_doubled(server):
    """One create has read the patient's subjects (none yet) when another commits its subject and key; the
    first then meets the committed key: it must answer that subject, not free the key and make a second."""
    if server.backend == "sqlite":
        pytest.skip("SQLite runs one writing transaction at a time (BEGIN IMMEDIATE): this interleaving cannot happen")
    with server.client("ehr", "S01") as http:
        patient_id = _push_patient(http, uuid.uuid4().hex[:12])["response"]["location"].split("/")[1]
    reached, resume, statuses = threading.Event(), threading.Event(), {}

    def late():
        with server.client("coordinator", "S01") as http:
            statuses["late"] = http.post(
                "/fhir/ResearchSubject", json=_research_subject(patient_id), headers=FHIR_JSON
            ).status_code

    with _paused_at_first_conditional_key_read(server.runtime.engine, reached, resume):
        thread = threading.Thread(target=late)
        thread.start()
        try:
            assert reached.wait(30)
            with server.client("coordinator", "S01") as http:
                statuses["early"] = http.post(
                    "/fhir/ResearchSubject", json=_research_subject(patient_id), headers=FHIR_JSON
                ).status_code
        finally:
            resume.set()
            thread.join()
    assert statuses == {"early": 201, "late": 200}
    with server.client("coordinator", "S01") as http:
        assert len(_subjects_of(http, patient_id)) == 1


def test_a_research_subject_naming_its_patient_by_absolute_url_still_is_the_patients_one_subject(server):
    with server.client("ehr", "S01") as http:
        patient_id = _push_patient(http, uuid.uuid4().hex[:12])["response"]["location"].split("/")[1]
    base = f"{server.base_url}/fhir"
    absolute = {
        **_research_subject(patient_id),
        "individual": {"reference": f"{base}/Patient/{patient_id}"},
        "study": {"reference": f"{base}/ResearchStudy/{STUDY}"},
    }
    with server.client("coordinator", "S01") as http:
        first = http.post("/fhir/ResearchSubject", json=absolute, headers=FHIR_JSON)
        assert first.status_code == 201, first.text
        again = http.post("/fhir/ResearchSubject", json=_research_subject(patient_id), headers=FHIR_JSON)
        assert again.status_code == 200, again.text
        assert again.json()["id"] == first.json()["id"]


# -- 4: de-identified exports hold the study's subjects only ------------------------------------


def test_a_sponsors_system_export_leaves_out_patients_never_enrolled(server):
    outsider = uuid.uuid4().hex[:12]
    with server.client("ehr", "S01") as http:
        patient_id = _push_patient(http, outsider, gender="male", birthDate="1950-01-01")["response"]["location"].split(
            "/"
        )[1]
        observation = http.post(
            "/fhir/Observation", json=lab(f"Patient/{patient_id}", "718-7", 14.2, "g/dL"), headers=FHIR_JSON
        )
        assert observation.status_code == 201
    with server.client("coordinator", "S01") as http:
        subject = enrol(http)
        assert save(http, subject["id"], "surgery").status_code == 201
    for role in ("sponsor", "data_manager"):
        with server.client(role, sub=f"{role}-system-export") as http:
            manifest = export(http, "/fhir/$export", _type="Patient,Observation,Procedure")
            files = download(http, manifest)
            group = download(http, export(http, _type="Patient,Observation,Procedure"))
        # the same subjects as the study's Group: the outsider's Patient and Observation are not among them
        assert {t: len(r) for t, r in files.items()} == {t: len(r) for t, r in group.items()}, role
        assert {r["id"] for r in files["Patient"]} == {r["id"] for r in group["Patient"]}
    with server.client("data_manager", sub="dm-identified") as http:
        whole = download(http, export(http, "/fhir/$export", _type="Patient", deidentify="false"))
    assert patient_id in {r["id"] for r in whole["Patient"]}  # identified system export: every patient


# -- 5: audit filters without an offset ------------------------------------------------------------


@pytest.mark.parametrize("since", ["2026-01-01", "2026-01-01T00:00:00", "2026-01-01T08:00:00+08:00"])
def test_audit_since_until_without_an_offset_read_as_utc(server, since):
    with server.client("coordinator", "S01") as http:
        subject = enrol(http)
        everything = http.get(f"/api/v1/subjects/{subject['id']}/audit")
        assert everything.status_code == 200 and everything.json()["total"] > 0
        filtered = http.get(f"/api/v1/subjects/{subject['id']}/audit", params={"since": since, "until": "2999-12-31"})
        assert filtered.status_code == 200, filtered.text
        assert filtered.json()["total"] == everything.json()["total"]
        none = http.get(f"/api/v1/subjects/{subject['id']}/audit", params={"until": "2000-01-01T00:00:00"})
        assert none.status_code == 200 and none.json()["total"] == 0
        bad = http.get(f"/api/v1/subjects/{subject['id']}/audit", params={"since": "yesterday"})
        assert bad.status_code == 422 and bad.json()["errors"]


# -- 6: Questionnaire ids and the CapabilityStatement ----------------------------------------------


def test_a_questionnaire_is_read_by_its_own_id(server):
    with server.client("investigator", "S01") as http:
        questionnaire = http.get("/fhir/Questionnaire/demographics").json()
        assert questionnaire["id"] == "demographics"
        again = http.get(f"/fhir/Questionnaire/{questionnaire['id']}")
        assert again.status_code == 200 and again.json() == questionnaire
        assert questionnaire["url"].endswith(f"/Questionnaire/{STUDY}-demographics")  # the canonical url stays


def test_capability_statement_announces_questionnaire_read_and_export(server):
    with server.client() as http:
        statement = http.get("/fhir/metadata").json()
    get_fhir_model_class("CapabilityStatement").model_validate(statement)
    rest = statement["rest"][0]
    resources = {r["type"]: r for r in rest["resource"]}
    assert [i["code"] for i in resources["Questionnaire"]["interaction"]] == ["read"]
    operations = {o["name"]: o for o in rest["operation"]}
    assert operations["export"]["definition"] == "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export"
    group = resources.get("Group")
    assert (
        group
        and group["operation"][0]["definition"] == "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export"
    )


def test_the_form_resource_migration_indexes_existing_forms(database_url, tmp_path):
    from sqlalchemy import text

    from ecrf.db import make_engine
    from ecrf.store.migrate import upgrade
    from testkit.databases import fresh_database

    with fresh_database(database_url, tmp_path) as url:
        engine = make_engine(url)
        try:
            upgrade(engine, "0002_crf")
            with engine.begin() as connection:
                connection.execute(
                    text(
                        "INSERT INTO form_instance (id, subject_id, patient_id, site, form_id, visit_id, status, version, "
                        "visit_date, resources, created_at, created_by, updated_at, updated_by, updated_role) VALUES "
                        "('i1', 's1', 'p1', 'S01', 'labs', 'SCR', 'locked', 3, '2026-03-01', "
                        '\'{"hemoglobin": "Observation/o1", "platelets": "Observation/o2"}\', '
                        "'2026-03-01 00:00:00+00:00', 'a', '2026-03-01 00:00:00+00:00', 'a', 'investigator')"
                    )
                )
            upgrade(engine)
            with engine.connect() as connection:
                rows = connection.execute(
                    text("SELECT resource_type, resource_id, instance_id FROM form_resource ORDER BY resource_id")
                ).all()
        finally:
            engine.dispose()
    assert [tuple(row) for row in rows] == [("Observation", "o1", "i1"), ("Observation", "o2", "i1")]
