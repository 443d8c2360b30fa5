"""FHIR REST over real HTTP: metadata, create/read/vread/history, If-Match, delete, site scoping, limits."""

from fhir.resources.R4B import get_fhir_model_class

from tests.fhir_builders import FHIR_JSON, MRN, lab, mrn, patient


def _create(http, resource, **headers):
    response = http.post(f"/fhir/{resource['resourceType']}", json=resource, headers={**FHIR_JSON, **headers})
    assert response.status_code in (200, 201), response.text
    return response


def test_metadata_is_public_valid_and_truthful(server):
    with server.client() as http:
        response = http.get("/fhir/metadata")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/fhir+json")
    statement = response.json()
    get_fhir_model_class("CapabilityStatement").model_validate(statement)
    resources = {r["type"]: r for r in statement["rest"][0]["resource"]}
    assert set(resources) == {
        "Patient",
        "ResearchSubject",
        "Observation",
        "Condition",
        "Procedure",
        "Immunization",
        "MedicationStatement",
        "Specimen",
        "MedicationAdministration",
        "MedicationRequest",
        "AdverseEvent",
        "DiagnosticReport",
        "Encounter",
        "ResearchStudy",
        "Questionnaire",
        "Medication",
        "Group",
        "OperationDefinition",
    }  # the kept types of forms/study.yaml, the read-only ones
    # (v2: OperationDefinition, the definitions of ResearchSubject/$randomize and Patient/$everything)
    assert "Claim" not in resources
    assert [i["code"] for i in resources["Questionnaire"]["interaction"]] == ["read"]  # the eCRF door's forms
    assert "interaction" not in resources["Group"]  # only Group/{study}/$export
    observation = resources["Observation"]
    assert {i["code"] for i in observation["interaction"]} >= {
        "read",
        "vread",
        "update",
        "delete",
        "create",
        "search-type",
        "history-instance",
    }
    assert {p["name"] for p in observation["searchParam"]} >= {"subject", "code", "date", "_lastUpdated"}
    assert {i["code"] for i in statement["rest"][0]["interaction"]} == {"transaction", "batch", "history-system"}
    assert [i["code"] for i in resources["ResearchStudy"]["interaction"]] == ["read"]
    assert [i["code"] for i in resources["OperationDefinition"]["interaction"]] == ["read"]


def test_create_read_vread_update_history_delete(server):
    with server.client("ehr", "S01") as http:
        created = _create(http, patient())
        assert created.status_code == 201
        body = created.json()
        pid = body["id"]
        assert created.headers["etag"] == 'W/"1"'
        assert created.headers["location"].endswith(f"/fhir/Patient/{pid}/_history/1")
        assert created.headers["last-modified"].endswith("GMT")
        assert body["meta"]["versionId"] == "1" and body["meta"]["lastUpdated"]

        read = http.get(f"/fhir/Patient/{pid}")
        assert read.status_code == 200 and read.headers["etag"] == 'W/"1"'
        assert read.headers["content-type"].startswith("application/fhir+json")

        changed = {**read.json(), "gender": "male"}
        updated = http.put(f"/fhir/Patient/{pid}", json=changed, headers={"If-Match": 'W/"1"'})
        assert updated.status_code == 200 and updated.headers["etag"] == 'W/"2"'

        stale = http.put(f"/fhir/Patient/{pid}", json={**changed, "gender": "other"}, headers={"If-Match": 'W/"1"'})
        assert stale.status_code == 412
        assert stale.json()["resourceType"] == "OperationOutcome"
        assert http.get(f"/fhir/Patient/{pid}").json()["gender"] == "male"

        assert http.get(f"/fhir/Patient/{pid}/_history/1").json()["gender"] == "female"
        assert http.get(f"/fhir/Patient/{pid}/_history/2").json()["gender"] == "male"
        assert http.get(f"/fhir/Patient/{pid}/_history/9").status_code == 404

        deleted = http.delete(f"/fhir/Patient/{pid}")
        assert deleted.status_code == 204
        gone = http.get(f"/fhir/Patient/{pid}")
        assert gone.status_code == 410 and gone.json()["issue"][0]["code"] == "deleted"
        history = http.get(f"/fhir/Patient/{pid}/_history").json()
        assert history["type"] == "history"
        assert [e["response"]["etag"] for e in history["entry"]] == ['W/"3"', 'W/"2"', 'W/"1"']
        assert [e["request"]["method"] for e in history["entry"]] == ["DELETE", "PUT", "POST"]
        assert "resource" not in history["entry"][0]
        get_fhir_model_class("Bundle").model_validate(history)
        assert http.get(f"/fhir/Patient/{pid}/_history/1").status_code == 200


