"""Shared helpers of the CDISC export tests: kick off an ODM or SDTM export, wait, download; the schemas."""

import os
import uuid
from datetime import timedelta
from pathlib import Path

import odmlib
import pytest
from lxml import etree

from tests.crf_support import save, valid_entries
from tests.eligibility_support import TODAY
from tests.test_export_protocol import ASYNC, wait_for_manifest

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "cdisc"
PACKAGED = Path(odmlib.__file__).parent / "schemas"
DATASET_JSON = Path(__file__).parent / "data" / "cdisc"  # copies of ../shared/cdisc/dataset-json (MIT, CDISC)


def odm_schema() -> etree.XMLSchema:
    """The ODM 1.3.2 XSD odmlib ships: always there, so the ODM tests run in a fresh clone."""
    return etree.XMLSchema(etree.parse(str(PACKAGED / "odm" / "1.3.2" / "ODM1-3-2.xsd")))


def shared_odm_schema() -> etree.XMLSchema:
    """The ODM 1.3.2 XSD of ../shared/cdisc, in addition: skipped when ../shared is not beside the checkout,
    a failure under CI=true (CI has it)."""
    shared = SHARED / "odm-1.3.2" / "ODM1-3-2.xsd"
    if not shared.is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must have {shared}")
        pytest.skip(f"needs {shared} (../shared/cdisc, present in CI)")
    return etree.XMLSchema(etree.parse(str(shared)))


def define_schema() -> etree.XMLSchema:
    return etree.XMLSchema(etree.parse(str(PACKAGED / "define" / "2.1" / "define2-1-0.xsd")))


def cdisc_export(http, kind: str, **params) -> dict:
    response = http.get(f"/api/v1/exports/{kind}", params=params, headers=ASYNC)
    assert response.status_code == 202, response.text
    return wait_for_manifest(http, response.headers["Content-Location"])


def files(http, manifest: dict) -> dict[str, bytes]:
    out = {}
    for entry in manifest["output"]:
        response = http.get(entry["url"])
        assert response.status_code == 200, response.text
        out[entry["url"].rsplit("/", 1)[1]] = response.content
    return out


# A subject randomised by the system (issue 14) is randomised today (R = the S01 site's date), so its timeline is
# VALID's shifted to put day 22 after surgery on the site's date: eligible then, as VALID's subject is at day 22.
RANDOMISED_SURGERY = TODAY - timedelta(days=22)
RANDOMISED = valid_entries(RANDOMISED_SURGERY)
ELIGIBLE_FORMS = ("surgery", "baseline", "demographics", "pathology", "afp", "history", "ctc", "labs")


def on_day(offset: int) -> str:
    """A date of the randomised subject's timeline: `offset` days after its surgery."""
    return (RANDOMISED_SURGERY + timedelta(days=offset)).isoformat()


def randomised_subject(
    http,
    *,
    mrn: str | None = None,
    changes: dict | None = None,
    reasons: dict | None = None,
    forms: tuple[str, ...] = ELIGIBLE_FORMS,
) -> tuple[dict, dict]:
    """Enrol at S01, enter every form eligibility needs (`changes`: form -> items instead), then randomise through
    the action (POST .../randomise). Answers the subject and its allocation."""
    response = http.post(
        "/api/v1/subjects", json={"site": "S01", "mrn": mrn or uuid.uuid4().hex[:12], "consent_date": on_day(14)}
    )
    assert response.status_code == 201, response.text
    subject = response.json()
    for form in forms:
        _, visit_date, items = RANDOMISED[form]
        saved = save(http, subject["id"], form, (changes or {}).get(form, items), visit_date=visit_date)
        assert saved.status_code == 201, (form, saved.text)
    allocation = http.post(f"/api/v1/subjects/{subject['id']}/randomise")
    assert allocation.status_code == 201, allocation.text
    return subject, allocation.json()


def log_entry(http, subject_id: str, form_id: str, items: dict, *, withdraw: str | None = None) -> dict:
    """An entry of a log form (adverse_event, conmed); withdrawn (entered in error) with `withdraw` as reason."""
    url = f"/api/v1/subjects/{subject_id}/forms/{form_id}/entries"
    response = http.post(url, json={"items": items})
    assert response.status_code == 201, response.text
    entry = response.json()
    if withdraw is not None:
        withdrawn = http.post(f"{url}/{entry['id']}/withdraw", json={"reason": withdraw})
        assert withdrawn.status_code == 200, withdrawn.text
    return entry


def adverse_event(verbatim: str, **changes) -> dict:
    return {
        "ctcae_term": "hand_foot_skin_reaction",
        "term_verbatim": verbatim,
        "onset_date": on_day(15),
        "resolution_date": on_day(20),
        "grade": 3,
        "serious": True,
        "seriousness_criteria": ["hospitalisation"],
        "related_pd1": "not_related",
        "related_sorafenib": "related",
        "immune_related": False,
        "action_taken": "dose_reduced",
        "outcome": "recovered",
        **changes,
    }


def medication(name: str, indication: str, **changes) -> dict:
    return {
        "medication": name,
        "atc": "N",
        "indication": indication,
        "start_date": on_day(16),
        "ongoing": True,
        **changes,
    }


def exposure(**changes) -> dict:
    """An entry of the exposure log: a PD-1 infusion on the randomisation day unless changed."""
    return {
        "drug": "pd1",
        "start_date": on_day(22),
        "dose": {"value": 200, "unit": "mg"},
        "route": "iv",
        "frequency": "q3w",
        "modification": "none",
        **changes,
    }
