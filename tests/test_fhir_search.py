"""Search over HTTP: token/reference/date parameters, _lastUpdated, _sort, _count paging with next links."""

import time
from datetime import UTC, datetime, timedelta

from fhir.resources.R4B import get_fhir_model_class

from tests.fhir_builders import FHIR_JSON, bundle, lab, patient, post, urn


def _patient_with(server, observations: list[dict], conditions: list[dict] = ()) -> str:
    patient_url = urn()
    for resource in [*observations, *conditions]:
        resource["subject"] = {"reference": patient_url}
    body = bundle([post(patient(), patient_url)] + [post(r) for r in [*observations, *conditions]])
    with server.client("ehr", "S01") as http:
        response = http.post("/fhir", json=body, headers=FHIR_JSON)
    assert response.status_code == 200, response.text
    return response.json()["entry"][0]["response"]["location"].split("/")[1]


def _condition(code: str) -> dict:
    return {
        "resourceType": "Condition",
        "subject": {"reference": ""},
        "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": code}]},
        "onsetDateTime": "2025-11-02",
    }


def _ids(searchset: dict) -> list[str]:
    return [entry["resource"]["id"] for entry in searchset.get("entry", [])]


def test_observation_search_by_subject_code_and_date(server):
    observations = [lab("", "718-7", 12.0 + i / 10, "g/dL", f"2026-01-{10 + i:02d}") for i in range(5)]
    observations.append(lab("", "777-3", 210, "10*3/uL", "2025-12-31"))
    pid = _patient_with(server, observations)
    with server.client("ehr", "S01") as http:

        def search(**params):
            response = http.get("/fhir/Observation", params={"subject": f"Patient/{pid}", **params})
            assert response.status_code == 200, response.text
            return response.json()

        everything = search()
        get_fhir_model_class("Bundle").model_validate(everything)
        assert everything["type"] == "searchset" and everything["total"] == 6
        assert search(code="http://loinc.org|718-7")["total"] == 5
        assert search(code="718-7")["total"] == 5
        assert search(code="http://snomed.info/sct|718-7")["total"] == 0
        assert search(code="http://loinc.org|718-7,http://loinc.org|777-3")["total"] == 6
        assert search(date="ge2026-01-01")["total"] == 5
        assert search(date="2026-01-12")["total"] == 1
        assert search(date="lt2026-01-01")["total"] == 1
        assert search(date=["ge2026-01-11", "le2026-01-13"])["total"] == 3
        assert search(date="gt2026-01-13")["total"] == 1
        assert http.get("/fhir/Observation", params={"subject": pid}).json()["total"] == 6
        assert http.get("/fhir/Observation", params={"patient": pid}).json()["total"] == 6
        dates = [e["resource"]["effectiveDateTime"] for e in search(_sort="-date")["entry"]]
        assert dates == sorted(dates, reverse=True) and dates[0] == "2026-01-14"
        ascending = [e["resource"]["effectiveDateTime"] for e in search(_sort="date")["entry"]]
        assert ascending == sorted(ascending)


def test_last_updated_filter_and_sort(server):
    pid = _patient_with(server, [lab("", "718-7", 12.0, "g/dL")])
    time.sleep(0.01)
    middle = datetime.now(UTC)
    time.sleep(0.01)
    with server.client("ehr", "S01") as http:
        later = http.post("/fhir/Observation", json=lab(f"Patient/{pid}", "718-7", 13.0, "g/dL")).json()["id"]
        stamp = (middle - timedelta(microseconds=0)).isoformat().replace("+00:00", "Z")
        newer = http.get("/fhir/Observation", params={"subject": f"Patient/{pid}", "_lastUpdated": f"gt{stamp}"}).json()
        assert _ids(newer) == [later]
        newest_first = http.get(
            "/fhir/Observation", params={"subject": f"Patient/{pid}", "_sort": "-_lastUpdated"}
        ).json()
        assert _ids(newest_first)[0] == later and newest_first["total"] == 2


def test_paging_with_count_and_next_links_visits_every_match_once(server):
    pid = _patient_with(server, [lab("", "718-7", 10 + i / 10, "g/dL", f"2026-02-{1 + i:02d}") for i in range(23)])
    seen, pages = [], 0
    with server.client("ehr", "S01") as http:
        page = http.get("/fhir/Observation", params={"subject": f"Patient/{pid}", "_count": 5, "_sort": "-date"}).json()
        while True:
            pages += 1
            assert page["total"] == 23
            seen += [e["resource"]["effectiveDateTime"] for e in page["entry"]]
            links = {link["relation"]: link["url"] for link in page["link"]}
            assert links["self"].startswith(server.base_url + "/fhir/Observation?")
            if "next" not in links:
                break
            assert "_count=5" in links["next"] and "_sort=-date" in links["next"]
            page = http.get(links["next"]).json()
        capped = http.get("/fhir/Observation", params={"subject": f"Patient/{pid}", "_count": 100000}).json()
    assert pages == 5 and len(seen) == 23 and len(set(seen)) == 23
    assert seen == sorted(seen, reverse=True)
    assert len(capped["entry"]) == 23  # _count is bounded by the page size maximum, never an error


