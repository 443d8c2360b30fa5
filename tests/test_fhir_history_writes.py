"""History and writes as R4 says (issue 12, item 4): paged history at instance, type and system level,
Prefer: return, idempotent DELETE, re-create 201, JSON Patch with If-Match, conditional patch and the PUT rules."""

import time
import uuid
from datetime import UTC, datetime
from urllib.parse import parse_qsl, urlsplit

from fhir.resources.R4B import get_fhir_model_class

from tests.fhir_builders import FHIR_JSON, MRN, lab, patient
from tests.test_fhir_integrity import _lifecycle, labs_form  # noqa: F401 - the fixture

PATCH = {"Content-Type": "application/json-patch+json"}


def _links(found: dict) -> dict[str, str]:
    return {link["relation"]: link["url"] for link in found["link"]}


def _created(http, resource: dict) -> dict:
    response = http.post(f"/fhir/{resource['resourceType']}", json=resource, headers=FHIR_JSON)
    assert response.status_code == 201, response.text
    return response.json()


def test_instance_history_is_paged_with_count_since_and_at(server):
    with server.client("ehr", "S01") as http:
        person = _created(http, patient())
        pid = person["id"]
        stamps = [person["meta"]["lastUpdated"]]
        for gender in ("male", "other", "unknown", "female"):
            time.sleep(0.01)
            updated = http.put(f"/fhir/Patient/{pid}", json={**person, "gender": gender}, headers=FHIR_JSON)
            assert updated.status_code == 200
            stamps.append(updated.json()["meta"]["lastUpdated"])
        page = http.get(f"/fhir/Patient/{pid}/_history", params={"_count": 2}).json()
        get_fhir_model_class("Bundle").model_validate(page)
        seen = []
        while True:
            assert page["total"] == 5 and len(page["entry"]) <= 2
            seen += [e["response"]["etag"] for e in page["entry"]]
            links = _links(page)
            if "next" not in links:
                break
            assert dict(parse_qsl(urlsplit(links["next"]).query))["_count"] == "2"
            page = http.get(links["next"]).json()
        assert seen == [f'W/"{n}"' for n in (5, 4, 3, 2, 1)]
        since = http.get(f"/fhir/Patient/{pid}/_history", params={"_since": stamps[3]}).json()
        assert [e["resource"]["meta"]["versionId"] for e in since["entry"]] == ["5", "4"]
        assert "_since" in _links(since)["self"]
        at = http.get(f"/fhir/Patient/{pid}/_history", params={"_at": stamps[2]}).json()
        assert [e["resource"]["meta"]["versionId"] for e in at["entry"]] == ["3"]
        assert http.get(f"/fhir/Patient/{pid}/_history", params={"_count": 0}).json()["entry"] == []
        assert http.get(f"/fhir/Patient/{pid}/_history", params={"_since": "yesterday"}).status_code == 400
        assert (
            http.get(
                f"/fhir/Patient/{pid}/_history", params={"colour": "red"}, headers={"Prefer": "handling=strict"}
            ).status_code
            == 400
        )


def test_type_and_system_history_are_site_scoped(server):
    marker = uuid.uuid4().hex
    before = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    with server.client("ehr", "S01") as s01:
        pid = _created(s01, patient())["id"]
        oid = _created(s01, {**lab(f"Patient/{pid}", "718-7", 12.5, "g/dL"), "id": marker})["id"]
    with server.client("ehr", "S02") as s02:
        other = _created(s02, patient(site="S02"))["id"]
    with server.client("ehr", "S01") as s01:
        typed = s01.get("/fhir/Patient/_history", params={"_since": before}).json()
        assert typed["type"] == "history"
        ids = {e["resource"]["id"] for e in typed["entry"]}
        assert pid in ids and other not in ids
        system = s01.get("/fhir/_history", params={"_since": before, "_count": 1}).json()
        assert system["total"] >= 2 and len(system["entry"]) == 1 and "next" in _links(system)
        everything, url = [], f"{server.base_url}/fhir/_history?_since={before}&_count=50"
        while url:
            page = s01.get(url).json()
            everything += [e["fullUrl"].split("/fhir/")[1] for e in page["entry"]]
            url = _links(page).get("next")
        assert f"Patient/{pid}" in everything and f"Observation/{oid}" in everything
        assert f"Patient/{other}" not in everything
        typed = s01.get("/fhir/_history", params={"_since": before, "_type": "Observation"}).json()
        assert {e["fullUrl"].split("/fhir/")[1].split("/")[0] for e in typed["entry"]} == {"Observation"}
        assert s01.get("/fhir/_history", params={"_type": "Claim"}).status_code == 400  # not a kept type
    with server.client("ehr", "S02") as s02:
        seen = {
            e["fullUrl"].split("/fhir/")[1]
            for e in s02.get("/fhir/_history", params={"_since": before}).json()["entry"]
        }
        assert f"Patient/{other}" in seen and f"Patient/{pid}" not in seen
    with server.client("sponsor") as sponsor:
        assert sponsor.get("/fhir/_history").status_code == 403


