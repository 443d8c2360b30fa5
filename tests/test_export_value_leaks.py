"""The export profile allow-lists values, not only elements (issue 17, finding 7): identifiers planted in
every string the profile lets through (units, unit codes and systems, local and standard codes, comparators,
statuses, gender, arms, address state and country, and the same inside every allowed extension, component
and reference range) never reach the sponsor's export; the study's own units and codes still do.
Free text (issue 15, part 6): an identifier planted in every `text` item of the study's forms (through the eCRF
door) and in the free text of the trial-conduct resources an EHR pushes (AdverseEvent, MedicationStatement,
MedicationAdministration) reaches no sponsor: not the Bulk export, not the form CSVs, not SDTM (the infusion the
EHR pushed is an EX record there), not the endpoints dataset (the planted subject is randomised in the past, so the
dataset has its row: no identifier, date or free text in it).
"""

import csv
import io
import re

import orjson
import pytest

from ecrf.config import REPO_FORMS_DIR
from study_model.loader import load_study
from tests.cdisc_support import cdisc_export, files

from tests.crf_support import day, save
from tests.conftest import running_server
from tests.test_endpoints import R0, randomised
from tests.test_export_protocol import download, export, export_settings
from testkit.databases import fresh_database

UCUM = "http://unitsofmeasure.org"
LOINC = "http://loinc.org"
STUDY_LOCAL = "http://example.org/fhir/CodeSystem/nct04163237"
CANONICAL = "http://example.org/fhir/StructureDefinition/canonical-quantity"
MCODE = "http://hl7.org/fhir/us/mcode/StructureDefinition/mcode-histology-morphology-behavior"
PLANTED = {  # where -> an identifier of a person, shaped to pass the element's FHIR type
    "unit": "MRN-ZQ-730215",
    "unit_code": "Quackenbush",
    "unit_system": "urn:mrn:ZQ730215",
    "annotated_unit": "g/dL{Zebediah}",
    "local_code": "ZEBEDIAH-QUACKENBUSH",
    "local_system": "urn:hospital:Quackenbush",
    "study_system_code": "margin_status-Quackenbush",
    "loinc_code": "Zebediah",
    "comparator": "MRN730215",
    "component_unit": "Zeb.Quack",
    "range_unit": "QuackenbushZ",
    "interpretation": "ZQ-730215-H",
    "extension_unit": "Springfield49007",
    "extension_code": "MORPH-Quackenbush",
    "state": "Springfield-IL",
    "country": "Quackenbush-Land",
    "category": "Zebediah-lab",
    "method": "ZebQuack-method",
}


# every `text` item of the study's forms -> an identifier planted in it; a new text item fails the test below
# until it is planted here too
FREE_TEXT_ITEMS = {
    ("adverse_event", "term_verbatim"): "Verbatim-Zebediah-Quackenbush-rash",
    ("conmed", "medication"): "Quackenbush-family-tincture",
    ("conmed", "indication"): "Zebediah-Quackenbush-MRN-730215-insomnia",
}
FREE_TEXT_FHIR = {  # free text of the pushed resources: element -> planted identifier
    "AdverseEvent.event.text": "EHR-verbatim-Ottoline-Vandersteen",
    "AdverseEvent.suspectEntity.causality.productRelatedness": "EHR-relatedness-Fairhaven-49007",
    "MedicationStatement.medicationCodeableConcept.text": "Hortensia-Brimblecombe-tonic",
    "MedicationStatement.reasonCode.text": "Reason-Ottoline-Fairhaven",
    "MedicationStatement.note": "Note-Vandersteen-MRN-99301",
    "MedicationStatement.dosage.text": "Dosage-Brimblecombe-evening",
    "MedicationAdministration.note": "Infusion-note-Hortensia-Ottoline",
    "MedicationAdministration.dosage.text": "Dose-text-Vandersteen",
}
AE_ONSET, CONMED_START = day(40), day(35)