def test_update_as_create_uses_the_client_id(server):
    pid = f"client-{mrn()}"
    with server.client("ehr", "S01") as http:
        response = http.put(f"/fhir/Patient/{pid}", json={**patient(), "id": pid})
        assert response.status_code == 201 and response.headers["etag"] == 'W/"1"'
        assert http.get(f"/fhir/Patient/{pid}").json()["id"] == pid
        mismatch = http.put(f"/fhir/Patient/{pid}", json={**patient(), "id": "other"})
        assert mismatch.status_code == 400
        assert mismatch.json()["issue"][0]["expression"] == ["Patient.id"]


def test_conditional_create_with_if_none_exist_returns_the_same_resource(server):
    person = patient()
    criteria = f"identifier={person['identifier'][0]['system']}|{person['identifier'][0]['value']}"
    with server.client("ehr", "S01") as http:
        first = _create(http, person, **{"If-None-Exist": criteria})
        second = _create(http, person, **{"If-None-Exist": criteria})
        assert first.status_code == 201 and second.status_code == 200
        assert first.json()["id"] == second.json()["id"]
        found = http.get("/fhir/Patient", params={"identifier": criteria.split("=", 1)[1]}).json()
        assert found["total"] == 1


def test_conditional_update_by_identifier_creates_then_updates(server):
    person = patient()
    identifier = person["identifier"][0]
    url = f"/fhir/Patient?identifier={identifier['system']}|{identifier['value']}"
    with server.client("ehr", "S01") as http:
        first = http.put(url, json=person)
        second = http.put(url, json={**person, "gender": "male"})
        assert (first.status_code, second.status_code) == (201, 200)
        assert first.json()["id"] == second.json()["id"] and second.headers["etag"] == 'W/"2"'


def test_another_sites_data_does_not_exist_for_an_ehr_client(server):
    with server.client("ehr", "S01") as s01:
        pid = _create(s01, patient()).json()["id"]
        oid = _create(s01, lab(f"Patient/{pid}", "718-7", 12.1, "g/dL")).json()["id"]
    with server.client("ehr", "S02") as s02:
        assert s02.get(f"/fhir/Patient/{pid}").status_code == 404
        assert s02.get(f"/fhir/Observation/{oid}").status_code == 404
        assert s02.get(f"/fhir/Observation/{oid}/_history").status_code == 404
        assert s02.get("/fhir/Observation", params={"subject": f"Patient/{pid}"}).json()["total"] == 0
        assert s02.get("/fhir/Patient", params={"_id": pid}).json()["total"] == 0
        refused = s02.post("/fhir/Observation", json=lab(f"Patient/{pid}", "718-7", 12.1, "g/dL"))
        assert refused.status_code == 422
        assert refused.json()["issue"][0]["expression"] == ["Observation.subject.reference"]
        assert s02.put(f"/fhir/Patient/{pid}", json={**patient(), "id": pid}).status_code in (403, 404)
        assert s02.delete(f"/fhir/Patient/{pid}").status_code == 204  # v2: as for an unknown id (R4), nothing written
    with server.client("ehr", "S01") as s01:
        assert s01.get(f"/fhir/Patient/{pid}").json()["meta"]["versionId"] == "1"


def test_patient_of_a_multi_site_token_is_refused_with_a_reason(server):
    with server.client("ehr", "S01", "S02") as http:
        response = http.post("/fhir/Patient", json=patient())
    assert response.status_code == 422
    assert "exactly one site" in response.json()["issue"][0]["diagnostics"]


def test_roles_without_fhir_rights_are_refused(server):
    with server.client("sponsor") as http:
        assert http.get("/fhir/Patient").status_code == 403
    with server.client("monitor", "S01") as http:
        assert http.post("/fhir/Patient", json=patient()).status_code == 403
    with server.client() as http:
        response = http.get("/fhir/Patient")
    assert response.status_code == 401 and response.json()["resourceType"] == "OperationOutcome"


def test_content_types_and_size_limits(server):
    with server.client("ehr", "S01") as http:
        xml = http.post("/fhir/Patient", content=b"<Patient/>", headers={"Content-Type": "application/fhir+xml"})
        assert xml.status_code == 415 and xml.json()["issue"][0]["code"] == "not-supported"
        plain = http.post("/fhir/Patient", json=patient(), headers={"Content-Type": "application/json"})
        assert plain.status_code == 201
        broken = http.post("/fhir/Patient", content=b"{not json", headers=FHIR_JSON)
        assert broken.status_code == 400 and broken.json()["resourceType"] == "OperationOutcome"
        limit = server.settings.max_body_bytes
        huge = http.post("/fhir", content=b" " * (limit + 1), headers=FHIR_JSON)
        assert huge.status_code == 413 and huge.json()["resourceType"] == "OperationOutcome"
        entries = [{"request": {"method": "GET", "url": "Patient"}}] * (server.settings.max_bundle_entries + 1)
        many = http.post("/fhir", json={"resourceType": "Bundle", "type": "batch", "entry": entries})
        assert many.status_code == 413
        assert many.json()["issue"][0]["code"] == "too-costly"


