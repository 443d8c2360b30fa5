"""Resources an EHR pushes through /fhir land in the log forms (CRF-SPEC 7.2, 7.3): an AdverseEvent in
adverse_event, a MedicationStatement in conmed, as entries with `source: fhir`, dated by their own dates, their
values read back from the resource, with the lifecycle of any entry; a delete through /fhir withdraws the
entry; a patient who is no subject of the study gets nothing. Real HTTP, SQLite and PostgreSQL."""

import json
import uuid

import pytest
from crf_support import day, save
from fhir_builders import FHIR_JSON, MRN, bundle, patient, post, urn

LOCAL = "http://example.org/fhir/CodeSystem/nct04163237"
EXT = "http://example.org/fhir/StructureDefinition"


def adverse_event(
    patient_id: str,
    onset: str,
    *,
    term: str = "diarrhea",
    grade: int = 2,
    serious: bool = False,
    verbatim: str | None = None,
) -> dict:
    """An AdverseEvent as an EHR sends it (R4), not built by the study's own mapping."""
    event = {"coding": [{"system": LOCAL, "code": f"ae-{term}"}]}
    if verbatim:
        event["text"] = verbatim
    return {
        "resourceType": "AdverseEvent",
        "actuality": "actual",
        "subject": {"reference": f"Patient/{patient_id}"},
        "event": event,
        "date": onset,
        "detected": onset,
        "extension": [{"url": f"{EXT}/ctcae-grade", "valueInteger": grade}],
        "seriousness": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/adverse-event-seriousness",
                    "code": "serious" if serious else "non-serious",
                }
            ]
        },
        "outcome": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/adverse-event-outcome", "code": "ongoing"}]
        },
    }


def medication_statement(
    patient_id: str, start: str, name: str = "Metformin 500 mg", indication: str | None = "type 2 diabetes"
) -> dict:
    statement = {
        "resourceType": "MedicationStatement",
        "status": "active",
        "subject": {"reference": f"Patient/{patient_id}"},
        "medicationCodeableConcept": {"text": name, "coding": [{"system": LOCAL, "code": "atc-A"}]},
        "effectivePeriod": {"start": start},
    }
    if indication:
        statement["reasonCode"] = [{"text": indication}]
    return statement


def entries_url(subject_id: str, form_id: str) -> str:
    return f"/api/v1/subjects/{subject_id}/forms/{form_id}/entries"


def pushed(http, resource: dict) -> dict:
    response = http.post(f"/fhir/{resource['resourceType']}", content=json.dumps(resource), headers=FHIR_JSON)
    assert response.status_code == 201, response.text
    return response.json()


def link(ehr, mrn: str) -> str:
    """The ehr links the site's Patient to itself by MRN (as its Bundles do); returns the Patient's id."""
    reply = ehr.post(
        "/fhir",
        json=bundle([post({"resourceType": "Patient", "identifier": [{"system": MRN["S01"], "value": mrn}]}, urn())]),
        headers=FHIR_JSON,
    )
    assert reply.status_code == 200, reply.text
    [entry] = reply.json()["entry"]
    assert entry["response"]["status"].startswith("200"), entry  # matched the enrolled Patient
    return entry["response"]["location"].split("/")[1]


@pytest.fixture
def enrolled(server):
    """(subject id, MRN) of a subject enrolled at S01 through the eCRF door."""
    mrn = uuid.uuid4().hex[:12]
    with server.client("coordinator", "S01") as http:
        response = http.post("/api/v1/subjects", json={"site": "S01", "mrn": mrn, "consent_date": day(14)})
        assert response.status_code == 201, response.text
        subject = response.json()["id"]
        assert save(http, subject, "surgery").status_code == 201
    return subject, mrn


@pytest.fixture
def subject(server, enrolled):
    """A subject whose Patient the ehr client has linked: its single creates may name Patient/<id>."""
    subject, mrn = enrolled
    with server.client("ehr", "S01") as ehr:
        assert link(ehr, mrn) == subject
    return subject


def _of(listed: list[dict], reference: str) -> dict:
    found = [e for e in listed if any(i["resource"] == reference for i in e["items"].values())]
    assert len(found) == 1, (reference, listed)
    return found[0]


