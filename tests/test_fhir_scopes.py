"""SMART system scopes on the FHIR door: they narrow what the role allows, entry by entry, and never widen it."""

import time
import uuid

import httpx
import pytest

from ecrf.auth import scopes
from tests.fhir_builders import FHIR_JSON, bundle, lab, outcome_expressions, patient, post
from tests.conftest import TEST_SSL_CONTEXT

HEMOGLOBIN = "718-7"


def scoped(server, role: str, *sites: str, scope: list[str], sub: str | None = None) -> httpx.Client:
    token = server.token(role, *sites, sub=sub, scopes=scope)
    return httpx.Client(
        base_url=server.base_url,
        headers={"Authorization": f"Bearer {token}", **FHIR_JSON},
        timeout=60,
        verify=TEST_SSL_CONTEXT,
    )


def _patient(server, site: str = "S01") -> str:
    with server.client("ehr", site) as http:
        response = http.post("/fhir/Patient", json=patient(site=site), headers=FHIR_JSON)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def _observation(server, patient_id: str, site: str = "S01") -> str:
    with server.client("ehr", site) as http:
        response = http.post(
            "/fhir/Observation", json=lab(f"Patient/{patient_id}", HEMOGLOBIN, 13.1, "g/dL"), headers=FHIR_JSON
        )
    assert response.status_code == 201, response.text
    return response.json()["id"]


def _condition(patient_id: str) -> dict:
    return {
        "resourceType": "Condition",
        "subject": {"reference": f"Patient/{patient_id}"},
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "25370001"}]},
    }


def _count(server, resource_type: str, **params) -> int:
    with server.client("ehr", "S01") as http:
        response = http.get(f"/fhir/{resource_type}", params={**params, "_count": 0})
    assert response.status_code == 200, response.text
    return response.json()["total"]


def _refused(response: httpx.Response) -> list[str]:
    assert response.status_code == 403, response.text
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert all(issue["code"] == "forbidden" for issue in outcome["issue"])
    return [issue["diagnostics"] for issue in outcome["issue"]]


@pytest.mark.parametrize(
    ("scope", "resource_type", "permissions"),
    [
        ("system/Observation.c", "Observation", "c"),
        ("system/*.cruds", "Condition", "cruds"),
        ("system/Observation.rs", "Observation", "rs"),
        ("system/*.read", "Patient", "rs"),
        ("system/*.write", "Patient", "cud"),
        ("system/Patient.*", "Patient", "cruds"),
    ],
)
def test_a_scope_grants_its_permissions_on_its_type(scope, resource_type, permissions):
    assert scopes.granted([scope], resource_type) == permissions
    assert scopes.granted([scope], "Specimen") == (
        "" if scope.startswith(("system/Observation", "system/Patient")) else permissions
    )


@pytest.mark.parametrize(
    "scope",
    [
        "system/Observation.xyz",
        "system/Observation.sr",
        "system/Observation.rrs",
        "system/Observation.",
        "system/Observation.rs?category=laboratory",
        "patient/*.cruds",
        "user/*.cruds",
        "patient/Observation.read",
        "System/*.cruds",
        "system/observation.rs",
        "system/*.cruds extra",
        "system/Obs-ervation.rs",
        "system/*.writes",
    ],
)
def test_a_garbled_or_foreign_context_scope_grants_nothing_and_still_restricts(scope):
    assert scopes.restricts([scope])
    assert scopes.granted([scope], "Observation") == ""
    assert scopes.missing([scope], "Observation", "r") == "r"


def test_other_scopes_leave_the_role_alone():
    assert not scopes.restricts(["openid", "fhirUser", "offline_access", "launch/patient"])
    assert scopes.missing(["openid"], "Observation", "cruds") == ""
    assert scopes.missing(["openid", "system/Observation.rs"], "Observation", "cr") == "c"


