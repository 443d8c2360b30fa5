"""SMART's Python client `fhirclient` (strict R4 models) against the real server: metadata, CRUD, search with
paging, history (issue 12, item 6)."""

import pytest
from fhirclient import client
from fhirclient.models.bundle import Bundle
from fhirclient.models.capabilitystatement import CapabilityStatement
from fhirclient.models.fhirsearch import FHIRSearch
from fhirclient.models.observation import Observation
from fhirclient.models.patient import Patient
from requests import HTTPError

from tests.fhir_builders import MRN, lab, mrn


def _smart(server, role: str = "ehr", *sites: str) -> client.FHIRClient:
    smart = client.FHIRClient(settings={"app_id": "ecrf-tests", "api_base": f"{server.base_url}/fhir/"})
    smart.server.session.headers["Authorization"] = f"Bearer {server.token(role, *(sites or ('S01',)))}"
    return smart


def test_fhirclient_reads_the_capability_statement_with_strict_models(server):
    smart = _smart(server)
    statement = smart.server.capabilityStatement  # parsed strictly: an unknown element would raise here
    assert isinstance(statement, CapabilityStatement) and statement.fhirVersion == "4.0.1"
    kinds = {resource.type: resource for resource in statement.rest[0].resource}
    assert {"patch", "history-type"} <= {i.code for i in kinds["Observation"].interaction}
    assert "subject" in {param.name for param in kinds["Observation"].searchParam}
    # the CapabilityStatement's oauth-uris extension (SMART, issue 13): fhirclient finds the token endpoint and
    # is ready once it holds an access token, as after a SMART authorisation
    auth = smart.server.auth
    assert auth is not None and auth._token_uri == f"{server.base_url}/auth/token"
    assert not smart.ready
    auth.access_token = server.token("ehr", "S01")
    assert smart.ready


def test_fhirclient_crud_search_paging_and_history(server):
    smart = _smart(server)
    value = mrn()
    person = Patient(
        {"identifier": [{"system": MRN["S01"], "value": value}], "gender": "female", "birthDate": "1960-05-06"},
        strict=True,
    )
    created = person.create(smart.server)
    assert created["resourceType"] == "Patient" and created["meta"]["versionId"] == "1"
    pid = created["id"]
    read = Patient.read(pid, smart.server)
    assert read.identifier[0].value == value and read.birthDate.isostring == "1960-05-06"

    read.gender = "male"
    read.update()
    assert Patient.read(pid, smart.server).gender == "male"

    for day in range(1, 8):
        Observation(lab(f"Patient/{pid}", "718-7", 12 + day / 10, "g/dL", f"2026-02-{day:02d}"), strict=True).create(
            smart.server
        )
    search = Observation.where(struct={"subject": f"Patient/{pid}", "code": "http://loinc.org|718-7", "_count": "3"})
    pages = list(search.perform_iter(smart.server))  # follows the next links
    assert len(pages) == 3 and all(page.total == 7 for page in pages)
    found = [entry.resource for page in pages for entry in page.entry or []]
    assert len(found) == 7 and len({o.id for o in found}) == 7
    assert all(isinstance(o, Observation) for o in found)
    assert [
        p.id for p in Patient.where(struct={"identifier": f"{MRN['S01']}|{value}"}).perform_resources_iter(smart.server)
    ] == [pid]
    counted = Bundle(smart.server.request_json(f"Observation?subject=Patient/{pid}&_summary=count"), strict=True)
    assert counted.total == 7 and not counted.entry

    history = Bundle(smart.server.request_json(f"Patient/{pid}/_history"), strict=True)
    assert history.type == "history" and history.total == 2
    assert [entry.request.method for entry in history.entry] == ["PUT", "POST"]
    typed = Bundle(smart.server.request_json("Observation/_history?_count=2"), strict=True)
    assert (
        typed.type == "history" and len(typed.entry) == 2 and {link.relation for link in typed.link} >= {"self", "next"}
    )

    read.delete()
    with pytest.raises(HTTPError) as gone:
        Patient.read(pid, smart.server)
    assert gone.value.response.status_code == 410
    assert isinstance(FHIRSearch(Patient, {"_id": pid}).perform_resources_iter(smart.server), object)
    assert list(Patient.where(struct={"_id": pid}).perform_resources_iter(smart.server)) == []