def test_a_pushed_adverse_event_lands_in_the_log_dated_by_its_onset(server, subject):
    with server.client("ehr", "S01") as ehr:
        stored = pushed(ehr, adverse_event(subject, day(40), term="diarrhea", grade=2))
    reference = f"AdverseEvent/{stored['id']}"
    with server.client("coordinator", "S01") as http:
        eCRF = http.post(
            entries_url(subject, "adverse_event"),
            json={
                "items": {
                    "ctcae_term": "rash",
                    "onset_date": day(30),
                    "grade": 1,
                    "serious": False,
                    "outcome": "recovering",
                }
            },
        )
        assert eCRF.status_code == 201, eCRF.text
        listed = http.get(entries_url(subject, "adverse_event"))
        assert listed.status_code == 200
        entry = _of(listed.json(), reference)
        assert entry["source"] == "fhir" and entry["visit_id"] is None and entry["visit_date"] == day(40)
        assert entry["items"]["ctcae_term"]["value"] == "diarrhea" and entry["items"]["grade"]["value"] == 2
        assert entry["items"]["onset_date"]["value"] == day(40) and entry["items"]["serious"]["value"] is False
        assert entry["items"]["outcome"]["value"] == "not_recovered"
        assert {i["source"] for i in entry["items"].values()} == {"fhir"}
        assert entry["status"] == "complete" and entry["version"] == 1
        # beside the eCRF entry, which stays an eCRF entry
        sources = {e["id"]: e["source"] for e in listed.json()}
        assert sources[eCRF.json()["id"]] == "form" and sources[entry["id"]] == "fhir" and len(sources) == 2
        one = http.get(f"{entries_url(subject, 'adverse_event')}/{entry['id']}")
        assert one.status_code == 200 and one.json()["source"] == "fhir"


def test_an_ehr_entry_has_the_lifecycle_and_a_form_edit_is_a_new_version_of_the_same_resource(server, subject):
    identifier = {"system": "urn:oid:2.16.840.1.113883.3.9999.7", "value": uuid.uuid4().hex}  # R4: one, not a list
    with server.client("ehr", "S01") as ehr:
        stored = pushed(ehr, {**adverse_event(subject, day(41), term="fatigue", grade=1), "identifier": identifier})
    reference = f"AdverseEvent/{stored['id']}"
    with server.client("coordinator", "S01") as http:
        entry = _of(http.get(entries_url(subject, "adverse_event")).json(), reference)
        url = f"{entries_url(subject, 'adverse_event')}/{entry['id']}"
        items = {key: value["value"] for key, value in entry["items"].items()}
        edited = http.put(
            url,
            json={"items": {**items, "grade": 2}, "reason": "grade corrected from the source"},
            headers={"If-Match": 'W/"1"'},
        )
        assert edited.status_code == 200, edited.text
        view = edited.json()
        assert view["id"] == entry["id"] and view["source"] == "fhir"  # where the entry came from
        assert view["items"]["grade"] == {**view["items"]["grade"], "value": 2, "source": "form", "resource": reference}
        resource = http.get(f"/fhir/{reference}")
        assert resource.status_code == 200 and resource.json()["meta"]["versionId"] == "2"
        assert {"url": f"{EXT}/ctcae-grade", "valueInteger": 2} in resource.json()["extension"]
        assert resource.json()["identifier"] == identifier  # the EHR's business identifier stays
    with server.client("monitor", "S01") as monitor:
        verified = monitor.post(url + "/verify", json={}, headers={"If-Match": f'W/"{view["version"]}"'})
        assert verified.status_code == 200, verified.text
        assert verified.json()["status"] == "verified" and verified.json()["source"] == "fhir"


def test_a_pushed_medication_statement_lands_in_conmed_in_a_transaction_bundle(server, enrolled):
    subject, mrn = enrolled
    person = urn()
    statement, event = medication_statement(person, day(35)), adverse_event(person, day(50), term="hypertension")
    statement["subject"] = event["subject"] = {"reference": person}
    transaction = bundle(
        [
            post({"resourceType": "Patient", "identifier": [{"system": MRN["S01"], "value": mrn}]}, person),
            post(statement),
            post(event),
        ]
    )
    with server.client("ehr", "S01") as ehr:
        reply = ehr.post("/fhir", content=json.dumps(transaction), headers=FHIR_JSON)
        assert reply.status_code == 200, reply.text
        locations = [e["response"]["location"].split("/_history")[0] for e in reply.json()["entry"]]
        assert locations[0] == f"Patient/{subject}"
        locations = locations[1:]
    with server.client("coordinator", "S01") as http:
        conmed = _of(http.get(entries_url(subject, "conmed")).json(), locations[0])
        assert conmed["source"] == "fhir" and conmed["visit_date"] == day(35)
        assert conmed["items"]["medication"]["value"] == "Metformin 500 mg"
        assert conmed["items"]["indication"]["value"] == "type 2 diabetes"
        assert conmed["items"]["atc"]["value"] == "A" and conmed["items"]["ongoing"]["value"] is True
        assert conmed["items"]["start_date"]["value"] == day(35)
        ae = _of(http.get(entries_url(subject, "adverse_event")).json(), locations[1])
        assert ae["visit_date"] == day(50) and ae["items"]["ctcae_term"]["value"] == "hypertension"


