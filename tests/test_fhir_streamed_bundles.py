"""Large Bundles are read entry by entry (ECRF_STREAM_BUNDLE_BYTES): the same answers as a Bundle parsed whole.

A second server on the same database streams every Bundle (threshold 0). Each body below, valid or hostile,
goes to both servers: same status, same issue codes and locations (where the whole body's answer has one),
and a refused one writes nothing.
(tests/test_fhir_bundles.py also runs all its transaction and batch tests on the streaming server.)
"""

import json

import pytest

from fhir_builders import FHIR_JSON, MRN, bundle, lab, patient, patient_with_labs, post, urn
from tests.conftest import running_server
from tests.test_hostile_input import row_counts


@pytest.fixture(scope="module")
def streaming(server):
    with running_server(server.settings.model_copy(update={"stream_bundle_bytes": 0})) as streaming:
        yield streaming


def _answer(server, body: bytes) -> tuple[int, list[tuple[str, tuple[str, ...]]]]:
    before = row_counts(server)
    with server.client("ehr", "S01", sub="streamed") as http:
        response = http.post("/fhir", content=body, headers=FHIR_JSON)
    assert response.status_code < 500, response.text[:500]
    reply = response.json()
    if response.status_code >= 400:
        assert reply["resourceType"] == "OperationOutcome", reply
        assert row_counts(server) == before
        return response.status_code, [(i["code"], tuple(i.get("expression", []))) for i in reply["issue"]]
    return response.status_code, [(e["response"]["status"], ()) for e in reply["entry"]]


def _valid() -> dict:
    return patient_with_labs(3)


def _text(body: dict) -> str:
    return json.dumps(body)


def _in_resource(snippet: str) -> bytes:
    """The valid Bundle with `snippet` (raw JSON) as an extra member of its second entry's resource."""
    text = _text(_valid())
    marker = '"resourceType": "Observation"'
    return text.replace(marker, f"{snippet}, {marker}", 1).encode()


