"""Transaction and batch Bundles over HTTP: atomicity, idempotent re-sends, urn:uuid, outcomes, order."""

import threading
import uuid

import pytest
from fhir.resources.R4B import get_fhir_model_class

from tests.conftest import running_server
from tests.fhir_builders import FHIR_JSON, MRN, bundle, lab, outcome_expressions, patient, patient_with_labs, post, urn


@pytest.fixture(scope="module", params=["parsed whole", "streamed"])
def server(request, server):
    """Every test runs against Bundles parsed whole and against Bundles read entry by entry, as large ones are
    (ECRF_STREAM_BUNDLE_BYTES=0 streams them all)."""
    if request.param == "parsed whole":
        yield server
        return
    with running_server(server.settings.model_copy(update={"stream_bundle_bytes": 0})) as streaming:
        yield streaming


def _send(http, body):
    return http.post("/fhir", json=body, headers=FHIR_JSON)


def _ids(response_bundle, resource_type):
    return [
        e["response"]["location"].split("/")[1]
        for e in response_bundle["entry"]
        if e["response"].get("location", "").startswith(f"{resource_type}/")
    ]


def _total(http, resource_type, **params):
    response = http.get(f"/fhir/{resource_type}", params={**params, "_count": 0})
    assert response.status_code == 200, response.text
    return response.json()["total"]


def test_a_transaction_with_one_bad_entry_among_500_stores_nothing(server):
    body = patient_with_labs(500)
    body["entry"][500]["resource"]["valueQuantity"]["value"] = "12,5"
    identifier = body["entry"][0]["resource"]["identifier"][0]
    with server.client("ehr", "S01") as http:
        before = _total(http, "Observation", code="http://loinc.org|718-7")
        response = _send(http, body)
        assert response.status_code == 400
        outcome = response.json()
        assert outcome["resourceType"] == "OperationOutcome"
        assert outcome_expressions(outcome) == ["Bundle.entry[500].resource.valueQuantity.value"]
        assert _total(http, "Observation", code="http://loinc.org|718-7") == before
        assert _total(http, "Patient", identifier=f"{identifier['system']}|{identifier['value']}") == 0
        # The same Bundle, repaired, is stored whole.
        body["entry"][500]["resource"]["valueQuantity"]["value"] = 12.5
        stored = _send(http, body)
        assert stored.status_code == 200, stored.text
        assert _total(http, "Observation", code="http://loinc.org|718-7") == before + 500


def test_a_business_rule_failure_late_in_a_transaction_rolls_everything_back(server):
    body = patient_with_labs(20)
    body["entry"].append(post(lab("Patient/does-not-exist", "718-7", 12.0, "g/dL")))
    identifier = body["entry"][0]["resource"]["identifier"][0]
    with server.client("ehr", "S01") as http:
        response = _send(http, body)
        assert response.status_code == 422
        assert outcome_expressions(response.json()) == ["Bundle.entry[21].resource.subject.reference"]
        assert _total(http, "Patient", identifier=f"{identifier['system']}|{identifier['value']}") == 0


def test_transaction_response_has_location_etag_and_status_per_entry(server):
    body = patient_with_labs(3)
    with server.client("ehr", "S01") as http:
        response = _send(http, body)
    assert response.status_code == 200
    reply = response.json()
    get_fhir_model_class("Bundle").model_validate(reply)
    assert reply["type"] == "transaction-response" and len(reply["entry"]) == 4
    for entry in reply["entry"]:
        assert entry["response"]["status"] == "201 Created"
        assert entry["response"]["etag"] == 'W/"1"'
        assert entry["response"]["location"].endswith("/_history/1")
        assert entry["response"]["lastModified"]
    assert reply["entry"][0]["response"]["location"].startswith("Patient/")
    assert all(e["response"]["location"].startswith("Observation/") for e in reply["entry"][1:])


