"""Patient/{id}/$everything over real HTTP: the Patient and its R4 Patient compartment (kept types), `_type`,
`_since`, `_count` paging with links, site and ehr scoping like every read, and the CapabilityStatement."""

import time
from datetime import UTC, datetime

from fhir.resources.R4B import get_fhir_model_class

from ehr_bundles import synthea_shaped
from fhir_builders import FHIR_JSON, lab, mrn, patient


def _everything(http, patient_id, **params):
    return http.get(f"/fhir/Patient/{patient_id}/$everything", params=params)


def _pushed(http, dates):
    reply = http.post("/fhir", json=synthea_shaped(mrn(), dates), headers=FHIR_JSON)
    assert reply.status_code == 200, reply.text[:1000]
    locations = [
        e["response"]["location"].split("/_history/")[0] for e in reply.json()["entry"] if "location" in e["response"]
    ]
    return locations[0].split("/")[1], set(locations)


def test_everything_returns_the_patient_and_its_compartment(server):
    with server.client("ehr", "S01", sub="everything-ehr") as http:
        patient_id, stored = _pushed(http, ["2026-01-05", "2026-02-09"])
        other_id, _ = _pushed(http, ["2026-01-06"])
        response = _everything(http, patient_id, _count="500")
        assert response.status_code == 200, response.text
        body = response.json()
        get_fhir_model_class("Bundle").model_validate(body)
        shown = [e["resource"]["resourceType"] + "/" + e["resource"]["id"] for e in body["entry"]]
        assert shown[0] == f"Patient/{patient_id}"
        # everything stored for the Patient, but the Medication (not in the Patient compartment)
        assert set(shown) == {ref for ref in stored if not ref.startswith("Medication/")}
        assert body["total"] == len(shown) and body["type"] == "searchset"
        assert not any(other_id in e["resource"].get("subject", {}).get("reference", "") for e in body["entry"])

        labs = _everything(http, patient_id, _type="Observation,Encounter", _count="500").json()
        assert {e["resource"]["resourceType"] for e in labs["entry"]} == {"Observation", "Encounter"}
        assert labs["total"] == 8  # 2 encounters, 3 labs each

        pages, url = [], f"/fhir/Patient/{patient_id}/$everything?_type=Observation&_count=4"
        while url:
            page = http.get(url).json()
            pages.append([e["resource"]["id"] for e in page["entry"]])
            assert page["total"] == 6
            url = next((link["url"] for link in page["link"] if link["relation"] == "next"), None)
            assert "_type=Observation" in page["link"][0]["url"]
        assert [len(p) for p in pages] == [4, 2] and len(set(pages[0] + pages[1])) == 6

        time.sleep(0.05)
        since = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        time.sleep(0.05)
        added = http.post(
            "/fhir/Observation", json=lab(f"Patient/{patient_id}", "718-7", 12.9, "g/dL"), headers=FHIR_JSON
        ).json()["id"]
        recent = _everything(http, patient_id, _since=since).json()
        assert [e["resource"]["id"] for e in recent["entry"]] == [added]
        assert _everything(http, patient_id, _since="yesterday").status_code == 400
        assert _everything(http, patient_id, _type="Spaceship").status_code == 400
        assert _everything(http, "does-not-exist").status_code == 404


def test_everything_is_site_and_ehr_scoped(server):
    with server.client("ehr", "S01", sub="everything-first") as http:
        patient_id, _ = _pushed(http, ["2026-01-05"])
    with server.client("ehr", "S02", sub="everything-other-site") as http:
        assert _everything(http, patient_id).status_code == 404  # another site's Patient does not exist
    with server.client("ehr", "S01", sub="everything-second") as http:
        assert _everything(http, patient_id).status_code == 404  # another client's push does not either
    with server.client("monitor", "S01") as http:
        seen = _everything(http, patient_id, _count="500")
        assert seen.status_code == 200 and seen.json()["total"] > 1
    with server.client("monitor", "S02") as http:
        assert _everything(http, patient_id).status_code == 404
    with server.client("sponsor") as http:
        assert _everything(http, patient_id).status_code == 403


def test_everything_respects_smart_scopes_per_type(server):
    with server.client("ehr", "S01", sub="everything-scoped") as http:
        person = http.post("/fhir/Patient", json=patient(), headers=FHIR_JSON).json()["id"]
        assert (
            http.post(
                "/fhir/Observation", json=lab(f"Patient/{person}", "718-7", 12.0, "g/dL"), headers=FHIR_JSON
            ).status_code
            == 201
        )
    token = server.token("ehr", "S01", sub="everything-scoped", scopes=["system/Patient.rs"])
    with server.client() as http:
        body = http.get(f"/fhir/Patient/{person}/$everything", headers={"Authorization": f"Bearer {token}"}).json()
    assert [e["resource"]["resourceType"] for e in body["entry"]] == ["Patient", "OperationOutcome"]
    assert "Observation" in body["entry"][1]["resource"]["issue"][0]["diagnostics"]


def test_the_capability_statement_lists_everything_and_its_definition_is_served(server):
    with server.client() as http:
        statement = http.get("/fhir/metadata").json()
        definition = http.get("/fhir/OperationDefinition/Patient-everything")
    patient_entry = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Patient")
    assert {
        "name": "everything",
        "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything",
    } in patient_entry["operation"]
    assert definition.status_code == 200
    get_fhir_model_class("OperationDefinition").model_validate(definition.json())
    assert {p["name"] for p in definition.json()["parameter"]} == {"_since", "_type", "_count", "return"}
