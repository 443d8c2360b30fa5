"""Synthetic patients: JSON fixtures (tests/data/eligibility) with dates relative to R, pushed through
either door (one FHIR transaction + eCRF form entries). The eligibility tests and bench/eligibility.py use
them; writing them straight into the store is the tests' own (tests/eligibility_support.py)."""

import copy
import json
import re
import uuid
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from ecrf.config import Settings
from study_model.loader import load_study

DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "eligibility"
TODAY = load_study(Settings(_env_file=None).study_dir).today_at("S01")  # R of an S01 subject: its site's date
_PLACEHOLDER = re.compile(r"\$\{([^}]*)\}")
_TERM = re.compile(r"([+-])(\d+)([dy])")


def shift(reference: date, expression: str) -> date:
    """'R-10d', 'R-75y-10d': R plus whole years, then days (a 29 February becomes 28 February)."""
    assert expression.startswith("R"), expression
    day = reference
    for sign, amount, unit in _TERM.findall(expression[1:]):
        amount = int(amount) * (-1 if sign == "-" else 1)
        if unit == "y":
            try:
                day = day.replace(year=day.year + amount)
            except ValueError:
                day = day.replace(year=day.year + amount, day=28)
        else:
            day += timedelta(days=amount)
    return day


def materialise(node: Any, reference: date, mrn: str) -> Any:
    if isinstance(node, dict):
        return {key: materialise(value, reference, mrn) for key, value in node.items()}
    if isinstance(node, list):
        return [materialise(value, reference, mrn) for value in node]
    if isinstance(node, str):
        return _PLACEHOLDER.sub(
            lambda m: mrn if m.group(1) == "MRN" else shift(reference, m.group(1)).isoformat(), node
        )
    return node


def merge(base: Any, patch: Any) -> Any:
    """Deep merge; null removes a key; lists are replaced."""
    if not isinstance(base, dict) or not isinstance(patch, dict):
        return copy.deepcopy(patch)
    merged = copy.deepcopy(base)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge(merged.get(key), value)
    return merged


def base_patient() -> dict[str, Any]:
    return json.loads((DATA / "base_patient.json").read_text())


def variants() -> list[dict[str, Any]]:
    return json.loads((DATA / "patients.json").read_text())["patients"]


def compose(variant: dict[str, Any] | None = None, reference: date = TODAY) -> dict[str, Any]:
    """The base patient with a variant's changes: {"resources": {key: patch|null}, "forms": {form: patch|null}}."""
    patient = base_patient()
    variant = variant or {}
    resources = merge(patient["resources"], variant.get("resources", {}))
    forms = merge(patient["forms"], variant.get("forms", {}))
    return materialise({"resources": resources, "forms": forms}, reference, uuid.uuid4().hex[:12])


# -- the FHIR door + the eCRF door over HTTP ---------------------------------------------------------


def transaction(resources: dict[str, dict[str, Any]]) -> tuple[dict[str, Any], dict[str, str]]:
    urls = {key: f"urn:uuid:{uuid.uuid4()}" for key in resources}
    entries = []
    for key, resource in resources.items():
        content = resolve_references(resource, urls)
        entries.append(
            {"fullUrl": urls[key], "resource": content, "request": {"method": "POST", "url": resource["resourceType"]}}
        )
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}, urls


def push(http, patient: dict[str, Any]) -> str:
    """POST the resources as one transaction, then PUT the form entries; returns the subject id."""
    bundle, _ = transaction(patient["resources"])
    response = http.post("/fhir", json=bundle, headers={"Content-Type": "application/fhir+json"})
    assert response.status_code == 200, response.text
    subject_id = None
    for entry, sent in zip(response.json()["entry"], bundle["entry"], strict=True):
        if sent["resource"]["resourceType"] == "ResearchSubject":
            subject_id = entry["response"]["location"].split("/")[1]
    assert subject_id, "the bundle needs a ResearchSubject"
    for form_id, entry in patient["forms"].items():
        save_form(http, subject_id, form_id, entry)
    return subject_id


def save_form(http, subject_id: str, form_id: str, entry: dict[str, Any], *, expect: int | None = None):
    body = {"items": entry["items"], "visit_date": entry["visit_date"]}
    if entry.get("reason"):
        body["reason"] = entry["reason"]
    response = http.put(f"/api/v1/subjects/{subject_id}/forms/{form_id}/{entry['visit']}", json=body)
    if expect is None:
        assert response.status_code in (200, 201), response.text
    else:
        assert response.status_code == expect, response.text
    return response


def resolve_references(node: Any, targets: dict[str, str]) -> Any:
    if isinstance(node, dict):
        return {key: resolve_references(value, targets) for key, value in node.items()}
    if isinstance(node, list):
        return [resolve_references(value, targets) for value in node]
    if isinstance(node, str) and node.startswith("@") and node[1:] in targets:
        return targets[node[1:]]
    return node