HOSTILE = {
    "repeated key in an entry's resource": _in_resource('"status": "final"'),
    "repeated key in an entry": _text(_valid()).replace('{"resource":', '{"fullUrl": "urn:x", "resource":', 1).encode(),
    "repeated top-level key": ('{"type": "batch", ' + _text(_valid())[1:]).encode(),
    "repeated entry array": ('{"entry": [], ' + _text(_valid())[1:]).encode(),
    "control character in a resource": _in_resource('"language": "en\\u0007"'),
    "control character in the shell": ('{"id": "b\\u0001", ' + _text(_valid())[1:]).encode(),
    "lone surrogate": _in_resource('"language": "\\ud800"'),
    "invalid UTF-8": _in_resource('"language": "x"').replace(b'"x"', b'"\xff\xfe"'),
    "byte order mark": b"\xef\xbb\xbf" + _text(_valid()).encode(),
    "NaN": _in_resource('"x": NaN'),
    "truncated": _text(_valid()).encode()[:-1],
    "trailing garbage": _text(_valid()).encode() + b" x",
    "two documents": _text(_valid()).encode() + b"{}",
    "missing comma between entries": _text(_valid()).replace('}, {"resource"', '} {"resource"', 1).encode(),
    "double comma between entries": _text(_valid()).replace('}, {"resource"', '}, , {"resource"', 1).encode(),
    "trailing comma in the entry array": (_text(_valid())[:-2] + ",]}").encode(),
    "a number among the entries": _text(_valid()).replace('"entry": [', '"entry": [1, ', 1).encode(),
    "a string among the entries": _text(_valid()).replace('"entry": [', '"entry": ["[{}]", ', 1).encode(),
    "an array among the entries": _text(_valid()).replace('"entry": [', '"entry": [[], ', 1).encode(),
    "entry is an object": b'{"resourceType": "Bundle", "type": "transaction", "entry": {"a": [{}]}}',
    "entry is a string": b'{"resourceType": "Bundle", "type": "transaction", "entry": "[{}]"}',
    "not a Bundle": _text({"resourceType": "Patient", "entry": [{}]}).encode(),
    "a top-level array": b'[{"entry": [{}]}]',
    "a key that ends like entry": ('{"a\\"entry": [{"x": 1}], ' + _text(_valid())[1:]).encode(),
    "an entry array nested deeper": b'{"resourceType": "Bundle", "type": "batch", "x": {"entry": [{"a": 1}]}}',
    "unknown top-level element": ('{"entry.item": {}, ' + _text(_valid())[1:]).encode(),
    "too many digits": _in_resource('"x": 12345678901234567890123'),
    "18 decimals": _in_resource('"x": 1.123456789012345678'),
    "too deep": _in_resource('"extension": ' + "[" * 70 + "]" * 70),
    "an unknown element": _in_resource('"colour": "blue"'),
    "an unsupported type": _text(bundle([post({"resourceType": "Spaceship", "status": "active"})])).encode(),
    "a bad reference": _text(bundle([post(lab(urn(), "718-7", 12.0, "g/dL"))])).encode(),
    "an empty object": b"{}",
    "an empty entry array": b'{"resourceType": "Bundle", "type": "transaction", "entry": []}',
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_streamed_and_whole_bundles_get_the_same_answer(server, streaming, name):
    body = HOSTILE[name]
    whole, streamed = _answer(server, body), _answer(streaming, body)
    assert 400 <= whole[0] < 500 or name == "an empty entry array", whole
    assert streamed[0] == whole[0] and len(streamed[1]) == len(whole[1]), (whole, streamed)
    for (code, location), (streamed_code, streamed_location) in zip(whole[1], streamed[1]):
        # streamed, a repeated key is located at its entry; parsed whole, the body is named
        assert streamed_code == code and streamed_location == location or not location, (whole, streamed)


def test_a_valid_bundle_is_stored_the_same_way_streamed(server, streaming):
    person = patient()
    identifier = f"{MRN['S01']}|{person['identifier'][0]['value']}"
    patient_url = urn()
    first = bundle(
        [
            post(person, patient_url, if_none_exist=f"identifier={identifier}"),
            post(lab(patient_url, "718-7", 13.2, "g/dL")),
        ]
    )
    again = bundle([*first["entry"], post(lab(f"Patient?identifier={identifier}", "777-3", 210, "10*3/uL"))])
    with streaming.client("ehr", "S01") as http:
        created = http.post("/fhir", json=first, headers=FHIR_JSON)
        assert created.status_code == 200, created.text
        resent = http.post("/fhir", json=again, headers=FHIR_JSON)
        assert resent.status_code == 200, resent.text
        assert [e["response"]["status"] for e in resent.json()["entry"]] == ["200 OK", "201 Created", "201 Created"]
        patient_id = created.json()["entry"][0]["response"]["location"].split("/")[1]
        found = http.get("/fhir/Observation", params={"subject": f"Patient/{patient_id}"}).json()
    assert found["total"] == 3
    assert sorted(e["resource"]["valueQuantity"]["value"] for e in found["entry"]) == [13.2, 13.2, 210]
    assert all(e["resource"]["subject"]["reference"] == f"Patient/{patient_id}" for e in found["entry"])


def test_a_conditional_reference_is_resolved_before_anything_is_written(server, streaming):
    """Conditional references name what was stored before the Bundle: not a Patient the same Bundle creates."""
    person = patient()
    identifier = f"{MRN['S01']}|{person['identifier'][0]['value']}"
    late = [post(lab(f"Patient?identifier={identifier}", "718-7", 12.0, "g/dL")) for _ in range(1100)]
    body = bundle([post(person, urn(), if_none_exist=f"identifier={identifier}"), *late])
    for target in (server, streaming):
        status, issues = _answer(target, json.dumps(body).encode())
        assert status == 422 and issues[0][0] == "not-found", issues