def test_condition_patient_identifier_and_research_subject_search(server):
    person = patient()
    identifier = person["identifier"][0]
    pid = _patient_with(server, [], [_condition("C22.0"), _condition("I50.9")])
    with server.client("ehr", "S01") as http:
        conditions = http.get(
            "/fhir/Condition", params={"subject": f"Patient/{pid}", "code": "http://hl7.org/fhir/sid/icd-10|C22.0"}
        ).json()
        assert conditions["total"] == 1 and conditions["entry"][0]["resource"]["code"]["coding"][0]["code"] == "C22.0"
        created = http.post("/fhir/Patient", json=person).json()["id"]
        by_identifier = http.get(
            "/fhir/Patient", params={"identifier": f"{identifier['system']}|{identifier['value']}"}
        )
        assert _ids(by_identifier.json()) == [created]
        subject = {
            "resourceType": "ResearchSubject",
            "status": "candidate",
            "study": {"reference": "ResearchStudy/NCT04163237"},
            "individual": {"reference": f"Patient/{created}"},
        }
        subject_id = http.post("/fhir/ResearchSubject", json=subject).json()["id"]
        found = http.get(
            "/fhir/ResearchSubject", params={"study": "ResearchStudy/NCT04163237", "individual": f"Patient/{created}"}
        ).json()
        assert _ids(found) == [subject_id]


def test_unknown_search_parameters_are_refused_with_strict_handling(server):
    # v2 (issue 12): lenient is the default (tests/test_fhir_search_lenient.py); Prefer: handling=strict keeps 400
    strict = {"Prefer": "handling=strict"}
    with server.client("ehr", "S01") as http:
        for params in (
            {"colour": "red"},
            {"code:below": "718"},
            {"_include": "Observation:code"},
            {"date": "yesterday"},
            {"_count": "-1"},
            {"_sort": "value"},
            {"subject": ""},
        ):
            response = http.get("/fhir/Observation", params=params, headers=strict)
            assert response.status_code == 400, params
            outcome = response.json()
            assert outcome["resourceType"] == "OperationOutcome" and outcome["issue"][0]["diagnostics"]
        refused = http.get("/fhir/Observation", params={"colour": "red"}, headers=strict).json()
        assert "colour" in refused["issue"][0]["diagnostics"]
        for params in ({"date": "yesterday"}, {"_count": "-1"}, {"_sort": "value"}):  # wrong values, not unknown names
            assert http.get("/fhir/Observation", params=params).status_code == 400, params


def test_patient_search_takes_the_subject_when_it_is_a_patient(server):
    pid = _patient_with(server, [lab("", "718-7", 12.0, "g/dL")], [_condition("C22.0")])
    with server.client("ehr", "S01") as http:
        of_group = lab(f"Group/{pid}", "718-7", 12.5, "g/dL")
        group_observation = http.post("/fhir/Observation", json=of_group, headers=FHIR_JSON)
        assert group_observation.status_code == 201, group_observation.text

        def found(resource_type: str, **params) -> list[str]:
            response = http.get(f"/fhir/{resource_type}", params=params)
            assert response.status_code == 200, response.text
            return _ids(response.json())

        by_subject = found("Observation", subject=pid)
        assert group_observation.json()["id"] in by_subject and len(by_subject) == 2
        patient_observations = found("Observation", subject=f"Patient/{pid}")
        assert len(patient_observations) == 1
        for value in (pid, f"Patient/{pid}", f"{server.base_url}/fhir/Patient/{pid}", f"Patient/{pid}/_history/1"):
            assert found("Observation", patient=value) == patient_observations, value
        assert found("Observation", patient=f"Group/{pid}") == []
        assert found("Observation", patient=f"Group/{pid},Patient/{pid}") == patient_observations
        assert len(found("Condition", patient=pid)) == 1
        subject = {
            "resourceType": "ResearchSubject",
            "status": "candidate",
            "study": {"reference": "ResearchStudy/NCT04163237"},
            "individual": {"reference": f"Patient/{pid}"},
        }
        subject_id = http.post("/fhir/ResearchSubject", json=subject).json()["id"]
        assert found("ResearchSubject", patient=pid) == [subject_id]
