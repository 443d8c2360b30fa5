"""An ehr client reads back what it pushed, nothing else (issue 6): not the data entered in the eCRF at its
site, not another ehr client's pushes; a Patient it pushed with its site's MRN links it to the enrolled one.
Eligibility, recomputed in the ehr's transaction, still sees every datum of the subject."""

import uuid

from sqlmodel import Session, select

from ecrf.store.models import PushedBy
from tests.crf_support import enrol, save
from tests.eligibility_support import TODAY, compose, push, shift
from tests.fhir_builders import FHIR_JSON, MRN, bundle, lab, post, urn

IDENTIFIER = "urn:ecrf-test:ehr-scope"


def _ids(searchset: dict) -> set[str]:
    return {entry["resource"]["id"] for entry in searchset.get("entry") or []}


def _search(http, resource_type: str, **params) -> set[str]:
    response = http.get(f"/fhir/{resource_type}", params={**params, "_count": 500})
    assert response.status_code == 200, response.text
    return _ids(response.json())


def _enrolled_with_form_data(server) -> tuple[dict, list[str]]:
    """A subject enrolled at S01 by a coordinator, with a labs form saved: the form's Observation ids."""
    with server.client("coordinator", "S01", sub="scope-coordinator") as http:
        subject = enrol(http)
        saved = save(http, subject["id"], "labs")
        assert saved.status_code == 201, saved.text
    form_observations = [
        item["resource"].split("/")[1]
        for item in saved.json()["items"].values()
        if (item.get("resource") or "").startswith("Observation/")
    ]
    assert form_observations
    return subject, form_observations


def _push_patient_and_labs(http, mrn_value: str, count: int = 2) -> tuple[str, list[str]]:
    patient_url = urn()
    patient = {"resourceType": "Patient", "identifier": [{"system": MRN["S01"], "value": mrn_value}]}
    labs = [
        post(
            {
                **lab(patient_url, "718-7", 12.0 + i, "g/dL"),
                "identifier": [{"system": IDENTIFIER, "value": uuid.uuid4().hex}],
            }
        )
        for i in range(count)
    ]
    response = http.post("/fhir", json=bundle([post(patient, patient_url), *labs]), headers=FHIR_JSON)
    assert response.status_code == 200, response.text
    entries = response.json()["entry"]
    ids = [entry["response"]["location"].split("/")[1] for entry in entries]
    return ids[0], ids[1:]


def _mrn_of(server, subject: dict) -> str:
    with server.client("coordinator", "S01") as http:
        patient = http.get(f"/fhir/Patient/{subject['patient_id']}").json()
    return next(i["value"] for i in patient["identifier"] if i["system"] == MRN["S01"])