def test_urn_uuid_references_are_resolved_everywhere_in_the_resource(server):
    patient_url, observation_url = urn(), urn()
    hemoglobin = lab(patient_url, "718-7", 12.0, "g/dL")
    derived = lab(patient_url, "718-7", 120, "g/L")
    derived["derivedFrom"] = [{"reference": observation_url}]
    derived["note"] = [{"authorReference": {"reference": patient_url}, "text": "nested reference"}]
    derived["referenceRange"] = [
        {"high": {"value": 175, "unit": "g/L", "system": "http://unitsofmeasure.org", "code": "g/L"}}
    ]
    body = bundle([post(derived), post(hemoglobin, observation_url), post(patient(), patient_url)])
    with server.client("ehr", "S01") as http:
        response = _send(http, body)
        assert response.status_code == 200, response.text
        reply = response.json()
        [patient_id] = _ids(reply, "Patient")
        derived_id, hemoglobin_id = _ids(reply, "Observation")
        stored = http.get(f"/fhir/Observation/{derived_id}").json()
    assert stored["subject"]["reference"] == f"Patient/{patient_id}"
    assert stored["derivedFrom"][0]["reference"] == f"Observation/{hemoglobin_id}"
    assert stored["note"][0]["authorReference"]["reference"] == f"Patient/{patient_id}"
    assert "urn:uuid" not in str(stored)


def test_a_reference_by_this_server_s_own_url_is_stored_relative_and_linked(server):
    with server.client("ehr", "S01") as http:
        created = http.post("/fhir/Patient", json=patient(), headers=FHIR_JSON)
        assert created.status_code == 201, created.text
        patient_id = created.json()["id"]
        absolute = f"{server.base_url}/fhir/Patient/{patient_id}"
        body = bundle(
            [post(lab(absolute, "718-7", 12.4, "g/dL")), post(lab(f"{absolute}/_history/1", "718-7", 12.6, "g/dL"))]
        )
        response = _send(http, body)
        assert response.status_code == 200, response.text
        found = http.get("/fhir/Observation", params={"subject": f"Patient/{patient_id}"}).json()
    assert found["total"] == 2
    assert sorted(e["resource"]["subject"]["reference"] for e in found["entry"]) == [
        f"Patient/{patient_id}",
        f"Patient/{patient_id}/_history/1",
    ]


def test_unresolvable_urn_uuid_is_refused_naming_the_element(server):
    body = bundle([post(patient(), urn()), post(lab(urn(), "718-7", 12.0, "g/dL"))])
    with server.client("ehr", "S01") as http:
        response = _send(http, body)
    assert response.status_code == 422
    assert outcome_expressions(response.json()) == ["Bundle.entry[1].resource.subject.reference"]
    assert response.json()["issue"][0]["code"] == "not-found"


def test_resending_the_same_bundle_creates_no_duplicates(server):
    body = patient_with_labs(2)
    for entry in body["entry"][1:]:
        accession = uuid.uuid4().hex
        entry["request"]["ifNoneExist"] = f"identifier=urn:lab|{accession}"
        entry["resource"]["identifier"] = [{"system": "urn:lab", "value": accession}]
    identifier = body["entry"][0]["resource"]["identifier"][0]
    with server.client("ehr", "S01") as http:
        first = _send(http, body).json()
        second = _send(http, body).json()
        assert [e["response"]["status"] for e in first["entry"]] == ["201 Created"] * 3
        assert [e["response"]["status"] for e in second["entry"]] == ["200 OK"] * 3
        assert [e["response"]["location"] for e in first["entry"]] == [
            e["response"]["location"] for e in second["entry"]
        ]
        [patient_id] = _ids(first, "Patient")
        assert _total(http, "Patient", identifier=f"{identifier['system']}|{identifier['value']}") == 1
        assert _total(http, "Observation", subject=f"Patient/{patient_id}") == 2


def test_concurrent_identical_bundles_give_one_copy(server):
    body = patient_with_labs(30)
    identifier = body["entry"][0]["resource"]["identifier"][0]
    statuses, errors = [], []
    barrier = threading.Barrier(4)

    def push():
        try:
            with server.client("ehr", "S01") as http:
                barrier.wait()
                statuses.append(_send(http, body).status_code)
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=push) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and statuses == [200] * 4
    with server.client("ehr", "S01") as http:
        found = http.get("/fhir/Patient", params={"identifier": f"{identifier['system']}|{identifier['value']}"}).json()
        assert found["total"] == 1
        patient_id = found["entry"][0]["resource"]["id"]
        # Observations carry no ifNoneExist, so each accepted Bundle adds its own; the Patient stays one.
        assert _total(http, "Observation", subject=f"Patient/{patient_id}") == 30 * 4


