"""Quantities arriving through the FHIR door land in item_fact in canonical units; the original stays."""

from decimal import Decimal

import pytest
from sqlmodel import Session, select

from ecrf.store.models import ItemFact
from tests.fhir_builders import FHIR_JSON, UCUM, bundle, patient, post, urn

VALUE = Decimal("2.5")


def _quantity_items(study):
    for form in study.forms:
        for item in form.items:
            if item.type == "quantity" and item.fhir.kind == "observation":
                yield form, item


def _observation(subject: str, coding, value, unit: str, *, legacy: bool) -> dict:
    quantity = (
        {"value": float(value), "unit": unit}
        if legacy
        else {"value": float(value), "unit": unit, "system": UCUM, "code": unit}
    )
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": coding.system, "code": coding.code}]},
        "subject": {"reference": subject},
        "effectiveDateTime": "2026-04-01",
        "valueQuantity": quantity,
    }


def _push(server, resources: list[dict]) -> list[str]:
    patient_url = urn()
    for resource in resources:
        resource["subject"]["reference"] = patient_url
    body = bundle([post(patient(), patient_url)] + [post(resource) for resource in resources])
    with server.client("ehr", "S01") as http:
        response = http.post("/fhir", json=body, headers=FHIR_JSON)
    assert response.status_code == 200, response.text
    return [entry["response"]["location"].split("/")[1] for entry in response.json()["entry"][1:]]


def _facts(server, resource_ids: list[str]) -> dict[str, list[ItemFact]]:
    with Session(server.runtime.engine) as session:
        rows = session.exec(select(ItemFact).where(ItemFact.resource_id.in_(resource_ids))).all()
    facts: dict[str, list[ItemFact]] = {}
    for row in rows:
        facts.setdefault(row.resource_id, []).append(row)
    return facts


def test_every_accepted_unit_of_every_quantity_item_arrives_canonical(server):
    study = server.runtime.study
    cases = []
    for _form, item in _quantity_items(study):
        for unit, factor in item.accepted_units.items():
            legacy = unit in item.legacy_units
            cases.append((item, unit, factor, _observation("", item.fhir.codes[0], VALUE, unit, legacy=legacy)))
    spellings = {unit for _, unit, _, _ in cases}
    assert {"K/uL", "g/dl", "ng/ml", "mg/dL", "ukat/L", "[IU]/mL", "[lb_av]", "[in_i]", "/uL"} <= spellings
    assert len(cases) > 60
    ids = _push(server, [resource for *_, resource in cases])
    facts = _facts(server, ids)
    problems = []
    for (item, unit, factor, _), resource_id in zip(cases, ids, strict=True):
        found = [fact for fact in facts.get(resource_id, []) if fact.item_id == item.id]
        expected = float(VALUE * factor)
        if len(found) != 1:
            problems.append(f"{item.id} in {unit}: {len(found)} facts")
            continue
        fact = found[0]
        if (
            fact.error
            or fact.unit != item.unit
            or fact.value_number != pytest.approx(expected, rel=1e-12)
            or fact.original_unit != unit
        ):
            problems.append(
                f"{item.id} in {unit}: {fact.value_number} {fact.unit} (error {fact.error!r}), "
                f"expected {expected} {item.unit}"
            )
    assert not problems, "\n".join(problems)


def test_alternate_codes_map_to_the_same_item(server):
    study = server.runtime.study
    _, platelets = study.item("platelets")
    alternate = platelets.fhir.codes[1]
    [resource_id] = _push(server, [_observation("", alternate, 150000, "/uL", legacy=False)])
    [fact] = _facts(server, [resource_id])[resource_id]
    assert (fact.item_id, fact.value_number, fact.unit) == ("platelets", 150.0, "10*9/L")


def test_unconvertible_unit_is_kept_flagged_and_the_original_stays(server):
    study = server.runtime.study
    _, hemoglobin = study.item("hemoglobin")
    [resource_id] = _push(server, [_observation("", hemoglobin.fhir.codes[0], 8.1, "mmol/L", legacy=False)])
    [fact] = _facts(server, [resource_id])[resource_id]
    assert fact.item_id == "hemoglobin" and fact.error and "mmol/L" in fact.error
    assert fact.original_unit == "mmol/L"
    with server.client("ehr", "S01") as http:
        stored = http.get(f"/fhir/Observation/{resource_id}").json()
    assert stored["valueQuantity"] == {"value": 8.1, "unit": "mmol/L", "system": UCUM, "code": "mmol/L"}


def test_reference_range_high_becomes_the_uln_in_canonical_units(server):
    study = server.runtime.study
    _, ast = study.item("ast")
    resource = _observation("", ast.fhir.codes[0], 1.2, "ukat/L", legacy=False)
    resource["referenceRange"] = [{"high": {"value": 0.8, "unit": "ukat/L", "system": UCUM, "code": "ukat/L"}}]
    [resource_id] = _push(server, [resource])
    facts = {fact.item_id: fact for fact in _facts(server, [resource_id])[resource_id]}
    assert facts["ast"].value_number == pytest.approx(72.0) and facts["ast"].unit == "U/L"
    assert facts["ast"].uln == pytest.approx(48.0)
    assert facts["ast_uln"].value_number == pytest.approx(48.0) and facts["ast_uln"].unit == "U/L"
    with server.client("ehr", "S01") as http:
        stored = http.get(f"/fhir/Observation/{resource_id}").json()
    assert stored["valueQuantity"]["value"] == 1.2 and stored["referenceRange"][0]["high"]["unit"] == "ukat/L"