def test_an_ehr_reads_back_its_pushes_and_the_enrolled_patient_it_linked_by_mrn(server):
    subject, form_observations = _enrolled_with_form_data(server)
    patient_id = subject["patient_id"]
    with server.client("ehr", "S01", sub="scope-ehr-a") as ehr:
        assert ehr.get(f"/fhir/Patient/{patient_id}").status_code == 404  # enrolled in the eCRF: not its data
        linked, pushed = _push_patient_and_labs(ehr, _mrn_of(server, subject))
        assert linked == patient_id  # the MRN match landed the pushes on the enrolled subject

        patient = ehr.get(f"/fhir/Patient/{patient_id}")
        assert patient.status_code == 200 and patient.json()["id"] == patient_id
        assert ehr.get(f"/fhir/Patient/{patient_id}/_history").status_code == 200
        assert _search(ehr, "Patient", _id=patient_id) == {patient_id}
        assert _search(ehr, "Observation", subject=f"Patient/{patient_id}") == set(pushed)
        assert _search(ehr, "Observation", _id=",".join([*pushed, *form_observations])) == set(pushed)
        for observation_id in pushed:
            assert ehr.get(f"/fhir/Observation/{observation_id}").status_code == 200
            assert ehr.get(f"/fhir/Observation/{observation_id}/_history/1").status_code == 200
        for observation_id in form_observations:
            for url in (
                f"/fhir/Observation/{observation_id}",
                f"/fhir/Observation/{observation_id}/_history",
                f"/fhir/Observation/{observation_id}/_history/1",
            ):
                assert ehr.get(url).status_code == 404, url
        assert _search(ehr, "ResearchSubject", _id=subject["id"]) == set()
        assert ehr.get(f"/fhir/ResearchSubject/{subject['id']}").status_code == 404

        # a client id of its own (PUT creates) and a conditional reference to its linked Patient
        own_id = str(uuid.uuid4())
        put = ehr.put(
            f"/fhir/Observation/{own_id}",
            json={**lab(f"Patient/{patient_id}", "718-7", 11.0, "g/dL"), "id": own_id},
            headers=FHIR_JSON,
        )
        assert put.status_code == 201, put.text
        by_mrn = f"Patient?identifier={MRN['S01']}|{_mrn_of(server, subject)}"
        created = ehr.post("/fhir/Observation", json=lab(by_mrn, "718-7", 10.5, "g/dL"), headers=FHIR_JSON)
        assert created.status_code == 201, created.text
        stored = ehr.get(f"/fhir/Observation/{created.json()['id']}").json()
        assert stored["subject"] == {"reference": f"Patient/{patient_id}"}
        assert _search(ehr, "Observation", subject=f"Patient/{patient_id}") == {*pushed, own_id, created.json()["id"]}

    with server.client("coordinator", "S01") as coordinator:  # other roles are not narrowed
        assert _search(coordinator, "Observation", subject=f"Patient/{patient_id}") >= {*pushed, *form_observations}


def test_an_ehr_cannot_change_what_it_did_not_push(server):
    subject, form_observations = _enrolled_with_form_data(server)
    patient_id = subject["patient_id"]
    with server.client("ehr", "S01", sub="scope-ehr-writer") as ehr:
        _push_patient_and_labs(ehr, _mrn_of(server, subject), count=1)  # it sees the Patient now
        observation_id = form_observations[0]
        with server.client("coordinator", "S01") as coordinator:
            before = coordinator.get(f"/fhir/Observation/{observation_id}").json()
        body = {**lab(f"Patient/{patient_id}", "718-7", 9.9, "g/dL"), "id": observation_id}
        assert ehr.put(f"/fhir/Observation/{observation_id}", json=body, headers=FHIR_JSON).status_code == 404
        assert (
            ehr.delete(f"/fhir/Observation/{observation_id}").status_code == 204
        )  # v2: as for an unknown id, nothing written
        with server.client("coordinator", "S01") as coordinator:
            after = coordinator.get(f"/fhir/Observation/{observation_id}").json()
    assert after == before


