"""The export profile allow-lists values, not only elements (issue 17, finding 7): identifiers planted in
every string the profile lets through (units, unit codes and systems, local and standard codes, comparators,
statuses, gender, arms, address state and country, and the same inside every allowed extension, component
and reference range) never reach the sponsor's export; the study's own units and codes still do.
"""
import pytest

from tests.crf_support import day, enrol, save
from tests.conftest import running_server
from tests.test_export_protocol import download, export, export_settings, fresh_database

UCUM = "http://unitsofmeasure.org"
LOINC = "http://loinc.org"
STUDY_LOCAL = "http://example.org/fhir/CodeSystem/nct04163237"
CANONICAL = "http://example.org/fhir/StructureDefinition/canonical-quantity"
MCODE = "http://hl7.org/fhir/us/mcode/StructureDefinition/mcode-histology-morphology-behavior"
PLANTED = {  # where -> an identifier of a person, shaped to pass the element's FHIR type
    "unit": "MRN-ZQ-730215", "unit_code": "Quackenbush", "unit_system": "urn:mrn:ZQ730215",
    "annotated_unit": "g/dL{Zebediah}", "local_code": "ZEBEDIAH-QUACKENBUSH", "local_system": "urn:hospital:Quackenbush",
    "study_system_code": "margin_status-Quackenbush", "loinc_code": "Zebediah", "comparator": "MRN730215",
    "component_unit": "Zeb.Quack", "range_unit": "QuackenbushZ", "interpretation": "ZQ-730215-H",
    "extension_unit": "Springfield49007", "extension_code": "MORPH-Quackenbush", "state": "Springfield-IL",
    "country": "Quackenbush-Land", "category": "Zebediah-lab", "method": "ZebQuack-method",
}


def _observation(patient_id: str) -> dict:
    quantity = {"value": 13.2, "unit": PLANTED["unit"], "system": UCUM, "code": PLANTED["unit_code"],
                "comparator": "<", "extension": [{"url": CANONICAL, "valueQuantity": {
                    "value": 132, "unit": PLANTED["extension_unit"], "system": UCUM, "code": "g/L"}}]}
    return {
        "resourceType": "Observation", "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                  "code": PLANTED["category"]}]}],
        "code": {"coding": [{"system": LOINC, "code": "718-7"}, {"system": LOINC, "code": PLANTED["loinc_code"]},
                            {"system": PLANTED["local_system"], "code": PLANTED["local_code"]},
                            {"system": STUDY_LOCAL, "code": PLANTED["study_system_code"]}]},
        "method": {"coding": [{"system": "urn:local:methods", "code": PLANTED["method"]}]},
        "subject": {"reference": f"Patient/{patient_id}"}, "effectiveDateTime": f"{day(25)}T09:15:00Z",
        "valueQuantity": quantity,
        "interpretation": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                                        "code": PLANTED["interpretation"]}]}],
        "referenceRange": [{"low": {"value": 12, "unit": PLANTED["range_unit"], "system": PLANTED["unit_system"],
                                    "code": PLANTED["annotated_unit"]}}],
        "component": [{"code": {"coding": [{"system": LOINC, "code": "718-7"}]},
                       "valueQuantity": {"value": 1, "unit": PLANTED["component_unit"], "comparator": ">",
                                         "system": UCUM, "code": "g/dL"}}],
    }


def _condition(patient_id: str) -> dict:
    return {"resourceType": "Condition", "subject": {"reference": f"Patient/{patient_id}"},
            "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "C22.0"}]},
            "extension": [{"url": MCODE, "valueCodeableConcept": {"coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/icd-o-3", "code": "8170/3"},
                {"system": "urn:hospital:morphology", "code": PLANTED["extension_code"]}]}}],
            "onsetDateTime": day(-10)}


@pytest.fixture(scope="module")
def planted(database_url, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("value-leaks")
    with fresh_database(database_url, tmp_path) as url, running_server(export_settings(url, tmp_path)) as server:
        with server.client("investigator", "S01") as http:
            subject = enrol(http, "S01")
            for form in ("surgery", "labs", "pathology"):
                assert save(http, subject["id"], form).status_code == 201
            patient_id = subject["patient_id"]
            patient = http.get(f"/fhir/Patient/{patient_id}").json()
            patient["address"] = [{"state": PLANTED["state"], "country": PLANTED["country"]}]
            assert http.put(f"/fhir/Patient/{patient_id}", json=patient).status_code == 200
            for resource in (_observation(patient_id), _condition(patient_id)):
                response = http.post(f"/fhir/{resource['resourceType']}", json=resource)
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
    assert planted_lab["valueQuantity"] == {"value": 13.2, "system": UCUM, "comparator": "<", "extension": [
        {"url": CANONICAL, "valueQuantity": {"value": 132, "system": UCUM, "code": "g/L"}}]}
    assert planted_lab["component"][0]["valueQuantity"]["code"] == "g/dL"
    assert planted_lab["status"] == "final"
    units = {o["valueQuantity"].get("unit") for o in files["Observation"] if "valueQuantity" in o}
    assert {"g/dL", "10*9/L"} & units  # the form's labs, in the study's units
    local = [c for o in files["Observation"] for c in o.get("valueCodeableConcept", {}).get("coding", [])
             if c["system"] == STUDY_LOCAL]
    assert {"system": STUDY_LOCAL, "code": "margin_status-R1"} in local  # the pathology form's local code
    morphologies = [coding for condition in files["Condition"] for extension in condition.get("extension", [])
                    for coding in extension["valueCodeableConcept"]["coding"]]
    assert len(morphologies) >= 2  # the form's and the planted Condition's
    assert all(coding == {"system": "http://terminology.hl7.org/CodeSystem/icd-o-3", "code": "8170/3"}
               for coding in morphologies)
