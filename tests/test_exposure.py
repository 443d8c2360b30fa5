"""The exposure log (CRF-SPEC 7.1): the drug chooses the resource (pd1: a MedicationAdministration per
infusion, sorafenib: a MedicationStatement), the within-entry checks of the form file, and EHR pushes of
either landing in exposure (a MedicationStatement of another drug still goes to conmed). Real HTTP, SQLite
and PostgreSQL."""

import json
import uuid

import pytest
from crf_support import day, errors_of, save
from fhir_builders import FHIR_JSON, MRN, bundle, patient, post, urn  # noqa: F401

LOCAL = "http://example.org/fhir/CodeSystem/nct04163237"


def entries_url(subject_id: str, form_id: str = "exposure") -> str:
    return f"/api/v1/subjects/{subject_id}/forms/{form_id}/entries"


def infusion(**changes) -> dict:
    return {
        "drug": "pd1",
        "start_date": day(30),
        "dose": {"value": 200, "unit": "mg"},
        "route": "iv",
        "frequency": "q3w",
        "modification": "none",
        **changes,
    }


def tablets(**changes) -> dict:
    return {
        "drug": "sorafenib",
        "start_date": day(30),
        "end_date": day(60),
        "dose": 400,
        "route": "oral",
        "frequency": "bid",
        "modification": "none",
        **changes,
    }


@pytest.fixture
def enrolled(server):
    """(subject id, MRN) of a subject enrolled at S01 (no randomisation: no cross-form finding applies)."""
    mrn = uuid.uuid4().hex[:12]
    with server.client("coordinator", "S01") as http:
        response = http.post("/api/v1/subjects", json={"site": "S01", "mrn": mrn, "consent_date": day(14)})
        assert response.status_code == 201, response.text
        subject = response.json()["id"]
        assert save(http, subject, "surgery").status_code == 201
    return subject, mrn


def _resource(http, entry: dict) -> dict:
    reference = entry["items"]["drug"]["resource"]
    response = http.get(f"/fhir/{reference}")
    assert response.status_code == 200, response.text
    return response.json()


def test_a_pd1_infusion_is_a_medication_administration_and_sorafenib_a_statement(server, enrolled):
    subject, _ = enrolled
    with server.client("coordinator", "S01") as http:
        pd1 = http.post(entries_url(subject), json={"items": infusion()})
        assert pd1.status_code == 201, pd1.text
        assert pd1.json()["status"] == "complete" and pd1.json()["visit_date"] == day(30)
        administration = _resource(http, pd1.json())
        assert administration["resourceType"] == "MedicationAdministration"
        assert administration["medicationCodeableConcept"]["coding"][0]["code"] == "pd1-antibody"
        assert administration["effectiveDateTime"] == day(30)
        assert administration["dosage"]["dose"]["value"] == 200
        assert administration["dosage"]["route"]["coding"][0] == {"system": LOCAL, "code": "route-iv", "display": "iv"}
        sorafenib = http.post(entries_url(subject), json={"items": tablets()})
        assert sorafenib.status_code == 201, sorafenib.text
        statement = _resource(http, sorafenib.json())
        assert statement["resourceType"] == "MedicationStatement"
        assert statement["effectivePeriod"] == {"start": day(30), "end": day(60)}
        assert statement["dosage"][0]["timing"]["code"]["coding"][0]["code"] == "frequency-bid"
        listed = http.get(entries_url(subject)).json()
        assert [e["items"]["drug"]["value"] for e in listed] == ["pd1", "sorafenib"]
        assert listed[1]["items"]["dose"]["value"] == 400 and listed[1]["items"]["dose"]["unit"] == "mg"
        conmed = http.get(entries_url(subject, "conmed")).json()
        assert conmed == []  # a study drug is no concomitant medication