def _free_text_resources(patient_id: str) -> list[dict]:
    subject = {"reference": f"Patient/{patient_id}"}
    ext = "http://example.org/fhir/StructureDefinition"
    return [  # the infusion first: the adverse event names it as its suspect
        {
            "resourceType": "MedicationAdministration",
            "status": "completed",
            "subject": subject,
            "medicationCodeableConcept": {"coding": [{"system": STUDY_LOCAL, "code": "pd1-antibody"}]},
            "effectiveDateTime": day(36),
            "note": [{"text": FREE_TEXT_FHIR["MedicationAdministration.note"]}],
            "dosage": {
                "text": FREE_TEXT_FHIR["MedicationAdministration.dosage.text"],
                "dose": {"value": 200, "unit": "mg", "system": UCUM, "code": "mg"},
            },
        },
        {
            "resourceType": "AdverseEvent",
            "actuality": "actual",
            "subject": subject,
            "date": AE_ONSET,
            "event": {
                "coding": [{"system": STUDY_LOCAL, "code": "ae-diarrhea"}],
                "text": FREE_TEXT_FHIR["AdverseEvent.event.text"],
            },
            "extension": [{"url": f"{ext}/ctcae-grade", "valueInteger": 2}],
            "seriousness": {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/adverse-event-seriousness", "code": "non-serious"}
                ]
            },
            "suspectEntity": [
                {
                    "instance": {"reference": "MedicationAdministration/{administered}"},
                    "causality": [
                        {
                            "productRelatedness": FREE_TEXT_FHIR[
                                "AdverseEvent.suspectEntity.causality.productRelatedness"
                            ],
                            "assessment": {"coding": [{"system": STUDY_LOCAL, "code": "not-related"}]},
                        }
                    ],
                }
            ],
        },
        {
            "resourceType": "MedicationStatement",
            "status": "active",
            "subject": subject,
            "medicationCodeableConcept": {
                "coding": [{"system": STUDY_LOCAL, "code": "atc-A"}],
                "text": FREE_TEXT_FHIR["MedicationStatement.medicationCodeableConcept.text"],
            },
            "effectivePeriod": {"start": CONMED_START},
            "reasonCode": [{"text": FREE_TEXT_FHIR["MedicationStatement.reasonCode.text"]}],
            "note": [{"text": FREE_TEXT_FHIR["MedicationStatement.note"]}],
            "dosage": [{"text": FREE_TEXT_FHIR["MedicationStatement.dosage.text"]}],
        },
    ]


def _observation(patient_id: str) -> dict:
    quantity = {
        "value": 13.2,
        "unit": PLANTED["unit"],
        "system": UCUM,
        "code": PLANTED["unit_code"],
        "comparator": "<",
        "extension": [
            {
                "url": CANONICAL,
                "valueQuantity": {"value": 132, "unit": PLANTED["extension_unit"], "system": UCUM, "code": "g/L"},
            }
        ],
    }
    return {
        "resourceType": "Observation",
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": PLANTED["category"],
                    }
                ]
            }
        ],
        "code": {
            "coding": [
                {"system": LOINC, "code": "718-7"},
                {"system": LOINC, "code": PLANTED["loinc_code"]},
                {"system": PLANTED["local_system"], "code": PLANTED["local_code"]},
                {"system": STUDY_LOCAL, "code": PLANTED["study_system_code"]},
            ]
        },
        "method": {"coding": [{"system": "urn:local:methods", "code": PLANTED["method"]}]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "effectiveDateTime": f"{day(25)}T09:15:00Z",
        "valueQuantity": quantity,
        "interpretation": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                        "code": PLANTED["interpretation"],
                    }
                ]
            }
        ],
        "referenceRange": [
            {
                "low": {
                    "value": 12,
                    "unit": PLANTED["range_unit"],
                    "system": PLANTED["unit_system"],
                    "code": PLANTED["annotated_unit"],
                }
            }
        ],
        "component": [
            {
                "code": {"coding": [{"system": LOINC, "code": "718-7"}]},
                "valueQuantity": {
                    "value": 1,
                    "unit": PLANTED["component_unit"],
                    "comparator": ">",
                    "system": UCUM,
                    "code": "g/dL",
                },
            }
        ],
    }