def test_a_batch_bundle_lands_too_and_an_update_redates_the_entry(server, subject):
    batch = bundle([post(adverse_event(subject, day(44), term="rash", grade=1))], kind="batch")
    with server.client("ehr", "S01") as ehr:
        reply = ehr.post("/fhir", content=json.dumps(batch), headers=FHIR_JSON)
        assert reply.status_code == 200, reply.text
        [answer] = reply.json()["entry"]
        assert answer["response"]["status"].startswith("201"), answer
        reference = answer["response"]["location"].split("/_history")[0]
        moved = {**adverse_event(subject, day(46), term="rash", grade=1), "id": reference.split("/")[1]}
        assert ehr.put(f"/fhir/{reference}", content=json.dumps(moved), headers=FHIR_JSON).status_code == 200
    with server.client("coordinator", "S01") as http:
        listed = [
            e
            for e in http.get(entries_url(subject, "adverse_event")).json()
            if any(i["resource"] == reference for i in e["items"].values())
        ]
        assert len(listed) == 1  # an update is the same entry, never a second one
        assert listed[0]["visit_date"] == day(46) and listed[0]["items"]["onset_date"]["value"] == day(46)


def test_a_delete_through_fhir_withdraws_the_entry_and_keeps_its_history(server, subject):
    with server.client("ehr", "S01") as ehr:
        stored = pushed(ehr, adverse_event(subject, day(42), term="colitis", grade=2))
        reference = f"AdverseEvent/{stored['id']}"
    with server.client("coordinator", "S01") as http:
        entry = _of(http.get(entries_url(subject, "adverse_event")).json(), reference)
    with server.client("ehr", "S01") as ehr:
        assert ehr.delete(f"/fhir/{reference}").status_code in (200, 204)
    with server.client("coordinator", "S01") as http:
        listed = {e["id"]: e for e in http.get(entries_url(subject, "adverse_event")).json()}
        withdrawn = listed[entry["id"]]
        assert withdrawn["status"] == "entered_in_error" and withdrawn["source"] == "fhir"
        assert reference in withdrawn["withdrawn_reason"] and "/fhir" in withdrawn["withdrawn_reason"]
        history = http.get(f"/fhir/{reference}/_history")
        assert history.status_code == 200 and history.json()["total"] == 2
        url = f"{entries_url(subject, 'adverse_event')}/{entry['id']}"
        assert http.put(url, json={"items": {}, "reason": "x"}).status_code == 409  # withdrawn: add a new entry


def test_a_delete_through_fhir_of_an_ecrf_entrys_resource_withdraws_it_too(server, subject):
    with server.client("coordinator", "S01") as http:
        typed = http.post(
            entries_url(subject, "conmed"),
            json={"items": {"medication": "Omeprazole 20 mg", "start_date": day(30), "ongoing": True}},
        )
        assert typed.status_code == 201, typed.text
        reference = typed.json()["items"]["medication"]["resource"]
        assert http.delete(f"/fhir/{reference}").status_code in (200, 204)
        entry = http.get(f"{entries_url(subject, 'conmed')}/{typed.json()['id']}").json()
        assert entry["status"] == "entered_in_error" and entry["source"] == "form"
        assert entry["withdrawn_reason"].startswith(f"{reference} deleted through /fhir")


def test_an_update_that_creates_lands_and_a_failed_transaction_lands_nothing(server, subject):
    own_id = f"ehr-ae-{uuid.uuid4().hex[:12]}"
    with server.client("ehr", "S01") as ehr:
        created = ehr.put(
            f"/fhir/AdverseEvent/{own_id}",
            content=json.dumps({**adverse_event(subject, day(47), term="hypothyroidism"), "id": own_id}),
            headers=FHIR_JSON,
        )
        assert created.status_code == 201, created.text
        # the AE is created (POSTs run before PUTs), then a stale If-Match fails the transaction as a whole
        stale = {
            "resource": {**adverse_event(subject, day(47), term="hypothyroidism", grade=3), "id": own_id},
            "request": {"method": "PUT", "url": f"AdverseEvent/{own_id}", "ifMatch": 'W/"9"'},
        }
        broken = bundle([post(adverse_event(subject, day(48), term="fatigue")), stale])
        refused = ehr.post("/fhir", content=json.dumps(broken), headers=FHIR_JSON)
        assert refused.status_code == 412, refused.text
    with server.client("coordinator", "S01") as http:
        listed = http.get(entries_url(subject, "adverse_event")).json()
        assert _of(listed, f"AdverseEvent/{own_id}")["items"]["ctcae_term"]["value"] == "hypothyroidism"
        assert [e["items"]["ctcae_term"]["value"] for e in listed] == ["hypothyroidism"]  # nothing half-written
        assert _of(listed, f"AdverseEvent/{own_id}")["items"]["grade"]["value"] == 2