def test_a_create_only_client_creates_observations_but_cannot_read_or_search_them(server):
    patient_id = _patient(server)
    with scoped(server, "ehr", "S01", scope=["system/Observation.c"]) as http:
        created = http.post("/fhir/Observation", json=lab(f"Patient/{patient_id}", HEMOGLOBIN, 12.9, "g/dL"))
        assert created.status_code == 201, created.text
        observation_id = created.json()["id"]
        pushed = http.post("/fhir", json=bundle([post(lab(f"Patient/{patient_id}", HEMOGLOBIN, 13.0, "g/dL"))]))
        assert pushed.status_code == 200, pushed.text
        assert [message for message in _refused(http.get(f"/fhir/Observation/{observation_id}"))] == [
            "read Observation needs the SMART scope system/Observation.r (or system/*.r), which this token's "
            "scopes do not grant"
        ]
        assert "system/Observation.r" in _refused(http.get(f"/fhir/Observation/{observation_id}/_history"))[0]
        assert "system/Observation.r" in _refused(http.get(f"/fhir/Observation/{observation_id}/_history/1"))[0]
        assert "system/Observation.s" in _refused(http.get("/fhir/Observation", params={"subject": patient_id}))[0]
        assert "system/Patient.r" in _refused(http.get(f"/fhir/Patient/{patient_id}"))[0]
        assert (
            "system/Observation.u"
            in _refused(http.put(f"/fhir/Observation/{observation_id}", json={**created.json(), "status": "amended"}))[
                0
            ]
        )
        assert "system/Observation.d" in _refused(http.delete(f"/fhir/Observation/{observation_id}"))[0]
        # A conditional create searches first, so it needs s as well.
        conditional = http.post(
            "/fhir/Observation",
            json=lab(f"Patient/{patient_id}", HEMOGLOBIN, 13.3, "g/dL"),
            headers={"If-None-Exist": f"subject=Patient/{patient_id}"},
        )
        assert "system/Observation.s" in _refused(conditional)[0]
        assert "system/ResearchStudy.r" in _refused(http.get("/fhir/ResearchStudy/NCT04163237"))[0]
    assert _count(server, "Observation", subject=patient_id) == 2


def test_v1_write_maps_to_create_update_delete(server):
    patient_id = _patient(server)
    with scoped(server, "ehr", "S01", scope=["system/*.write"]) as http:
        created = http.post("/fhir/Observation", json=lab(f"Patient/{patient_id}", HEMOGLOBIN, 12.0, "g/dL"))
        assert created.status_code == 201, created.text
        observation = created.json()
        updated = http.put(f"/fhir/Observation/{observation['id']}", json={**observation, "status": "amended"})
        assert updated.status_code == 200, updated.text
        assert "system/Observation.r" in _refused(http.get(f"/fhir/Observation/{observation['id']}"))[0]
        assert "system/Observation.s" in _refused(http.get("/fhir/Observation", params={"subject": patient_id}))[0]
        assert http.delete(f"/fhir/Observation/{observation['id']}").status_code == 204
        # A Patient without the site's MRN is a plain create; with it, the push looks the MRN up first (s).
        assert http.post("/fhir/Patient", json={"resourceType": "Patient", "gender": "male"}).status_code == 201
        assert "system/Patient.s" in _refused(http.post("/fhir/Patient", json=patient()))[0]
    with scoped(server, "ehr", "S01", scope=["system/Observation.read"]) as reader:
        assert reader.get("/fhir/Observation", params={"subject": patient_id}).status_code == 200
        assert reader.get(f"/fhir/Observation/{observation['id']}").status_code == 410  # read allowed; deleted
        assert (
            "system/Observation.c"
            in _refused(reader.post("/fhir/Observation", json=lab(f"Patient/{patient_id}", HEMOGLOBIN, 12.0, "g/dL")))[
                0
            ]
        )


