"""Third-party clients and data: fhirpy works against the door; every sample (generated Synthea-shaped and
HL7-shaped ones, and the shared ones when ../shared is there) is accepted or refused precisely (an
OperationOutcome naming where), never a server error."""

import json

import pytest
from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import MultipleResourcesFound, ResourceNotFound
from sqlmodel import Session

from ecrf.audit.service import verify
from tests.fhir_builders import FHIR_JSON, MRN, lab, mrn
from tests.samples import GENERATED_BUNDLES, SHARED_SAMPLES, needs_shared, upload_cases
from tests.synthea_shaped import counts


def _fhirpy(server, *sites, **headers) -> SyncFHIRClient:
    token = server.token("ehr", *(sites or ("S01",)))
    return SyncFHIRClient(f"{server.base_url}/fhir", authorization=f"Bearer {token}", extra_headers=headers or None)


def test_fhirpy_create_read_search_update_with_version_check(server):
    client = _fhirpy(server)
    value = mrn()
    person = client.resource(
        "Patient", identifier=[{"system": MRN["S01"], "value": value}], gender="female", birthDate="1958-02-01"
    )
    person.save()
    assert person.id and person["meta"]["versionId"] == "1"
    again = client.reference("Patient", person.id).to_resource()
    assert again["identifier"][0]["value"] == value

    found = client.resources("Patient").search(identifier=f"{MRN['S01']}|{value}").fetch_all()
    assert [p.id for p in found] == [person.id]
    assert client.resources("Patient").search(identifier=f"{MRN['S01']}|{value}").get().id == person.id

    observation = client.resource("Observation", **lab(f"Patient/{person.id}", "718-7", 11.9, "g/dL"))
    observation.save()
    assert (
        client.resources("Observation").search(subject=f"Patient/{person.id}", code="718-7").first().id
        == observation.id
    )

    person["gender"] = "male"
    person.save()
    assert person["meta"]["versionId"] == "2"
    stale = _fhirpy(server, **{"If-Match": 'W/"1"'})
    outdated = stale.resource("Patient", **{**person, "gender": "other"})
    with pytest.raises(MultipleResourcesFound):  # fhirpy's name for 412 Precondition Failed
        outdated.save()
    current = _fhirpy(server, **{"If-Match": 'W/"2"'}).resource("Patient", **{**person, "gender": "other"})
    current.save()
    assert current["meta"]["versionId"] == "3"

    person.delete()
    with pytest.raises(ResourceNotFound):
        client.reference("Patient", person.id).to_resource()


def test_fhirpy_conditional_create_and_transaction(server):
    client = _fhirpy(server)
    value = mrn()
    identifier = f"{MRN['S01']}|{value}"
    template = {"identifier": [{"system": MRN["S01"], "value": value}], "gender": "female"}
    first, created = (
        client.resources("Patient").search(identifier=identifier).get_or_create(client.resource("Patient", **template))
    )
    second, created_again = (
        client.resources("Patient").search(identifier=identifier).get_or_create(client.resource("Patient", **template))
    )
    assert (created, created_again) == (True, False) and first.id == second.id

    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:0d7b5b1e-3f0e-4f55-9d3e-2f8b9f6a0c11",
                "resource": lab(f"Patient/{first.id}", "777-3", 180, "10*3/uL"),
                "request": {"method": "POST", "url": "Observation"},
            },
            {"request": {"method": "GET", "url": f"Patient/{first.id}"}},
        ],
    }
    reply = client.execute("/", method="post", data=bundle)
    assert reply["type"] == "transaction-response"
    assert reply["entry"][0]["response"]["status"] == "201 Created"
    assert reply["entry"][1]["resource"]["id"] == first.id


@pytest.mark.parametrize("sample", upload_cases())
def test_every_sample_is_accepted_or_precisely_refused(server, sample):
    _, content = sample
    resource = json.loads(content)
    with server.client("ehr", "S01") as http:
        if resource["resourceType"] == "Bundle":
            response = http.post("/fhir", content=content, headers=FHIR_JSON)
        else:
            response = http.post(f"/fhir/{resource['resourceType']}", content=content, headers=FHIR_JSON)
    assert response.status_code < 500, response.text[:2000]
    body = response.json()
    if response.status_code >= 400:
        assert body["resourceType"] == "OperationOutcome"
        for issue in body["issue"]:
            assert issue["severity"] == "error" and issue["code"] and issue["diagnostics"]
        assert any(issue.get("expression") for issue in body["issue"]), body
        return
    if resource["resourceType"] == "Bundle":
        assert body["type"] in ("transaction-response", "batch-response")
        assert len(body["entry"]) == len(resource.get("entry", []))
        for entry in body["entry"]:
            status = int(entry["response"]["status"].split()[0])
            assert status < 500
            if status >= 400:
                outcome = entry["response"]["outcome"]
                assert outcome["issue"][0]["expression"][0].startswith("Bundle.entry[")
    else:
        assert body["resourceType"] == resource["resourceType"] and body["meta"]["versionId"] == "1"