def test_nothing_lands_for_a_patient_who_is_no_subject(server):
    with server.client("ehr", "S01") as ehr:
        person = pushed(ehr, patient())
        stored = pushed(ehr, adverse_event(person["id"], day(40)))
    assert stored["id"]
    from sqlmodel import Session, select

    from ecrf.crf.models import FormInstance, FormResource

    with Session(server.runtime.engine) as session:
        assert session.get(FormResource, ("AdverseEvent", stored["id"])) is None
        assert session.exec(select(FormInstance).where(FormInstance.patient_id == person["id"])).all() == []


def test_a_serious_pushed_adverse_event_starts_the_sae_clock(server, subject):
    with server.client("ehr", "S01") as ehr:
        stored = pushed(ehr, adverse_event(subject, day(43), term="pneumonitis", grade=3, serious=True))
    with server.client("coordinator", "S01") as http:
        entry = _of(http.get(entries_url(subject, "adverse_event")).json(), f"AdverseEvent/{stored['id']}")
        listed = http.get("/api/v1/safety/sae", params={"site": "S01"})
        assert listed.status_code == 200, listed.text
        [row] = [i for i in listed.json()["items"] if i["entry_id"] == entry["id"] and i["subject_id"] == subject]
        assert row["status"] == "due"


def test_the_log_form_is_chosen_from_the_form_definitions_the_coded_anchor_first(tmp_path):
    """A form that fixes a medication code takes the MedicationStatements of that code (exposure: LOCAL#sorafenib,
    whose drug value codes it; a second study form fixing LOCAL#lenvatinib the lenvatinib ones); every other
    MedicationStatement still goes to conmed. Study data only."""
    import shutil

    import yaml

    from ecrf.config import REPO_FORMS_DIR
    from ecrf.crf.ehr_entries import anchor_for, study_anchors
    from study_model.loader import load_study

    forms = tmp_path / "forms"
    shutil.copytree(REPO_FORMS_DIR, forms)
    (forms / "forms" / "oral_drug.yaml").write_text(
        yaml.safe_dump(
            {
                "id": "oral_drug",
                "title": "Oral study drug",
                "kind": "log",
                "date_item": "start",
                "items": [
                    {
                        "id": "dose",
                        "label": "Dose",
                        "type": "integer",
                        "fhir": {
                            "kind": "resource",
                            "resource_type": "MedicationStatement",
                            "path": "dosage[].doseAndRate[].doseQuantity.value",
                            "fixed": {
                                "status": "active",
                                "medicationCodeableConcept": {"coding": [{"system": LOCAL, "code": "lenvatinib"}]},
                            },
                        },
                    },
                    {
                        "id": "start",
                        "label": "Start",
                        "type": "date",
                        "fhir": {"kind": "element", "of": "dose", "path": "effectivePeriod.start"},
                    },
                ],
            }
        )
    )
    study = yaml.safe_load((forms / "study.yaml").read_text())
    study["forms"].append("oral_drug")
    (forms / "study.yaml").write_text(yaml.safe_dump(study, sort_keys=False, allow_unicode=True))
    anchors = study_anchors(load_study(forms))
    sorafenib = {
        **medication_statement("p", "2026-01-01"),
        "medicationCodeableConcept": {"coding": [{"system": LOCAL, "code": "sorafenib"}]},
    }
    assert anchor_for(anchors, sorafenib).form.id == "exposure"
    lenvatinib = {**sorafenib, "medicationCodeableConcept": {"coding": [{"system": LOCAL, "code": "lenvatinib"}]}}
    assert anchor_for(anchors, lenvatinib).form.id == "oral_drug"
    infusion = {
        "resourceType": "MedicationAdministration",
        "medicationCodeableConcept": {"coding": [{"system": LOCAL, "code": "pd1-antibody"}]},
    }
    assert anchor_for(anchors, infusion).form.id == "exposure"
    assert (
        anchor_for(anchors, {**infusion, "medicationCodeableConcept": sorafenib["medicationCodeableConcept"]}) is None
    )
    assert anchor_for(anchors, medication_statement("p", "2026-01-01")).form.id == "conmed"
    assert anchor_for(anchors, adverse_event("p", "2026-01-01")).form.id == "adverse_event"
    end = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": LOCAL, "code": "end-of-study"}]},
    }
    assert anchor_for(anchors, end).form.id == "end_of_study"
    lab = {"resourceType": "Observation", "code": {"coding": [{"system": "http://loinc.org", "code": "777-3"}]}}
    cause = {**end, "code": {"coding": [{"system": LOCAL, "code": "cause-of-death"}]}}  # not the entry's own record
    assert anchor_for(anchors, lab) is None and anchor_for(anchors, cause) is None
    assert anchor_for(anchors, {"resourceType": "Condition"}) is None