def test_a_transaction_with_an_entry_outside_the_scopes_is_refused_whole(server):
    patient_id = _patient(server)
    code = uuid.uuid4().hex[:8]  # an Observation code of its own, to count what was stored
    body = bundle(
        [
            post(lab(f"Patient/{patient_id}", code, 1, "g/dL", system="urn:test")),
            post(_condition(patient_id)),
            {"request": {"method": "GET", "url": f"Observation?subject=Patient/{patient_id}"}},
        ]
    )
    with scoped(server, "ehr", "S01", scope=["system/Observation.c"]) as http:
        response = http.post("/fhir", json=body)
        messages = _refused(response)
    assert outcome_expressions(response.json()) == ["Bundle.entry[1].request", "Bundle.entry[2].request"]
    assert messages[0].startswith("Bundle.entry[1] (POST Condition) needs the SMART scope system/Condition.c")
    assert "Bundle.entry[2] (GET Observation) needs the SMART scope system/Observation.s" in messages[1]
    assert _count(server, "Observation", code=f"urn:test|{code}") == 0
    assert _count(server, "Condition", subject=patient_id) == 0
    with scoped(server, "ehr", "S01", scope=["system/Observation.cs", "system/Condition.c"]) as http:
        assert http.post("/fhir", json=body).status_code == 200
    assert _count(server, "Observation", code=f"urn:test|{code}") == 1


def test_a_batch_fails_only_the_entry_outside_the_scopes(server):
    patient_id = _patient(server)
    observation_id = _observation(server, patient_id)
    body = bundle(
        [
            post(lab(f"Patient/{patient_id}", HEMOGLOBIN, 14.0, "g/dL")),
            post(_condition(patient_id)),
            {"request": {"method": "GET", "url": f"Observation/{observation_id}"}},
        ],
        kind="batch",
    )
    with scoped(server, "ehr", "S01", scope=["system/Observation.c"]) as http:
        response = http.post("/fhir", json=body)
    assert response.status_code == 200, response.text
    entries = response.json()["entry"]
    assert [entry["response"]["status"].split()[0] for entry in entries] == ["201", "403", "403"]
    assert "system/Condition.c" in entries[1]["response"]["outcome"]["issue"][0]["diagnostics"]
    assert outcome_expressions(entries[2]["response"]["outcome"]) == ["Bundle.entry[2].request"]
    assert "resource" not in entries[2]
    assert _count(server, "Observation", subject=patient_id) == 2
    assert _count(server, "Condition", subject=patient_id) == 0


def test_a_conditional_reference_searches_its_type(server):
    identifier = patient()["identifier"][0]
    with server.client("ehr", "S01") as http:
        assert http.post("/fhir/Patient", json=patient(identifier["value"]), headers=FHIR_JSON).status_code == 201
    reference = f"Patient?identifier={identifier['system']}|{identifier['value']}"
    with scoped(server, "ehr", "S01", scope=["system/Observation.c"]) as http:
        refused = http.post("/fhir", json=bundle([post(lab(reference, HEMOGLOBIN, 13.0, "g/dL"))]))
        assert (
            "searching Patient for a conditional reference, needs the SMART scope system/Patient.s"
            in _refused(refused)[0]
        )
    with scoped(server, "ehr", "S01", scope=["system/Observation.c", "system/Patient.s"]) as http:
        assert http.post("/fhir", json=bundle([post(lab(reference, HEMOGLOBIN, 13.0, "g/dL"))])).status_code == 200


def test_scopes_never_widen_a_role(server):
    patient_id = _patient(server)
    observation_id = _observation(server, patient_id)
    new_lab = lab(f"Patient/{patient_id}", HEMOGLOBIN, 11.0, "g/dL")
    with scoped(server, "sponsor", scope=["system/*.cruds"]) as sponsor:
        assert sponsor.get(f"/fhir/Patient/{patient_id}").status_code == 403
        assert sponsor.get("/fhir/Observation", params={"subject": patient_id}).status_code == 403
        assert sponsor.post("/fhir/Observation", json=new_lab).status_code == 403
        assert sponsor.post("/fhir", json=bundle([post(new_lab)])).status_code == 403
    with scoped(server, "monitor", "S01", scope=["system/*.cruds"]) as monitor:
        assert monitor.get(f"/fhir/Observation/{observation_id}").status_code == 200  # the role reads
        assert monitor.post("/fhir/Observation", json=new_lab).status_code == 403  # and never writes
        assert monitor.delete(f"/fhir/Observation/{observation_id}").status_code == 403
    with scoped(server, "data_manager", scope=["system/*.*"]) as manager:
        assert (
            manager.put(f"/fhir/Observation/{observation_id}", json={**new_lab, "id": observation_id}).status_code
            == 403
        )
    with scoped(server, "ehr", "S02", scope=["system/*.cruds"]) as other_site:
        assert other_site.get(f"/fhir/Observation/{observation_id}").status_code == 404  # sites still apply
    with server.client("ehr", "S01") as http:
        assert http.get(f"/fhir/Observation/{observation_id}").json()["meta"]["versionId"] == "1"


