"""Shared helpers of the eCRF door tests: enrol a subject, build valid entries, dates on the schedule."""

import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

TODAY = datetime.now(UTC).date()
SURGERY = TODAY - timedelta(days=100)  # so every visit up to M3 lies in the past


def day(offset: int) -> str:
    return (SURGERY + timedelta(days=offset)).isoformat()


def enrol(http, site: str = "S01", consent: date | None = None) -> dict[str, Any]:
    response = http.post(
        "/api/v1/subjects",
        json={
            "site": site,
            "mrn": uuid.uuid4().hex[:12],
            "consent_date": (consent or SURGERY + timedelta(days=14)).isoformat(),
        },
    )
    assert response.status_code == 201, response.text
    return response.json()


def path(subject_id: str, form_id: str, visit_id: str) -> str:
    return f"/api/v1/subjects/{subject_id}/forms/{form_id}/{visit_id}"


def valid_entries(surgery: date) -> dict[str, tuple[str, str | None, dict[str, Any]]]:
    """Valid entries of every form for a subject operated on `surgery` (VALID: SURGERY, 100 days ago; a
    subject randomised by the system today is operated on 22 days before the site's date)."""

    def day(offset: int) -> str:
        return (surgery + timedelta(days=offset)).isoformat()

    return {
        # form -> (visit, visit date, items)
        "surgery": (
            "PREOP",
            None,
            {"surgery_date": day(0), "resection_type": "anatomical", "visible_tumour_thrombus": False},
        ),
        "demographics": (
            "SCR",
            day(21),
            {
                "birth_date": "1970-05-01",
                "sex": "female",
                "consent_date": day(14),
                "weight": {"value": 60, "unit": "kg"},
                "height": 165,
                "wocbp": True,
                "contraception_agreed": True,
                "tissue_consent": True,
            },
        ),
        "baseline": (
            "PREOP",
            day(-3),
            {
                "ecog": 1,
                "child_pugh_class": "A",
                "ascites": "none",
                "encephalopathy": "none",
                "bclc_stage": "B",
                "distant_metastasis": False,
                "regional_lymph_nodes": False,
                "prior_antitumour_therapy": False,
                "recurrent_hcc": False,
            },
        ),
        "labs": (
            "SCR",
            day(21),
            {
                "anc": 2.5,
                "platelets": 180,
                "hemoglobin": {"value": 13.2, "unit": "g/dL"},
                "creatinine": 80,
                "creatinine_uln": 97,
                "crcl": 95,
                "ast": 30,
                "ast_uln": 40,
                "alt": 35,
                "alt_uln": 50,
                "bilirubin": 15,
                "bilirubin_uln": 21,
                "albumin": 40,
                "inr": 1.0,
                "inr_uln": 1.2,
                "aptt": 30,
                "aptt_uln": 36,
            },
        ),
        "pathology": (
            "SCR",
            day(21),
            {
                "histology": "8170/3",
                "margin_status": "R1",
                "closest_margin": 5,
                "tumour_size": 4.2,
                "tumour_count": 1,
                "microvascular_invasion": "M1",
                "pvtt_extent": "Vp2",
                "bile_duct_invasion": False,
                "capsule_complete": True,
                "lymph_node_metastasis": False,
            },
        ),
        "afp": ("SCR", day(21), {"afp": 250}),
        "ctc": ("POD7", day(7), {"ctc_count": 3, "blood_volume": 5, "method": "neg_enrichment_tpcr"}),
        "history": (
            "SCR",
            day(21),
            {
                "autoimmune_disease": False,
                "chronic_kidney_disease": False,
                "congestive_heart_failure": False,
                "uncontrolled_diabetes": False,
                "uncontrolled_hypertension": False,
                "uncontrolled_infection": False,
                "neuropathy_grade2_plus": False,
                "significant_abnormality": False,
                "steroid_gt10mg_14d": False,
                "immunosuppressant_14d": False,
                "anticoagulant_prophylaxis": False,
                "antitumour_therapy_1m_postop": False,
            },
        ),
        "randomisation": ("SCR", day(22), {"arm": "SORA", "randomisation_date": day(22)}),
    }


VALID = valid_entries(SURGERY)

# Valid entries of the log forms with quantities (entries belong to no visit): form -> items
LOG_VALID: dict[str, dict[str, Any]] = {
    "exposure": {
        "drug": "sorafenib",
        "start_date": VALID["randomisation"][1],
        "dose": 400,
        "route": "oral",
        "frequency": "bid",
        "modification": "none",
    },
}


def save(
    http,
    subject_id: str,
    form_id: str,
    items: dict[str, Any] | None = None,
    *,
    visit: str | None = None,
    visit_date: str | None = None,
    reason: str | None = None,
    headers: dict[str, str] | None = None,
):
    default_visit, default_date, default_items = VALID[form_id]
    body: dict[str, Any] = {"items": default_items if items is None else items}
    if (visit_date or default_date) is not None:
        body["visit_date"] = visit_date or default_date
    if reason is not None:
        body["reason"] = reason
    return http.put(path(subject_id, form_id, visit or default_visit), json=body, headers=headers or {})


def errors_of(response) -> set[tuple[str, str]]:
    assert response.status_code == 422, response.text
    body = response.json()
    assert set(body) == {"detail", "errors"} and body["detail"]
    for error in body["errors"]:
        assert set(error) == {"item", "rule", "message"} and error["message"]
    return {(error["item"], error["rule"]) for error in body["errors"]}


def entered_randomisation(
    server, subject_id: str, site: str = "S01", items: dict[str, Any] | None = None, sub: str = "dev-investigator"
):
    """A version-1 allocation: the arm typed into the randomisation form. Version 2 refuses that through the
    API (422, rule `derived`: the system allocates, POST .../randomise), but allocations of version 1 stay as
    they are (`method: entered`, CRF-SPEC 6); tests that need one write it through the form service, with the
    eligibility gate and every check, as version 1's door did. Answers the form view."""
    from ecrf.auth.actor import Actor
    from ecrf.crf.service import save_form
    from ecrf.store.unit import writing

    visit, visit_date, default_items = VALID["randomisation"]
    actor = Actor(sub=sub, roles=frozenset({"investigator"}), sites=frozenset({site}))
    with writing(server.runtime, actor) as store:
        result = save_form(
            server.runtime,
            store,
            subject_id,
            "randomisation",
            visit,
            items=default_items if items is None else items,
            visit_date=date.fromisoformat(visit_date),
            reason=None,
            if_match=None,
            allocated=True,
        )
    return result.view