def test_the_within_entry_checks_refuse_with_item_and_rule(server, enrolled):
    subject, _ = enrolled
    with server.client("coordinator", "S01") as http:
        url = entries_url(subject)
        assert errors_of(http.post(url, json={"items": infusion(route="oral")})) == {("route", "route_for_drug")}
        assert errors_of(http.post(url, json={"items": tablets(route="iv")})) == {("route", "route_for_drug")}
        assert errors_of(http.post(url, json={"items": tablets(end_date=day(29))})) == {
            ("end_date", "end_before_start")
        }
        assert errors_of(http.post(url, json={"items": infusion(dose=2001)})) == {("dose", "hard_range")}
        assert errors_of(http.post(url, json={"items": infusion(dose=-1)})) == {("dose", "hard_range")}
        assert errors_of(http.post(url, json={"items": infusion(modification="reduced")})) == {
            ("modification_reason", "modification_reason_required")
        }
        assert http.get(url).json() == []  # nothing was written
        edge = http.post(
            url, json={"items": infusion(dose=2000, modification="interrupted", modification_reason="adverse_event")}
        )
        assert edge.status_code == 201, edge.text
        assert edge.json()["items"]["modification_reason"]["value"] == "adverse_event"
        assert http.post(url, json={"items": tablets(end_date=day(30), dose=0)}).status_code == 201


def test_changing_the_drug_replaces_the_resource_by_one_of_the_other_type(server, enrolled):
    subject, _ = enrolled
    with server.client("coordinator", "S01") as http:
        created = http.post(entries_url(subject), json={"items": infusion()})
        assert created.status_code == 201, created.text
        entry = created.json()
        before = entry["items"]["drug"]["resource"]
        changed = http.put(
            f"{entries_url(subject)}/{entry['id']}",
            json={"items": tablets(), "reason": "wrong drug"},
            headers={"If-Match": str(entry["version"])},
        )
        assert changed.status_code == 200, changed.text
        after = changed.json()["items"]["drug"]["resource"]
        assert before.startswith("MedicationAdministration/") and after.startswith("MedicationStatement/")
        assert http.get(f"/fhir/{before}").status_code == 410  # the infusion is gone, its history kept
        assert http.get(f"/fhir/{after}").status_code == 200


def _link(ehr, mrn: str) -> str:
    reply = ehr.post(
        "/fhir",
        json=bundle([post({"resourceType": "Patient", "identifier": [{"system": MRN["S01"], "value": mrn}]}, urn())]),
        headers=FHIR_JSON,
    )
    assert reply.status_code == 200, reply.text
    return reply.json()["entry"][0]["response"]["location"].split("/")[1]


def _of(listed: list[dict], reference: str) -> dict:
    found = [e for e in listed if e["items"].get("drug", e["items"].get("medication", {})).get("resource") == reference]
    assert len(found) == 1, (reference, listed)
    return found[0]


