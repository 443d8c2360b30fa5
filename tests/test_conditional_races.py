"""Concurrent conditional creates give one resource (issue 17, finding 1), also when the twins write the
criteria two ways (`identifier=urn:rt|V` and `identifier=V`, which FHIR token search makes equivalent for a
resource that carries `urn:rt|V`) or come from tokens whose other site claims differ ([S01] and [S01, S02]).

16 requests at once, released together by a barrier, 4 times each; on SQLite writers take turns anyway, on
PostgreSQL they are serialised by an advisory lock on the criteria normalised without systems or sites.
"""

import threading
import uuid

import httpx
import pytest

from tests.fhir_builders import FHIR_JSON, LOINC, patient

CONCURRENT = 16
REPETITIONS = 4


@pytest.fixture(scope="module")
def subject(server):
    with server.client("ehr", "S01") as http:
        response = http.post("/fhir/Patient", json=patient(), headers=FHIR_JSON)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def _observation(subject_id: str, value: str) -> dict:
    return {
        "resourceType": "Observation",
        "status": "final",
        "identifier": [{"system": "urn:rt", "value": value}],
        "code": {"coding": [{"system": LOINC, "code": "718-7"}]},
        "subject": {"reference": f"Patient/{subject_id}"},
        "effectiveDateTime": "2026-03-02",
        "valueQuantity": {"value": 13.2, "unit": "g/dL", "system": "http://unitsofmeasure.org", "code": "g/dL"},
    }


def _race(server, subject_id: str, variants) -> tuple[list[int], str]:
    """`variants[i % len]` = (token, criteria) of request i; all 16 start at once. Returns statuses, value."""
    value = uuid.uuid4().hex[:10]
    barrier = threading.Barrier(CONCURRENT)
    statuses: list[int] = [0] * CONCURRENT

    def one(index: int) -> None:
        token, criteria = variants[index % len(variants)]
        with httpx.Client(
            base_url=server.base_url, timeout=120, headers={"Authorization": f"Bearer {token}", **FHIR_JSON}
        ) as http:
            barrier.wait()
            response = http.post(
                "/fhir/Observation",
                json=_observation(subject_id, value),
                headers={"If-None-Exist": criteria.format(value=value)},
            )
            statuses[index] = response.status_code

    threads = [threading.Thread(target=one, args=(index,)) for index in range(CONCURRENT)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses, value


def _stored(server, value: str) -> int:
    with server.client("investigator", "S01") as http:
        response = http.get("/fhir/Observation", params={"identifier": f"urn:rt|{value}"})
    assert response.status_code == 200, response.text
    return response.json()["total"]


@pytest.mark.parametrize("repetition", range(REPETITIONS))
def test_criteria_written_two_ways_give_one_resource(server, subject, repetition):
    token = server.token("investigator", "S01")
    statuses, value = _race(server, subject, [(token, "identifier=urn:rt|{value}"), (token, "identifier={value}")])
    assert sorted(set(statuses)) == [200, 201] and statuses.count(201) == 1, statuses
    assert _stored(server, value) == 1


@pytest.mark.parametrize("repetition", range(REPETITIONS))
def test_tokens_with_different_other_sites_give_one_resource(server, subject, repetition):
    one_site, two_sites = server.token("investigator", "S01"), server.token("investigator", "S01", "S02")
    statuses, value = _race(
        server, subject, [(one_site, "identifier=urn:rt|{value}"), (two_sites, "identifier=urn:rt|{value}")]
    )
    assert statuses.count(201) == 1 and set(statuses) <= {200, 201}, statuses
    assert _stored(server, value) == 1


@pytest.mark.parametrize("repetition", range(REPETITIONS))
def test_both_at_once_give_one_resource(server, subject, repetition):
    one_site, two_sites = server.token("investigator", "S01"), server.token("investigator", "S01", "S02")
    statuses, value = _race(
        server,
        subject,
        [
            (one_site, "identifier=urn:rt|{value}"),
            (two_sites, "identifier={value}"),
            (two_sites, "identifier=urn:rt|{value}"),
            (one_site, "identifier={value}"),
        ],
    )
    assert statuses.count(201) == 1 and set(statuses) <= {200, 201}, statuses
    assert _stored(server, value) == 1