def _condition(patient_id: str) -> dict:
    return {
        "resourceType": "Condition",
        "subject": {"reference": f"Patient/{patient_id}"},
        "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "C22.0"}]},
        "extension": [
            {
                "url": MCODE,
                "valueCodeableConcept": {
                    "coding": [
                        {"system": "http://terminology.hl7.org/CodeSystem/icd-o-3", "code": "8170/3"},
                        {"system": "urn:hospital:morphology", "code": PLANTED["extension_code"]},
                    ]
                },
            }
        ],
        "onsetDateTime": day(-10),
    }


@pytest.fixture(scope="module")
def planted(database_url, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("value-leaks")
    with fresh_database(database_url, tmp_path) as url, running_server(export_settings(url, tmp_path)) as server:
        with server.client("investigator", "S01") as http:
            # randomised on day(R0), in the past (as tests/test_endpoints.py does): the sponsor's endpoints
            # dataset has a row of this subject, so its check below can fail
            subject_id, patient_id = randomised(server, http)
            subject = {"id": subject_id, "patient_id": patient_id}
            for form in ("labs", "pathology"):  # surgery: saved by randomised()
                assert save(http, subject["id"], form).status_code == 201
            patient = http.get(f"/fhir/Patient/{patient_id}").json()
            patient["address"] = [{"state": PLANTED["state"], "country": PLANTED["country"]}]
            assert http.put(f"/fhir/Patient/{patient_id}", json=patient).status_code == 200
            administered = None
            for resource in (_observation(patient_id), _condition(patient_id), *_free_text_resources(patient_id)):
                for suspect in resource.get("suspectEntity", []):
                    suspect["instance"]["reference"] = suspect["instance"]["reference"].format(
                        administered=administered
                    )
                response = http.post(f"/fhir/{resource['resourceType']}", json=resource)
                assert response.status_code == 201, response.text
                if resource["resourceType"] == "MedicationAdministration":
                    administered = response.json()["id"]
            entries = {
                "adverse_event": {
                    "ctcae_term": "other",
                    "term_verbatim": FREE_TEXT_ITEMS[("adverse_event", "term_verbatim")],
                    "onset_date": day(41),
                    "grade": 2,
                    "serious": False,
                    "outcome": "recovering",
                    "seriousness_criteria": [],
                    "related_pd1": "related",
                },
                "conmed": {
                    "medication": FREE_TEXT_ITEMS[("conmed", "medication")],
                    "atc": "N",
                    "indication": FREE_TEXT_ITEMS[("conmed", "indication")],
                    "start_date": day(30),
                    "ongoing": True,
                },
            }
            for form_id, items in entries.items():
                items = {key: value for key, value in items.items() if value != []}
                response = http.post(f"/api/v1/subjects/{subject['id']}/forms/{form_id}/entries", json={"items": items})
                assert response.status_code == 201, response.text
        yield server


def test_no_planted_identifier_reaches_the_sponsor(planted):
    with planted.client("sponsor") as http:
        manifest = export(http)
        raw = "\n".join(http.get(entry["url"]).text for entry in manifest["output"])
    assert manifest["error"] == []
    leaked = {where: value for where, value in PLANTED.items() if value in raw}
    assert leaked == {}


def test_the_studys_own_units_and_codes_still_go_out(planted):
    with planted.client("sponsor") as http:
        files = download(http, export(http))
    [planted_lab] = [o for o in files["Observation"] if o.get("valueQuantity", {}).get("comparator") == "<"]
    assert planted_lab["code"]["coding"] == [{"system": LOINC, "code": "718-7"}]
    assert planted_lab["valueQuantity"] == {
        "value": 13.2,
        "system": UCUM,
        "comparator": "<",
        "extension": [{"url": CANONICAL, "valueQuantity": {"value": 132, "system": UCUM, "code": "g/L"}}],
    }
    assert planted_lab["component"][0]["valueQuantity"]["code"] == "g/dL"
    assert planted_lab["status"] == "final"
    units = {o["valueQuantity"].get("unit") for o in files["Observation"] if "valueQuantity" in o}
    assert {"g/dL", "10*9/L"} & units  # the form's labs, in the study's units
    local = [
        c
        for o in files["Observation"]
        for c in o.get("valueCodeableConcept", {}).get("coding", [])
        if c["system"] == STUDY_LOCAL
    ]
    assert {"system": STUDY_LOCAL, "code": "margin_status-R1"} in local  # the pathology form's local code
    morphologies = [
        coding
        for condition in files["Condition"]
        for extension in condition.get("extension", [])
        for coding in extension["valueCodeableConcept"]["coding"]
    ]
    assert len(morphologies) >= 2  # the form's and the planted Condition's
    assert all(
        coding == {"system": "http://terminology.hl7.org/CodeSystem/icd-o-3", "code": "8170/3"}
        for coding in morphologies
    )


def test_every_text_item_of_the_study_is_planted():
    study = load_study(REPO_FORMS_DIR)
    text_items = {(form.id, item.id) for form in study.forms for item in form.items if item.type == "text"}
    assert text_items == set(FREE_TEXT_ITEMS)


def _form_csv(http, form_id: str) -> list[dict]:
    response = http.get(f"/api/v1/exports/forms/{form_id}.csv")
    assert response.status_code == 200, response.text
    assert response.headers["X-Deidentification-Profile"] != "none (identified)"
    return list(csv.DictReader(io.StringIO(response.text)))


def test_no_planted_free_text_reaches_the_sponsor(planted):
    """Bulk, form CSV and SDTM, all de-identified: the coded items beside the free text go, the text never."""
    forms = sorted({form_id for form_id, _ in FREE_TEXT_ITEMS})
    with planted.client("sponsor") as http:
        manifest = export(http)
        bulk = "\n".join(http.get(entry["url"]).text for entry in manifest["output"])
        tables = {form_id: _form_csv(http, form_id) for form_id in forms}
        sdtm_files = files(http, cdisc_export(http, "sdtm"))
        sdtm = b"\n".join(sdtm_files.values()).decode("latin-1")
    assert manifest["error"] == []
    assert {"AdverseEvent", "MedicationStatement", "MedicationAdministration"} <= {
        o["type"] for o in manifest["output"]
    }
    everything = {"bulk": bulk, "csv": "\n".join(str(rows) for rows in tables.values()), "sdtm": sdtm}
    planted_values = [*FREE_TEXT_ITEMS.values(), *FREE_TEXT_FHIR.values()]
    leaked = {(where, value) for where, text in everything.items() for value in planted_values if value in text}
    assert leaked == set()
    for form_id, rows in tables.items():  # the rows are there, one per entry, without the text columns
        assert len([row for row in rows if row["entry"]]) == 2, (form_id, rows)  # the eCRF's and the EHR's
        texts = {item for form, item in FREE_TEXT_ITEMS if form == form_id}
        assert texts and not texts & set(rows[0])
    assert {row["ctcae_term"] for row in tables["adverse_event"]} >= {"other", "diarrhea"}
    assert {"ae.json", "cm.json"} <= set(sdtm_files)  # the domains of the two log forms are there
    for name in ("ae.json", "cm.json"):  # a record per entry: the eCRF's and the one that landed from the EHR
        assert len(orjson.loads(sdtm_files[name])["rows"]) == 2, name
    [infusion] = orjson.loads(sdtm_files["ex.json"])["rows"]  # the EHR's infusion, landed in the exposure log
    assert "PD-1 ANTIBODY" in infusion and 200.0 in infusion and day(36) not in infusion


def test_bulk_adverse_events_and_medication_leave_coded_and_shifted_without_free_text(planted):
    with planted.client("sponsor") as http:
        out = download(http, export(http))
    [event] = [e for e in out["AdverseEvent"] if e["event"]["coding"][0]["code"] == "ae-diarrhea"]
    assert event["event"] == {"coding": [{"system": STUDY_LOCAL, "code": "ae-diarrhea"}]}  # text dropped
    assert event["date"] != AE_ONSET and event["date"][:2] == AE_ONSET[:2]  # shifted, still a date
    assert {"url": "http://example.org/fhir/StructureDefinition/ctcae-grade", "valueInteger": 2} in event["extension"]
    assert event["seriousness"]["coding"][0]["code"] == "non-serious" and "note" not in event
    assert event["subject"]["reference"].startswith("Patient/")
    [statement] = [
        m
        for m in out["MedicationStatement"]
        if m.get("effectivePeriod", {}).get("start")
        and m["medicationCodeableConcept"].get("coding") == [{"system": STUDY_LOCAL, "code": "atc-A"}]
    ]
    assert "text" not in statement["medicationCodeableConcept"]
    assert statement["effectivePeriod"]["start"] != CONMED_START
    assert "note" not in statement and "reasonCode" not in statement and "dosage" not in statement
    [administration] = out["MedicationAdministration"]
    assert "note" not in administration and administration["dosage"] == {
        "dose": {"value": 200, "unit": "mg", "system": UCUM, "code": "mg"}
    }
    assert administration["effectiveDateTime"] != day(36)
    # the eCRF's adverse event suspects the subject's infusion (which landed in exposure): pseudonymised reference,
    # the drug and the causality coded
    [suspect] = [e for e in out["AdverseEvent"] if e["event"]["coding"][0]["code"] == "ae-other"][0]["suspectEntity"]
    assert suspect == {
        "extension": [
            {
                "url": "http://example.org/fhir/StructureDefinition/suspect-medication",
                "valueCodeableConcept": {"coding": [{"system": STUDY_LOCAL, "code": "pd1-antibody"}]},
            }
        ],
        "instance": {"reference": f"MedicationAdministration/{administration['id']}"},
        "causality": [{"assessment": {"coding": [{"system": STUDY_LOCAL, "code": "related"}]}}],
    }
    # the eCRF's entries leave coded too: the conmed's ATC group, never its name
    atc = [
        m
        for m in out["MedicationStatement"]
        if {"system": STUDY_LOCAL, "code": "atc-N"} in m["medicationCodeableConcept"].get("coding", [])
    ]
    assert len(atc) == 1 and "text" not in atc[0]["medicationCodeableConcept"]


def test_the_endpoints_dataset_carries_no_identifier_date_or_free_text(planted):
    """The sponsor's `endpoints` dataset (CRF-SPEC 8) of the planted subject, randomised on day(R0): its row is
    there with days counted from the randomisation, and nothing of what was planted, no subject or patient id,
    MRN, randomisation number and no date reaches the CSV or its manifest."""
    from ecrf.export.bulk import deidentifier

    with planted.client("investigator", "S01") as http:
        [subject] = http.get("/api/v1/subjects").json()["items"]
        research = http.get(f"/fhir/ResearchSubject/{subject['id']}").json()
        patient_id = research["individual"]["reference"].split("/")[1]
        patient = http.get(f"/fhir/Patient/{patient_id}").json()
        identified = http.get(f"/api/v1/subjects/{subject['id']}/endpoints").json()
    with planted.client("sponsor") as http:
        manifest = export(http, "/api/v1/exports/endpoints")
        outputs = {entry["type"]: http.get(entry["url"]).text for entry in manifest["output"]}
    assert set(outputs) == {"endpoints", "manifest"}
    rows = list(csv.DictReader(io.StringIO(outputs["endpoints"])))
    pseudonym = deidentifier(planted.runtime).pseudonym(patient_id)
    last_alive = identified["os"]["days"]
    assert last_alive == 41 - R0  # the eCRF adverse event's onset, day(41): the latest date of the subject's data
    assert rows == [
        {
            "subject": pseudonym,
            "arm": "SORA",
            "stratum": "S01-A",
            "rfs_days": "0",
            "rfs_event": "0",
            "os_days": str(last_alive),
            "os_event": "0",
        }
    ]
    everything = "\n".join(outputs.values())
    identifiers = [
        subject["id"],
        patient_id,
        *(identifier["value"] for identifier in patient.get("identifier", [])),
        *(identifier["value"] for identifier in research.get("identifier", [])),  # the randomisation number
        *PLANTED.values(),
        *FREE_TEXT_ITEMS.values(),
        *FREE_TEXT_FHIR.values(),
    ]
    assert len(identifiers) >= 3 + len(PLANTED)
    assert [value for value in identifiers if value in everything] == []
    assert re.findall(r"\d{4}-\d{2}-\d{2}", everything) == []  # no date: days only