def test_prefer_return_on_create_update_and_patch(server):
    with server.client("ehr", "S01") as http:
        minimal = http.post("/fhir/Patient", json=patient(), headers={**FHIR_JSON, "Prefer": "return=minimal"})
        assert minimal.status_code == 201 and minimal.content == b""
        assert minimal.headers["etag"] == 'W/"1"' and "/fhir/Patient/" in minimal.headers["location"]
        pid = minimal.headers["location"].split("/fhir/Patient/")[1].split("/")[0]
        current = http.get(f"/fhir/Patient/{pid}").json()
        outcome = http.put(
            f"/fhir/Patient/{pid}",
            json={**current, "gender": "male"},
            headers={**FHIR_JSON, "Prefer": "return=OperationOutcome"},
        )
        assert outcome.status_code == 200 and outcome.json()["resourceType"] == "OperationOutcome"
        assert outcome.json()["issue"][0]["severity"] == "information" and outcome.headers["etag"] == 'W/"2"'
        full = http.put(
            f"/fhir/Patient/{pid}",
            json={**current, "gender": "other"},
            headers={**FHIR_JSON, "Prefer": "return=representation"},
        )
        assert full.json()["gender"] == "other"
        patched = http.patch(
            f"/fhir/Patient/{pid}",
            json=[{"op": "replace", "path": "/gender", "value": "female"}],
            headers={**PATCH, "Prefer": "return=minimal"},
        )
        assert patched.status_code == 200 and patched.content == b"" and patched.headers["etag"] == 'W/"4"'


def test_prefer_return_in_transaction_and_batch_responses(server):
    def push(kind: str, prefer: str | None) -> list[dict]:
        subject = f"urn:uuid:{uuid.uuid4()}"
        body = {
            "resourceType": "Bundle",
            "type": kind,
            "entry": [
                {"fullUrl": subject, "resource": patient(), "request": {"method": "POST", "url": "Patient"}},
                {"resource": lab(subject, "718-7", 13.1, "g/dL"), "request": {"method": "POST", "url": "Observation"}},
            ],
        }
        headers = {**FHIR_JSON, **({"Prefer": f"return={prefer}"} if prefer else {})}
        with server.client("ehr", "S01") as http:
            reply = http.post("/fhir", json=body, headers=headers)
        assert reply.status_code == 200, reply.text
        return reply.json()["entry"]

    for kind in ("transaction", "batch"):
        full = push(kind, "representation")
        assert [e["resource"]["resourceType"] for e in full] == ["Patient", "Observation"]
        assert full[1]["resource"]["subject"]["reference"] == full[0]["response"]["location"].split("/_history")[0]
        assert all(e["resource"]["meta"]["versionId"] == "1" for e in full)
        minimal = push(kind, "minimal")
        assert all("resource" not in e and e["response"]["status"].startswith("201") for e in minimal)
        outcome = push(kind, "OperationOutcome")
        assert all(
            "resource" not in e and e["response"]["outcome"]["issue"][0]["severity"] == "information" for e in outcome
        )
        assert all(
            e["response"]["location"]
            in e["response"]["outcome"]["issue"][0]["diagnostics"].replace(" version ", "/_history/")
            for e in outcome
        )
        plain = push(kind, None)  # no preference: as before, created entries answer their location only
        assert all("resource" not in e for e in plain)


def test_delete_of_an_unknown_id_is_204_and_recreating_a_deleted_id_is_201(server):
    with server.client("ehr", "S01") as http:
        never = f"never-{uuid.uuid4().hex[:12]}"
        assert http.delete(f"/fhir/Patient/{never}").status_code == 204
        assert http.get(f"/fhir/Patient/{never}").status_code == 404  # nothing was written
        assert http.get(f"/fhir/Patient/{never}/_history").status_code == 404
        person = _created(http, patient())
        assert http.delete(f"/fhir/Patient/{person['id']}").status_code == 204
        assert http.delete(f"/fhir/Patient/{person['id']}").status_code == 204  # a retry: no new version
        again = http.put(
            f"/fhir/Patient/{person['id']}", json={**person, "meta": None} | {"gender": "male"}, headers=FHIR_JSON
        )
        assert again.status_code == 201, again.text
        assert again.json()["meta"]["versionId"] == "3" and again.headers["location"]
        again_again = http.put(
            f"/fhir/Patient/{person['id']}", json={**again.json(), "gender": "other"}, headers=FHIR_JSON
        )
        assert again_again.status_code == 200