def _csv(http, form_id: str, **params) -> list[dict]:
    import csv
    import io

    response = http.get(f"/api/v1/exports/forms/{form_id}.csv", params=params)
    assert response.status_code == 200, response.text
    return list(csv.DictReader(io.StringIO(response.text)))


def test_the_form_csv_has_a_row_per_entry_with_its_id(server, subject):
    serious = {
        "ctcae_term": "other",
        "term_verbatim": "abscess at the port site",
        "onset_date": day(38),
        "grade": 3,
        "serious": True,
        "seriousness_criteria": ["other_important", "hospitalisation"],
        "outcome": "recovering",
    }
    with server.client("ehr", "S01") as ehr:
        pushed_ae = pushed(ehr, adverse_event(subject, day(39), term="diarrhea", grade=2))
        pushed(ehr, medication_statement(subject, day(20)))
    with server.client("coordinator", "S01") as http:
        typed = http.post(entries_url(subject, "adverse_event"), json={"items": serious})
        assert typed.status_code == 201, typed.text
        dropped = http.post(entries_url(subject, "adverse_event"), json={"items": {**serious, "grade": 4}})
        assert (
            http.post(
                f"{entries_url(subject, 'adverse_event')}/{dropped.json()['id']}/withdraw", json={"reason": "duplicate"}
            ).status_code
            == 200
        )
        url = f"/api/v1/subjects/{subject}/forms/disease_assessment/M3/entries"
        for status, when in (("ned", day(88)), ("not_evaluable", day(91))):
            assert (
                http.post(url, json={"items": {"status": status, "assessment_date": when, "method": "mri"}}).status_code
                == 201
            )
        entries = {e["id"]: e for e in http.get(entries_url(subject, "adverse_event")).json()}
    ehr_id = _of(list(entries.values()), f"AdverseEvent/{pushed_ae['id']}")["id"]
    with server.client("data_manager") as http:
        rows = [r for r in _csv(http, "adverse_event", deidentify="false") if r["subject"] == subject]
        # one row per entry that is data (the withdrawn one is not), in date order, each with its entry id
        assert [(r["entry"], r["visit"], r["visit_date"]) for r in rows] == [
            (typed.json()["id"], "LOG", day(38)),
            (ehr_id, "LOG", day(39)),
        ]
        assert rows[0]["seriousness_criteria"] == "hospitalisation;other_important"  # codes: sorted, joined
        assert rows[0]["term_verbatim"] == "abscess at the port site"  # identified, for the data manager
        assert rows[1]["ctcae_term"] == "diarrhea" and rows[1]["grade"] == "2"
        conmed = [r for r in _csv(http, "conmed", deidentify="false") if r["subject"] == subject]
        assert [(r["visit_date"], r["medication"], r["ongoing"]) for r in conmed] == [
            (day(20), "Metformin 500 mg", "true")
        ]
        assessments = [r for r in _csv(http, "disease_assessment", deidentify="false") if r["subject"] == subject]
        assert [(r["visit"], r["status"], bool(r["entry"])) for r in assessments] == [
            ("M3", "ned", True),
            ("M3", "not_evaluable", True),
        ]
    with server.client("sponsor") as http:
        deidentified = _csv(http, "adverse_event")
        assert deidentified and "entry" in deidentified[0] and "term_verbatim" not in deidentified[0]
        assert all(row["subject"] != subject for row in deidentified)
        assert "abscess at the port site" not in str(deidentified)
        assert {"hospitalisation;other_important"} <= {row["seriousness_criteria"] for row in deidentified}
        conmed = _csv(http, "conmed")
        assert conmed and not {"medication", "indication"} & set(conmed[0])