def test_concurrent_conditional_creates_of_one_patient_give_one_resource(server):
    person = patient()
    identifier = person["identifier"][0]
    criteria = f"identifier={identifier['system']}|{identifier['value']}"
    ids, barrier = [], threading.Barrier(6)

    def push():
        with server.client("ehr", "S01") as http:
            barrier.wait()
            response = http.post("/fhir/Patient", json=person, headers={"If-None-Exist": criteria})
            ids.append((response.status_code, response.json().get("id")))

    threads = [threading.Thread(target=push) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({pid for _, pid in ids}) == 1, ids
    assert sorted(status for status, _ in ids) == [200] * 5 + [201]


def test_batch_entries_succeed_or_fail_on_their_own(server):
    with server.client("ehr", "S01") as http:
        patient_id = http.post("/fhir/Patient", json=patient()).json()["id"]
        good = lab(f"Patient/{patient_id}", "718-7", 12.0, "g/dL")
        bad_value = lab(f"Patient/{patient_id}", "718-7", "high", "g/dL")
        body = bundle(
            [
                post(good),
                post(bad_value),
                {
                    "resource": {"resourceType": "Claim", "status": "active"},
                    "request": {"method": "POST", "url": "Claim"},
                },
                post(lab("Patient/nobody", "718-7", 12.0, "g/dL")),
                {"request": {"method": "GET", "url": f"Patient/{patient_id}"}},
                post(good),
            ],
            kind="batch",
        )
        response = _send(http, body)
        assert response.status_code == 200, response.text
        reply = response.json()
        get_fhir_model_class("Bundle").model_validate(reply)
        statuses = [e["response"]["status"] for e in reply["entry"]]
        assert statuses[0] == "201 Created" and statuses[5] == "201 Created" and statuses[4] == "200 OK"
        assert [s.split()[0] for s in statuses[1:4]] == ["400", "400", "422"]
        assert outcome_expressions(reply["entry"][1]["response"]["outcome"]) == [
            "Bundle.entry[1].resource.valueQuantity.value"
        ]
        # a type the study does not keep is still validated as R4 (v2: it was "not-supported"): this Claim is not valid
        assert reply["entry"][2]["response"]["outcome"]["issue"][0]["code"] == "structure"
        assert "Bundle.entry[2].resource.patient" in outcome_expressions(reply["entry"][2]["response"]["outcome"])
        assert outcome_expressions(reply["entry"][3]["response"]["outcome"]) == [
            "Bundle.entry[3].resource.subject.reference"
        ]
        assert reply["entry"][4]["resource"]["id"] == patient_id
        assert _total(http, "Observation", subject=f"Patient/{patient_id}") == 2


def test_transaction_with_unsupported_types_is_refused_listing_them(server):
    """v2: any valid R4 type is taken (and held back unless kept); what is not an R4 resource type, or an
    invalid resource of a type not kept, still fails the transaction whole, located."""
    body = patient_with_labs(1)
    body["entry"].append(
        {
            "fullUrl": urn(),
            "resource": {"resourceType": "Spaceship", "status": "active"},
            "request": {"method": "POST", "url": "Spaceship"},
        }
    )
    body["entry"].append({"resource": {"resourceType": "Claim"}, "request": {"method": "POST", "url": "Claim"}})
    with server.client("ehr", "S01") as http:
        response = _send(http, body)
    assert response.status_code in (400, 422)
    issues = response.json()["issue"]
    assert "Spaceship (1)" in issues[0]["diagnostics"] and "nothing was stored" in issues[0]["diagnostics"]
    expressions = outcome_expressions(response.json())[1:]
    assert expressions[0] == "Bundle.entry[2].resource"
    assert "Bundle.entry[3].resource.patient" in expressions  # the Claim is validated: not valid


def test_transaction_runs_deletes_posts_puts_then_gets(server):
    with server.client("ehr", "S01") as http:
        old = http.post("/fhir/Patient", json=patient()).json()["id"]
        kept = http.post("/fhir/Patient", json=patient()).json()["id"]
        new_url = urn()
        body = bundle(
            [
                {"request": {"method": "GET", "url": f"Patient?_id={old},{kept}"}},
                {
                    "resource": {**patient(), "id": kept, "gender": "male"},
                    "request": {"method": "PUT", "url": f"Patient/{kept}"},
                },
                post(lab(new_url, "718-7", 11.0, "g/dL")),
                post(patient(), new_url),
                {"request": {"method": "DELETE", "url": f"Patient/{old}"}},
            ]
        )
        response = _send(http, body)
        assert response.status_code == 200, response.text
        reply = response.json()
        assert [e["response"]["status"] for e in reply["entry"]] == [
            "200 OK",
            "200 OK",
            "201 Created",
            "201 Created",
            "204 No Content",
        ]
        found = reply["entry"][0]["resource"]
        assert [e["resource"]["id"] for e in found["entry"]] == [kept]  # the GET ran after the DELETE
        assert found["entry"][0]["resource"]["gender"] == "male"  # ... and after the PUT
        assert http.get(f"/fhir/Patient/{old}").status_code == 410


def test_conditional_references_and_conditional_update_in_a_transaction(server):
    person = patient()
    identifier = person["identifier"][0]
    token = f"{identifier['system']}|{identifier['value']}"
    with server.client("ehr", "S01") as http:
        body = bundle([{"resource": person, "request": {"method": "PUT", "url": f"Patient?identifier={token}"}}])
        first = _send(http, body).json()
        again = _send(http, body).json()
        assert first["entry"][0]["response"]["status"] == "201 Created"
        assert again["entry"][0]["response"]["status"] == "200 OK"
        assert again["entry"][0]["response"]["etag"] == 'W/"2"'
        [patient_id] = _ids(first, "Patient")
        observation = lab(f"Patient?identifier={token}", "718-7", 12.0, "g/dL")
        reply = _send(http, bundle([post(observation)])).json()
        [observation_id] = _ids(reply, "Observation")
        assert http.get(f"/fhir/Observation/{observation_id}").json()["subject"]["reference"] == f"Patient/{patient_id}"


def test_bundle_shape_errors_are_outcomes(server):
    with server.client("ehr", "S01") as http:
        not_bundle = _send(http, patient())
        assert not_bundle.status_code == 400 and not_bundle.json()["issue"][0]["expression"] == ["Bundle"]
        collection = _send(http, {"resourceType": "Bundle", "type": "collection", "entry": []})
        assert collection.status_code == 422 and collection.json()["issue"][0]["expression"] == ["Bundle.type"]
        no_request = _send(http, {"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": patient()}]})
        assert no_request.status_code == 400
        assert outcome_expressions(no_request.json()) == ["Bundle.entry[0].request"]
        patch = _send(http, bundle([{"request": {"method": "PATCH", "url": "Patient/x"}}]))
        assert patch.status_code == 422 and outcome_expressions(patch.json()) == ["Bundle.entry[0].request.method"]
        unknown = _send(http, bundle([{**post(patient()), "colour": "red"}]))
        assert unknown.status_code == 400 and outcome_expressions(unknown.json()) == ["Bundle.entry[0].colour"]
        two_sites = server.client("ehr", "S01", "S02")
        with two_sites:
            refused = _send(two_sites, bundle([post(patient(site="S02"))]))
        assert refused.status_code == 422 and outcome_expressions(refused.json()) == ["Bundle.entry[0].resource"]
    assert MRN["S02"].endswith(".2")


def test_two_entries_creating_the_same_conditional_resource_are_refused(server):
    person = patient()
    identifier = person["identifier"][0]
    criteria = f"identifier={identifier['system']}|{identifier['value']}"
    body = bundle([post(person, urn(), if_none_exist=criteria), post(dict(person), urn(), if_none_exist=criteria)])
    with server.client("ehr", "S01") as http:
        response = _send(http, body)
        assert response.status_code == 400
        assert response.json()["issue"][0]["expression"] == ["Bundle.entry[1].request"]
        assert _total(http, "Patient", identifier=criteria.split("=", 1)[1]) == 0