def test_ehr_pushes_of_study_treatment_land_in_exposure_other_medication_in_conmed(server, enrolled):
    subject, mrn = enrolled
    administration = {
        "resourceType": "MedicationAdministration",
        "status": "completed",
        "subject": {"reference": f"Patient/{subject}"},
        "medicationCodeableConcept": {"coding": [{"system": LOCAL, "code": "pd1-antibody"}], "text": "camrelizumab"},
        "effectiveDateTime": day(45),
        "dosage": {
            "route": {"coding": [{"system": LOCAL, "code": "route-iv"}]},
            "dose": {"value": 200, "unit": "mg", "system": "http://unitsofmeasure.org", "code": "mg"},
        },
    }
    statement = {
        "resourceType": "MedicationStatement",
        "status": "active",
        "subject": {"reference": f"Patient/{subject}"},
        "medicationCodeableConcept": {"coding": [{"system": LOCAL, "code": "sorafenib"}], "text": "Nexavar 200 mg"},
        "effectivePeriod": {"start": day(46)},
    }
    other = {**statement, "medicationCodeableConcept": {"text": "Metformin 500 mg"}}
    references = []
    with server.client("ehr", "S01") as ehr:
        assert _link(ehr, mrn) == subject
        for resource in (administration, statement, other):
            response = ehr.post(f"/fhir/{resource['resourceType']}", content=json.dumps(resource), headers=FHIR_JSON)
            assert response.status_code == 201, response.text
            references.append(f"{resource['resourceType']}/{response.json()['id']}")
    with server.client("coordinator", "S01") as http:
        exposure = http.get(entries_url(subject)).json()
        pd1, sorafenib = _of(exposure, references[0]), _of(exposure, references[1])
        assert pd1["source"] == "fhir" and pd1["visit_date"] == day(45)
        assert pd1["items"]["drug"]["value"] == "pd1" and pd1["items"]["route"]["value"] == "iv"
        assert pd1["items"]["dose"]["value"] == 200 and pd1["items"]["start_date"]["value"] == day(45)
        assert sorafenib["source"] == "fhir" and sorafenib["items"]["drug"]["value"] == "sorafenib"
        assert sorafenib["visit_date"] == day(46)
        assert len(exposure) == 2
        conmed = http.get(entries_url(subject, "conmed")).json()
        assert [e["items"]["medication"]["resource"] for e in conmed] == [references[2]]


def test_an_adverse_event_suspects_the_subjects_exposure_resource_of_each_drug(server, enrolled):
    """related_pd1 / related_sorafenib: suspectEntity.instance is the subject's exposure resource of that drug when
    there is one (the latest on or before the onset), else a contained Medication; R4B-valid either way."""
    from fhir.resources.R4B.adverseevent import AdverseEvent

    subject, _ = enrolled
    event = {
        "ctcae_term": "rash",
        "onset_date": day(40),
        "grade": 1,
        "serious": False,
        "outcome": "recovering",
        "related_pd1": "related",
        "related_sorafenib": "not_related",
    }
    with server.client("coordinator", "S01") as http:
        alone = http.post(entries_url(subject, "adverse_event"), json={"items": event})
        assert alone.status_code == 201, alone.text
        first = _resource_of(http, alone.json(), "ctcae_term")
        AdverseEvent.model_validate(first)
        assert {e["instance"]["reference"] for e in first["suspectEntity"]} == {"#pd1-antibody", "#sorafenib"}
        assert {c["id"] for c in first["contained"]} == {"pd1-antibody", "sorafenib"}
        pd1 = http.post(entries_url(subject), json={"items": infusion()}).json()
        http.post(entries_url(subject), json={"items": infusion(start_date=day(45))})  # after the onset
        sorafenib = http.post(entries_url(subject), json={"items": tablets()}).json()
        linked = http.post(entries_url(subject, "adverse_event"), json={"items": event})
        assert linked.status_code == 201, linked.text
        second = _resource_of(http, linked.json(), "ctcae_term")
        AdverseEvent.model_validate(second)
        instances = {
            e["extension"][0]["valueCodeableConcept"]["coding"][0]["code"]: e["instance"]["reference"]
            for e in second["suspectEntity"]
        }
        assert instances == {
            "pd1-antibody": pd1["items"]["drug"]["resource"],
            "sorafenib": sorafenib["items"]["drug"]["resource"],
        }
        assert "contained" not in second
        causality = {
            e["instance"]["reference"]: e["causality"][0]["assessment"]["coding"][0]["code"]
            for e in second["suspectEntity"]
        }
        assert causality[pd1["items"]["drug"]["resource"]] == "related"
        read = http.get(f"{entries_url(subject, 'adverse_event')}/{linked.json()['id']}").json()
        assert read["items"]["related_pd1"]["value"] == "related"
        assert read["items"]["related_sorafenib"]["value"] == "not_related"


def _resource_of(http, entry: dict, item_id: str) -> dict:
    response = http.get(f"/fhir/{entry['items'][item_id]['resource']}")
    assert response.status_code == 200, response.text
    return response.json()
