"""One store, two doors: FHIR data shows in the matching form and visit; form values are FHIR resources."""

from crf_support import day, enrol, path, save
from fhir_builders import FHIR_JSON, MRN, lab

LOCAL = "http://example.org/fhir/CodeSystem/nct04163237"


def _push(server, resource):
    with server.client("ehr", "S01") as http:
        response = http.post(f"/fhir/{resource['resourceType']}", json=resource, headers=FHIR_JSON)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def _link(server, subject):
    """The ehr sees what it pushed only: it pushes the enrolled Patient (by its MRN) before its results."""
    with server.client("ehr", "S01") as http:
        patient = {"resourceType": "Patient", "identifier": [{"system": MRN["S01"], "value": subject["mrn"]}]}
        response = http.post("/fhir/Patient", json=patient, headers=FHIR_JSON)
    assert response.status_code == 200 and response.json()["id"] == subject["patient_id"], response.text
    return subject


def _subject_with_surgery(server):
    with server.client("investigator", "S01") as http:
        subject = enrol(http)
        assert save(http, subject["id"], "surgery").status_code == 201
    return _link(server, subject)


def test_ehr_results_appear_in_the_visit_whose_window_holds_their_date(server):
    subject = _subject_with_surgery(server)
    patient = f"Patient/{subject['patient_id']}"
    hemoglobin = _push(server, lab(patient, "718-7", 12.1, "g/dL", day(21), uln=17.5))
    _push(server, lab(patient, "777-3", 150, "10*3/uL", day(26)))  # SCR and M1 overlap: M1's target is nearer
    _push(server, lab(patient, "1751-7", 3.9, "g/dL", day(25)))  # ...and SCR's here
    _push(server, lab(patient, "1742-6", 30, "U/L", day(60)))  # outside every labs window
    with server.client("monitor", "S01") as http:
        scr = http.get(path(subject["id"], "labs", "SCR")).json()
        m1 = http.get(path(subject["id"], "labs", "M1")).json()
        m3 = http.get(path(subject["id"], "labs", "M3")).json()
    assert scr["status"] == "not_started"
    assert scr["items"]["hemoglobin"] == {
        "value": 121.0,
        "unit": "g/L",
        "exact": scr["items"]["hemoglobin"]["exact"],
        "entered": {"value": 12.1, "unit": "g/dL"},
        "uln": 175.0,
        "source": "fhir",
        "resource": f"Observation/{hemoglobin}",
        "resource_version": 1,
        "effective": day(21),
    }
    assert set(scr["items"]) == {"hemoglobin", "albumin"} and scr["items"]["albumin"]["value"] == 39.0
    assert set(m1["items"]) == {"platelets"} and m1["items"]["platelets"]["source"] == "fhir"
    assert "alt" not in m3["items"] and "alt" not in scr["items"]


def test_form_value_wins_and_the_ehr_value_is_kept_as_an_alternative(server):
    subject = _subject_with_surgery(server)
    _push(server, lab(f"Patient/{subject['patient_id']}", "718-7", 11.0, "g/dL", day(20)))
    with server.client("investigator", "S01") as http:
        saved = save(http, subject["id"], "labs", {"hemoglobin": 125})
    items, alternatives = saved.json()["items"], saved.json()["alternatives"]
    assert items["hemoglobin"]["value"] == 125 and items["hemoglobin"]["source"] == "form"
    assert [(a["value"], a["source"]) for a in alternatives["hemoglobin"]] == [(110.0, "fhir")]


def test_ehr_surgery_procedure_sets_day_zero(server):
    with server.client("investigator", "S01") as http:
        subject = _link(server, enrol(http))
    _push(
        server,
        {
            "resourceType": "Procedure",
            "status": "completed",
            "subject": {"reference": f"Patient/{subject['patient_id']}"},
            "code": {"coding": [{"system": LOCAL, "code": "hepatectomy"}]},
            "performedDateTime": day(0),
        },
    )
    with server.client("investigator", "S01") as http:
        detail = http.get(f"/api/v1/subjects/{subject['id']}").json()
        surgery = http.get(path(subject["id"], "surgery", "PREOP")).json()
    assert detail["day_zero"] == day(0)
    assert surgery["items"]["surgery_date"]["value"] == day(0) and surgery["items"]["surgery_date"]["source"] == "fhir"


def test_form_values_are_fhir_resources_read_through_the_fhir_door(server):
    subject = _subject_with_surgery(server)
    with server.client("investigator", "S01") as http:
        saved = save(
            http,
            subject["id"],
            "labs",
            {"hemoglobin": {"value": 13.2, "unit": "g/dL"}, "creatinine": 80, "creatinine_uln": 97},
        ).json()
        demographics = save(http, subject["id"], "demographics").json()
        observation = http.get(f"/fhir/{saved['items']['hemoglobin']['resource']}")
        creatinine = http.get(f"/fhir/{saved['items']['creatinine']['resource']}").json()
        patient = http.get(f"/fhir/Patient/{subject['patient_id']}").json()
        resave = save(
            http, subject["id"], "labs", {"hemoglobin": 133, "creatinine": 80, "creatinine_uln": 97}, reason="re-read"
        ).json()
        again = http.get(f"/fhir/{resave['items']['hemoglobin']['resource']}").json()
    assert observation.status_code == 200 and observation.headers["etag"] == 'W/"1"'
    body = observation.json()
    assert body["status"] == "final" and body["subject"] == {"reference": f"Patient/{subject['patient_id']}"}
    assert {"system": "http://loinc.org", "code": "718-7"}.items() <= body["code"]["coding"][0].items()
    assert body["effectiveDateTime"] == day(21)
    assert (body["valueQuantity"]["value"], body["valueQuantity"]["code"]) == (13.2, "g/dL")
    assert body["valueQuantity"]["system"] == "http://unitsofmeasure.org"
    assert creatinine["referenceRange"][0]["high"]["value"] == 97
    assert patient["gender"] == "female" and patient["birthDate"] == "1970-05-01"
    assert demographics["items"]["sex"]["source"] == "form"
    assert again["id"] == body["id"] and again["meta"]["versionId"] == "2"
    assert again["valueQuantity"]["value"] == 133