def test_json_patch_with_if_match_conditional_patch_and_errors(server):
    with server.client("ehr", "S01") as http:
        person = _created(http, patient())
        pid = person["id"]
        operations = [
            {"op": "test", "path": "/gender", "value": "female"},
            {"op": "replace", "path": "/gender", "value": "male"},
            {"op": "add", "path": "/name", "value": [{"family": "Okafor"}]},
        ]
        patched = http.patch(f"/fhir/Patient/{pid}", json=operations, headers={**PATCH, "If-Match": 'W/"1"'})
        assert patched.status_code == 200, patched.text
        assert patched.json()["gender"] == "male" and patched.json()["name"] == [{"family": "Okafor"}]
        assert patched.headers["etag"] == 'W/"2"'
        stale = http.patch(
            f"/fhir/Patient/{pid}",
            json=[{"op": "replace", "path": "/gender", "value": "other"}],
            headers={**PATCH, "If-Match": 'W/"1"'},
        )
        assert stale.status_code == 412
        failed_test = http.patch(f"/fhir/Patient/{pid}", json=operations, headers=PATCH)
        assert failed_test.status_code == 422 and failed_test.json()["resourceType"] == "OperationOutcome"
        assert (
            http.patch(
                f"/fhir/Patient/{pid}", json=[{"op": "replace", "path": "/id", "value": "x"}], headers=PATCH
            ).status_code
            == 422
        )
        assert http.patch(f"/fhir/Patient/{pid}", json={"op": "replace"}, headers=PATCH).status_code == 400
        assert http.patch(f"/fhir/Patient/{pid}", json=operations, headers=FHIR_JSON).status_code == 415
        invalid = http.patch(
            f"/fhir/Patient/{pid}", json=[{"op": "add", "path": "/colour", "value": "red"}], headers=PATCH
        )
        assert invalid.status_code == 400  # the patched resource is validated as a PUT is
        assert http.get(f"/fhir/Patient/{pid}").json()["meta"]["versionId"] == "2"

        identifier = person["identifier"][0]
        criteria = f"identifier={identifier['system']}|{identifier['value']}"
        conditional = http.patch(
            f"/fhir/Patient?{criteria}",
            json=[{"op": "replace", "path": "/birthDate", "value": "1960-01-01"}],
            headers=PATCH,
        )
        assert conditional.status_code == 200 and conditional.json()["id"] == pid
        assert conditional.json()["birthDate"] == "1960-01-01"
        assert (
            http.patch(
                f"/fhir/Patient?identifier={MRN['S01']}|nobody-{uuid.uuid4().hex}", json=[], headers=PATCH
            ).status_code
            == 404
        )
        assert http.patch(f"/fhir/Patient/never-{uuid.uuid4().hex[:8]}", json=[], headers=PATCH).status_code == 404
    with server.client("ehr", "S02") as other:  # another site's resource does not exist for it
        assert (
            other.patch(
                f"/fhir/Patient/{pid}", json=[{"op": "replace", "path": "/gender", "value": "other"}], headers=PATCH
            ).status_code
            == 404
        )
    with server.client("monitor", "S01") as monitor:  # a role that may not write
        assert monitor.patch(f"/fhir/Patient/{pid}", json=[], headers=PATCH).status_code == 403


def test_json_patch_of_a_locked_forms_resource_is_409(server, labs_form):  # noqa: F811
    subject, url, observation = labs_form
    _lifecycle(server, url, "locked")
    with server.client("coordinator", "S01") as http:
        refused = http.patch(
            f"/fhir/Observation/{observation['id']}",
            json=[{"op": "replace", "path": "/valueQuantity/value", "value": 99}],
            headers=PATCH,
        )
        assert refused.status_code == 409, refused.text
        assert "locked" in refused.json()["issue"][0]["diagnostics"]
        assert (
            http.get(f"/fhir/Observation/{observation['id']}").json()["meta"]["versionId"]
            == observation["meta"]["versionId"]
        )
