"""Every accepted unit of every quantity item, through the API, converted exactly to the canonical unit."""

from decimal import Decimal

import pytest
from crf_support import LOG_VALID, VALID, day, enrol, path, save

from ecrf.config import Settings
from study_model.loader import load_study

STUDY = load_study(Settings(_env_file=None).study_dir)
CONVERTIBLE = [form.id for form in STUDY.forms if any(item.unit for item in form.items)]


def _entered(item, factor: Decimal) -> Decimal:
    """A value that lands inside the item's hard range once converted, with few digits."""
    low = item.hard_min if item.hard_min is not None else Decimal(0)
    high = item.hard_max if item.hard_max is not None else low + 100
    target = item.soft_min if item.soft_min is not None and item.soft_min > 0 else (low + high) / 4 or Decimal(1)
    value = Decimal(f"{target / factor:.3g}")
    if item.type == "integer":
        value = value.to_integral_value()
    return value


@pytest.mark.parametrize("form_id", CONVERTIBLE)
def test_each_accepted_unit_is_converted_with_its_factor(server, form_id):
    form = STUDY.form(form_id)
    log = form.kind == "log"  # a log form's entries: each round adds one (items of LOG_VALID besides the units)
    visit = None if log else VALID[form_id][0]
    quantities = [item for item in form.items if item.unit and item.derived is None]
    rounds = max(len(item.accepted_units) for item in quantities)
    with server.client("investigator", "S01") as http:
        subject = enrol(http)
        assert save(http, subject["id"], "surgery").status_code == 201
        for index in range(rounds):
            sent, expected = {}, {}
            for item in quantities:
                unit, factor = list(item.accepted_units.items())[index % len(item.accepted_units)]
                value = _entered(item, factor)
                sent[item.id] = {"value": int(value) if item.type == "integer" else float(value), "unit": unit}
                expected[item.id] = (value * factor, value, unit)
            if log:
                entries = f"/api/v1/subjects/{subject['id']}/forms/{form_id}/entries"
                response = http.post(entries, json={"items": {**LOG_VALID[form_id], **sent}})
                assert response.status_code == 201, response.text
                shown = http.get(f"{entries}/{response.json()['id']}").json()["items"]
            else:
                response = save(http, subject["id"], form_id, sent, reason=f"unit round {index}")
                assert response.status_code in (200, 201), response.text
                shown = http.get(path(subject["id"], form_id, visit)).json()["items"]
            for item_id, (canonical, value, unit) in expected.items():
                item = form.item(item_id)
                got = shown[item_id]
                assert got["unit"] == item.unit, item_id
                exact = Decimal(got.get("exact", str(got["value"])))
                assert exact == canonical, (item_id, unit, got)
                assert Decimal(str(got["entered"]["value"])) == value, (item_id, unit, got)


def test_a_bare_number_is_in_the_canonical_unit(server):
    with server.client("investigator", "S01") as http:
        subject = enrol(http)
        response = save(
            http, subject["id"], "demographics", {**VALID["demographics"][2], "weight": 72.5, "height": 170}
        )
    items = response.json()["items"]
    assert (items["weight"]["value"], items["weight"]["unit"]) == (72.5, "kg")
    assert (items["height"]["value"], items["height"]["unit"]) == (170, "cm")


@pytest.mark.parametrize(
    "item_id,entered,unit,canonical",
    [
        ("weight", "150", "[lb_av]", "68.0388555"),
        ("height", "65", "[in_i]", "165.10"),
    ],
)
def test_spec_factors_are_exact(server, item_id, entered, unit, canonical):
    with server.client("investigator", "S01") as http:
        subject = enrol(http)
        items = {**VALID["demographics"][2], item_id: {"value": float(entered), "unit": unit}}
        response = save(http, subject["id"], "demographics", items, visit_date=day(21))
    got = response.json()["items"][item_id]
    assert Decimal(got["exact"]) == Decimal(canonical) and got["entered"] == {"value": float(entered), "unit": unit}
