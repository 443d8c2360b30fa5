"""End to end: every synthetic patient of tests/data/eligibility goes in as one FHIR transaction plus the
attestation forms through the eCRF door, and its eligibility is read over HTTP."""

import pytest

from tests.eligibility_support import compose, outcomes, push, variants

PATIENTS = variants()


@pytest.mark.parametrize("variant", PATIENTS, ids=[p["id"] for p in PATIENTS])
def test_synthetic_patient(server, variant):
    patient = compose(variant)
    with server.client("coordinator", "S01") as http:
        subject_id = push(http, patient)
        response = http.get(f"/api/v1/subjects/{subject_id}/eligibility")
    assert response.status_code == 200, response.text
    body = response.json()
    found = outcomes(body)
    expected = variant["expect"]
    assert {k: found[k] for k in expected["criteria"]} == expected["criteria"], [
        (c["id"], c["result"], c["reason"]) for c in body["criteria"] if c["id"] in expected["criteria"]
    ]
    assert body["status"] == expected["status"], [
        (c["id"], c["result"], c["reason"])
        for c in body["criteria"]
        if c["result"] != ("met" if c["kind"] == "inclusion" else "not_met")
    ]
    assert body["subject"] == subject_id and len(body["criteria"]) == 28
    unknown = {c["id"] for c in body["criteria"] if c["result"] == "unknown"}
    assert unknown == {m["criterion"] for m in body["missing"]}
    assert (body["status"] == "incomplete") == (bool(unknown) and body["status"] != "ineligible")
    for criterion_id, fragments in expected.get("reasons", {}).items():
        reason = next(c["reason"] for c in body["criteria"] if c["id"] == criterion_id)
        assert all(fragment in reason for fragment in fragments), reason