def test_research_study_is_generated_from_the_study_definition(server):
    with server.client("ehr", "S01") as http:
        study = http.get("/fhir/ResearchStudy/NCT04163237")
        assert http.get("/fhir/ResearchStudy/NCT0000").status_code == 404
    assert study.status_code == 200
    body = study.json()
    get_fhir_model_class("ResearchStudy").model_validate(body)
    assert body["identifier"] == [{"system": "https://clinicaltrials.gov", "value": "NCT04163237"}]
    assert {arm["name"] for arm in body["arm"]} == {"PD1_SORA", "SORA"}


def test_research_subject_enrols_a_patient_as_candidate(server):
    with server.client("ehr", "S01") as http:
        pid = _create(http, patient()).json()["id"]
        subject = {
            "resourceType": "ResearchSubject",
            "study": {"reference": "ResearchStudy/NCT04163237"},
            "individual": {"reference": f"Patient/{pid}"},
        }
        created = _create(http, subject).json()
        assert created["status"] == "candidate"
        found = http.get(
            "/fhir/ResearchSubject", params={"study": "ResearchStudy/NCT04163237", "individual": f"Patient/{pid}"}
        ).json()
        assert [e["resource"]["id"] for e in found["entry"]] == [created["id"]]
        wrong = http.post("/fhir/ResearchSubject", json={**subject, "study": {"reference": "ResearchStudy/OTHER"}})
        assert wrong.status_code == 422
        assert wrong.json()["issue"][0]["expression"] == ["ResearchSubject.study.reference"]


def test_unknown_types_and_bad_resources_are_refused_with_outcomes(server):
    with server.client("ehr", "S01") as http:
        assert http.get("/fhir/Claim").status_code == 404
        claim = http.post("/fhir/Claim", json={"resourceType": "Claim"})
        assert claim.status_code == 404 and claim.json()["issue"][0]["code"] == "not-supported"
        assert claim.json()["issue"][0]["expression"] == ["Claim"]
        assert http.post("/fhir/ResearchStudy", json={"resourceType": "ResearchStudy"}).status_code == 405
        bad = lab("Patient/x", "718-7", "twelve", "g/dL")
        bad["flavour"] = "salty"
        response = http.post("/fhir/Observation", json=bad)
    assert response.status_code == 400
    expressions = [i["expression"][0] for i in response.json()["issue"]]
    assert "Observation.valueQuantity.value" in expressions and "Observation.flavour" in expressions
    assert MRN  # builders imported for the shared systems


def test_a_patient_with_the_sites_mrn_is_that_sites_patient(server):
    person = patient()
    with server.client("ehr", "S01") as http:
        first = http.post("/fhir/Patient", json=person)
        again = http.post("/fhir/Patient", json={**person, "gender": "male"})
        assert (first.status_code, again.status_code) == (201, 200)
        assert first.json()["id"] == again.json()["id"]
        other_system = {**person, "identifier": [{"system": "urn:example:other", "value": "1"}]}
        assert http.post("/fhir/Patient", json=other_system).json()["id"] != first.json()["id"]
    with server.client("ehr", "S02") as http:
        s02 = {**person, "identifier": [{"system": MRN["S02"], "value": person["identifier"][0]["value"]}]}
        assert http.post("/fhir/Patient", json=s02).json()["id"] != first.json()["id"]


def test_a_create_with_a_conditional_reference_answers_the_reference_it_stored(server):
    value = mrn()
    with server.client("ehr", "S01") as http:
        pid = _create(http, patient(value)).json()["id"]
        conditional = f"Patient?identifier={MRN['S01']}|{value}"
        for method, url in [("POST", "/fhir/Observation"), ("PUT", "/fhir/Observation/lab-by-identifier-" + value)]:
            response = http.request(method, url, json=lab(conditional, "718-7", 12.5, "g/dL"), headers=FHIR_JSON)
            assert response.status_code == 201, response.text
            stored = http.get(f"/fhir/Observation/{response.json()['id']}").json()
            assert stored["subject"] == {"reference": f"Patient/{pid}"}
            assert response.json() == stored, method