@pytest.mark.parametrize(
    "scope",
    [
        ["system/Observation.xyz"],
        ["system/*.sr"],
        ["patient/*.cruds"],
        ["user/*.cruds"],
        ["system/*.cruds?category=laboratory"],
        ["System/*.cruds"],
    ],
)
def test_a_garbled_scope_grants_nothing(server, scope):
    patient_id = _patient(server)
    observation_id = _observation(server, patient_id)
    with scoped(server, "ehr", "S01", scope=scope) as http:
        assert http.get(f"/fhir/Observation/{observation_id}").status_code == 403
        assert http.get("/fhir/Observation", params={"subject": patient_id}).status_code == 403
        assert (
            http.post("/fhir/Observation", json=lab(f"Patient/{patient_id}", HEMOGLOBIN, 13, "g/dL")).status_code == 403
        )
        response = http.post(
            "/fhir", json=bundle([post(lab(f"Patient/{patient_id}", HEMOGLOBIN, 13, "g/dL"))], kind="batch")
        )
        assert response.json()["entry"][0]["response"]["status"].startswith("403")
    assert _count(server, "Observation", subject=patient_id) == 1


def test_a_token_without_smart_scopes_is_decided_by_its_role(server):
    patient_id = _patient(server)
    with scoped(server, "ehr", "S01", scope=["openid", "fhirUser"]) as http:
        created = http.post("/fhir/Observation", json=lab(f"Patient/{patient_id}", HEMOGLOBIN, 13, "g/dL"))
        assert created.status_code == 201
        assert http.get(f"/fhir/Observation/{created.json()['id']}").status_code == 200


def test_the_capability_statement_announces_smart_scopes(server):
    with server.client() as http:
        security = http.get("/fhir/metadata").json()["rest"][0]["security"]
    codes = {coding["code"] for service in security["service"] for coding in service["coding"]}
    assert codes == {"OAuth", "SMART-on-FHIR"}
    assert "system/Observation.c" in security["description"] and "never widen" in security["description"]


def test_an_export_covers_only_the_types_the_scopes_let_the_client_read(server):
    _observation(server, _patient(server))
    export = {"Prefer": "respond-async"}
    with scoped(server, "data_manager", scope=["system/Observation.rs"]) as http:
        refused = http.get(
            "/fhir/$export", params={"_type": "Observation,Patient", "deidentify": "false"}, headers=export
        )
        assert refused.status_code == 403 and "Patient" in refused.text and "Observation," not in refused.text
        assert refused.json()["resourceType"] == "OperationOutcome"
        accepted = http.get("/fhir/$export", params={"deidentify": "false"}, headers=export)
        assert accepted.status_code == 202, accepted.text
        status_url = accepted.headers["content-location"]
        for _ in range(300):
            status = http.get(status_url)
            if status.status_code != 202:
                break
            time.sleep(0.2)
        assert status.status_code == 200, status.text
        assert {output["type"] for output in status.json()["output"]} == {"Observation"}
    with scoped(server, "data_manager", scope=["system/Condition.c"]) as http:
        assert http.get("/fhir/$export", params={"deidentify": "false"}, headers=export).status_code == 403
    with scoped(server, "data_manager", scope=["openid"]) as http:  # no SMART scopes: the role decides
        assert http.get("/fhir/$export", params={"_type": "Patient"}, headers=export).status_code == 202


@pytest.mark.parametrize(
    "scope, status",
    [(["system/Observation.rs"], 403), (["system/Questionnaire.r"], 200), (["system/*.rs"], 200), (["openid"], 200)],
)
def test_a_questionnaire_is_read_under_the_scopes_too(server, scope, status):
    with scoped(server, "investigator", "S01", scope=scope) as http:
        response = http.get("/fhir/Questionnaire/labs")
    assert response.status_code == status, response.text
    if status == 403:
        assert "system/Questionnaire.r" in response.json()["issue"][0]["diagnostics"]