def _generated_19_encounters() -> tuple[bytes, int, int]:
    bundle = GENERATED_BUNDLES["synthea-shaped-19-encounters"]
    return json.dumps(bundle).encode(), counts(bundle)["Claim"], counts(bundle)["ExplanationOfBenefit"]


def _shared_fa4fda35() -> tuple[bytes, int, int]:
    return (SHARED_SAMPLES / "synthea" / "fa4fda35-5bfc-e2e3-d317-3f912f954289.json").read_bytes(), 30, 30


@pytest.mark.parametrize(
    "source",
    [
        pytest.param(_generated_19_encounters, id="generated"),
        pytest.param(_shared_fa4fda35, id="shared-fa4fda35", marks=needs_shared),
    ],
)
def test_synthea_transactions_go_in_holding_back_the_types_not_kept(server, source):
    """v2 (issue 12): the whole transaction is taken; types the study does not keep are held back, each named."""
    content, claims, benefits = source()
    with server.client("ehr", "S01") as http:
        response = http.post("/fhir", content=content, headers=FHIR_JSON)
    assert response.status_code == 200, response.text[:500]
    held = [
        e["response"]["outcome"]["issue"][0]["diagnostics"]
        for e in response.json()["entry"]
        if "location" not in e["response"]
    ]
    assert claims and sum(text.startswith("Claim is not retained") for text in held) == claims
    assert sum(text.startswith("ExplanationOfBenefit is not retained") for text in held) == benefits


def test_the_audit_chain_stays_whole_after_bulk_ingest(server):
    with server.client("ehr", "S01") as http:
        person = http.post(
            "/fhir/Patient", json={"resourceType": "Patient", "identifier": [{"system": MRN["S01"], "value": mrn()}]}
        ).json()
        entries = [
            {
                "resource": lab(f"Patient/{person['id']}", "1920-8", 30 + i, "U/L"),
                "request": {"method": "POST", "url": "Observation"},
            }
            for i in range(50)
        ]
        reply = http.post("/fhir", json={"resourceType": "Bundle", "type": "transaction", "entry": entries}).json()
        location = reply["entry"][0]["response"]["location"]
        read = http.get("/fhir/" + location.rsplit("/_history", 1)[0])
    assert read.json()["meta"]["lastUpdated"] == reply["entry"][0]["response"]["lastModified"]
    with Session(server.runtime.engine) as session:
        assert list(verify(session)) == []


def test_fhirpy_count_fetch_all_over_pages_and_lenient_parameters(server):
    client = _fhirpy(server)
    value = mrn()
    person = client.resource("Patient", identifier=[{"system": MRN["S01"], "value": value}], gender="female")
    person.save()
    for day in range(1, 8):
        client.resource(
            "Observation", **lab(f"Patient/{person.id}", "718-7", 12 + day / 10, "g/dL", f"2026-04-{day:02d}")
        ).save()
    search = client.resources("Observation").search(subject=f"Patient/{person.id}")
    assert search.count() == 7  # _count=0 and fhirpy's _totalMethod=count (ignored, named in an outcome entry)
    every = search.limit(3).fetch_all()  # follows next links until there is none
    assert len(every) == 7 and len({o.id for o in every}) == 7
    assert all(o.resource_type == "Observation" for o in every)
    assert client.resources("Observation").search(subject=f"Patient/{person.id}", code="718-7").count() == 7


def test_fhirpy_include_and_revinclude(server):
    client = _fhirpy(server)
    person = client.resource("Patient", identifier=[{"system": MRN["S01"], "value": mrn()}], gender="female")
    person.save()
    for day in (1, 2):
        client.resource(
            "Observation", **lab(f"Patient/{person.id}", "718-7", 12 + day / 10, "g/dL", f"2026-05-{day:02d}")
        ).save()
    search = client.resources("Observation").search(subject=f"Patient/{person.id}").include("Observation", "subject")
    raw = search.fetch_raw()
    included = [e["resource"] for e in raw["entry"] if e["search"]["mode"] == "include"]
    assert [r["id"] for r in included] == [person.id] and included[0]["resourceType"] == "Patient"
    assert len(search.fetch()) == 2  # fhirpy keeps the matches
    assert search.count() == 2
    reverse = client.resources("Patient").search(_id=person.id).revinclude("Observation", "subject").fetch_raw()
    assert sorted(e["search"]["mode"] for e in reverse["entry"]) == ["include", "include", "match"]