def test_a_second_ehr_client_of_the_site_does_not_see_the_first_ones_pushes(server):
    subject, _ = _enrolled_with_form_data(server)
    patient_id, mrn_value = subject["patient_id"], _mrn_of(server, subject)
    with server.client("ehr", "S01", sub="scope-ehr-first") as first:
        _, pushed = _push_patient_and_labs(first, mrn_value)
        identifier = f"{IDENTIFIER}|{uuid.uuid4().hex}"
        conditional = first.post(
            "/fhir/Observation",
            json={
                **lab(f"Patient/{patient_id}", "718-7", 14.0, "g/dL"),
                "identifier": [{"system": IDENTIFIER, "value": identifier.split("|")[1]}],
            },
            headers={**FHIR_JSON, "If-None-Exist": f"identifier={identifier}"},
        )
        assert conditional.status_code == 201, conditional.text
        pushed.append(conditional.json()["id"])

    with server.client("ehr", "S01", sub="scope-ehr-second") as second:
        assert second.get(f"/fhir/Patient/{patient_id}").status_code == 404
        for observation_id in pushed:
            assert second.get(f"/fhir/Observation/{observation_id}").status_code == 404
        assert _search(second, "Observation", _id=",".join(pushed)) == set()
        by_mrn = f"Patient?identifier={MRN['S01']}|{mrn_value}"
        unlinked = second.post("/fhir/Observation", json=lab(by_mrn, "718-7", 10.0, "g/dL"), headers=FHIR_JSON)
        assert unlinked.status_code == 422, unlinked.text  # a Patient it has not linked is not there for it

        linked, own = _push_patient_and_labs(second, mrn_value, count=1)
        assert linked == patient_id
        assert second.get(f"/fhir/Patient/{patient_id}").status_code == 200
        assert _search(second, "Observation", subject=f"Patient/{patient_id}") == set(own)
        # the first client's conditional key still keeps one resource per criteria: neither shown nor duplicated
        twin = second.post(
            "/fhir/Observation",
            json=lab(f"Patient/{patient_id}", "718-7", 14.0, "g/dL"),
            headers={**FHIR_JSON, "If-None-Exist": f"identifier={identifier}"},
        )
        assert twin.status_code == 409, twin.text
        assert pushed[-1] not in twin.text
        assert _search(second, "Observation", subject=f"Patient/{patient_id}") == set(own)
        conditional_delete = second.delete("/fhir/Observation", params={"identifier": identifier})
        assert conditional_delete.status_code == 204

    with server.client("ehr", "S01", sub="scope-ehr-first") as first:
        assert first.get(f"/fhir/Observation/{pushed[-1]}").status_code == 200  # the second one deleted nothing
        assert _search(first, "Observation", subject=f"Patient/{patient_id}") == set(pushed)

    with Session(server.runtime.engine) as session:
        rows = session.exec(
            select(PushedBy.sub).where(PushedBy.resource_type == "Patient", PushedBy.resource_id == patient_id)
        ).all()
    assert sorted(rows) == ["scope-ehr-first", "scope-ehr-second"]  # linked by MRN, without a new version


def test_eligibility_after_an_ehr_push_still_uses_the_ecrf_data(server):
    """An eligible subject, entered by a coordinator (its resources through /fhir, its forms in the eCRF).
    An ehr links the Patient by MRN and pushes a low platelet count: the recompute in the ehr's transaction
    sees all the coordinator's data, so exactly the platelet criterion blocks, and ResearchSubject.status
    (which the ehr may not see) follows."""
    subject_data = compose()
    with server.client("coordinator", "S01", sub="scope-eligibility-coordinator") as http:
        subject_id = push(http, subject_data)
        assert http.get(f"/api/v1/subjects/{subject_id}/eligibility").json()["status"] == "eligible"
    mrn_value = subject_data["resources"]["patient"]["identifier"][0]["value"]

    with server.client("ehr", "S01", sub="scope-ehr-labs") as ehr:
        patient_url = urn()
        patient = {"resourceType": "Patient", "identifier": [{"system": MRN["S01"], "value": mrn_value}]}
        platelets = lab(patient_url, "777-3", 40, "10*9/L", shift(TODAY, "R-1d").isoformat())
        response = ehr.post("/fhir", json=bundle([post(patient, patient_url), post(platelets)]), headers=FHIR_JSON)
        assert response.status_code == 200, response.text
        assert response.json()["entry"][0]["response"]["status"].startswith("200")  # matched the enrolled Patient
        assert ehr.get(f"/fhir/ResearchSubject/{subject_id}").status_code == 404

    with server.client("coordinator", "S01") as http:
        log = http.get("/api/v1/eligibility", params={"limit": 500}).json()
        row = next(r for r in log["items"] if r["subject"] == subject_id)  # as computed in the ehr's transaction
        assert row["status"] == "ineligible"
        assert [b["id"] for b in row["blocking"]] == ["I08_platelets"]
        assert http.get(f"/api/v1/subjects/{subject_id}").json()["status"] == "ineligible"
        assert http.get(f"/fhir/ResearchSubject/{subject_id}").json()["status"] == "ineligible"
