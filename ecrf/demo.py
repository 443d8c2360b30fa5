"""`ecrf demo`: three synthetic subjects at S01, one eligible, one ineligible, one incomplete, made through the
public HTTP API and one EHR Bundle; it prints for each what to open and why it has its status.

With a URL it talks to that server; without one it runs the app in process on the configured database.
Every value goes through the same door a browser would use, so the demo also exercises the edit checks.
"""

import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from ecrf.auth.tokens import issue_dev_token
from ecrf.config import Settings
from ecrf.responses import FHIR_PREFIX

SITE = "S01"

# (sex, birth date, weight, hemoglobin, creatinine, bilirubin, histology, margin, bclc): varied on purpose,
# including non-canonical units that the server converts.
PROFILES = [
    ("male", "1968-04-12", {"value": 72, "unit": "kg"}, {"value": 13.8, "unit": "g/dL"}, 76, 14.0, "8170/3", "R1", "B"),
    (
        "female",
        "1975-09-30",
        {"value": 128, "unit": "[lb_av]"},
        121,
        {"value": 0.9, "unit": "mg/dL"},
        18.5,
        "8172/3",
        "R0",
        "A",
    ),
    ("male", "1959-01-07", 81.5, 142, 95, {"value": 1.1, "unit": "mg/dL"}, "8170/3", "R0", "C"),
]


def _entries(profile: tuple, surgery: datetime) -> list[tuple[str, str, str, dict[str, Any]]]:
    sex, birth, weight, hemoglobin, creatinine, bilirubin, histology, margin, bclc = profile

    def day(offset: int) -> str:
        return (surgery + timedelta(days=offset)).date().isoformat()

    return [
        (
            "surgery",
            "PREOP",
            day(0),
            {"surgery_date": day(0), "resection_type": "anatomical", "visible_tumour_thrombus": False},
        ),
        (
            "baseline",
            "PREOP",
            day(-3),
            {
                "ecog": 1 if bclc == "C" else 0,
                "child_pugh_class": "A",
                "ascites": "none",
                "encephalopathy": "none",
                "bclc_stage": bclc,
                "distant_metastasis": False,
                "regional_lymph_nodes": bclc == "C",
                "prior_antitumour_therapy": False,
                "recurrent_hcc": False,
            },
        ),
        (
            "demographics",
            "SCR",
            day(20),
            {
                "birth_date": birth,
                "sex": sex,
                "consent_date": day(18),
                "weight": weight,
                "height": 168,
                "wocbp": False,
                "tissue_consent": True,
            },
        ),
        (
            "labs",
            "SCR",
            day(20),
            {
                "anc": 3.1,
                "platelets": {"value": 185, "unit": "10*3/uL"},
                "hemoglobin": hemoglobin,
                "creatinine": creatinine,
                "creatinine_uln": 97,
                "ast": 32,
                "ast_uln": 40,
                "alt": 41,
                "alt_uln": 50,
                "bilirubin": bilirubin,
                "bilirubin_uln": 21,
                "albumin": 41,
                "inr": 1.05,
                "inr_uln": 1.2,
                "aptt": 31,
                "aptt_uln": 36,
            },
        ),
        (
            "pathology",
            "SCR",
            day(20),
            {
                "histology": histology,
                "margin_status": margin,
                "closest_margin": {"value": 0.4, "unit": "cm"},
                "tumour_size": 5.5,
                "tumour_count": 1,
                "microvascular_invasion": "M1",
                "pvtt_extent": "Vp1",
                "bile_duct_invasion": False,
                "capsule_complete": True,
                "lymph_node_metastasis": False,
            },
        ),
    ]


@contextmanager
def _client(settings: Settings, url: str | None, role: str = "investigator") -> Iterator[httpx.Client]:
    token = issue_dev_token(settings, role=role, sites=[SITE], sub=f"demo-{role}")
    headers = {"Authorization": f"Bearer {token}"}
    if url:
        with httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=60) as client:
            yield client
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
        from starlette.testclient import TestClient

    from ecrf.app import create_app
    from ecrf.runtime import Runtime
    from ecrf.store.migrate import upgrade

    runtime = Runtime.start(settings)
    upgrade(runtime.engine)
    try:
        with TestClient(create_app(runtime=runtime), headers=headers) as client:
            yield client
    finally:
        runtime.engine.dispose()


# what each subject is for, and what the demo makes of it
PLAN = [
    ("eligible", "every form filled in the eCRF, medical history included"),
    (
        "ineligible",
        "every form filled, then the hospital's EHR pushes a newer platelet count of 42 x10^9/L "
        "(one FHIR transaction Bundle)",
    ),
    ("incomplete", "the medical history form is left empty, so the exclusions it answers stay unknown"),
]
HISTORY = {
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
}
LOW_PLATELETS = ("777-3", 42, "10*3/uL")  # LOINC platelets, below inclusion I08's 50


def _ehr_bundle(mrn_system: str, mrn: str, when: str) -> dict[str, Any]:
    """What a hospital EHR sends: its Patient (matched to the enrolled subject by MRN) and a lab result that
    refers to it by urn:uuid."""
    patient_url = f"urn:uuid:{uuid.uuid4()}"
    code, value, unit = LOW_PLATELETS
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": patient_url,
                "resource": {"resourceType": "Patient", "identifier": [{"system": mrn_system, "value": mrn}]},
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "category": [
                        {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                    "code": "laboratory",
                                }
                            ]
                        }
                    ],
                    "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
                    "subject": {"reference": patient_url},
                    "effectiveDateTime": when,
                    "valueQuantity": {
                        "value": value,
                        "unit": unit,
                        "system": "http://unitsofmeasure.org",
                        "code": unit,
                    },
                },
                "request": {"method": "POST", "url": "Observation"},
            },
        ],
    }


def _why(eligibility: dict[str, Any]) -> list[str]:
    """The reasons behind a status, in the engine's own words."""
    status = eligibility["status"]
    criteria = eligibility.get("criteria", [])
    if status == "eligible":
        return [
            f"every inclusion criterion met and no exclusion applies ({len(criteria)} criteria, "
            f"R = {eligibility.get('reference_date')})"
        ]
    if status == "ineligible":
        blocking = [
            c
            for c in criteria
            if (c.get("kind") == "inclusion" and c["result"] == "not_met")
            or (c.get("kind") == "exclusion" and c["result"] == "met")
        ]
        blocking = blocking or [c for c in criteria if c["result"] != "unknown"][:1]
        return [f"{c.get('id') or c.get('criterion')} {c['result']}: {c.get('reason')}" for c in blocking]
    unknown = [c for c in criteria if c["result"] == "unknown"]
    lines = [f"{len(unknown)} criteria unknown: " + ", ".join(str(c.get("id") or c.get("criterion")) for c in unknown)]
    forms = sorted({(m.get("form"), ",".join(m.get("visits") or [])) for m in eligibility.get("missing", [])})
    if forms:
        lines.append("to complete: fill " + "; ".join(f"form {f} at {v}" for f, v in forms))
    return lines


def run_demo(settings: Settings, url: str | None) -> int:
    """Enrol three synthetic subjects at S01 through the API (and one EHR Bundle) so that one is eligible, one
    ineligible and one incomplete; print for each what to open and why it has its status. 0 when every call
    succeeded and each subject has the status it was made for."""
    surgery = datetime.now(UTC) - timedelta(days=30)
    failures = 0
    base = (url or "http://127.0.0.1:8000").rstrip("/")
    with _client(settings, url) as http, _client(settings, url, role="ehr") as ehr:
        print(f"demo: {url or 'in process, database ' + settings.database_url.split('@')[-1]}", flush=True)
        study = http.get("/api/v1/study").json()
        mrn_system = next(site["mrn_system"] for site in study["sites"] if site["id"] == SITE)
        for number, ((intent, how), profile) in enumerate(zip(PLAN, PROFILES, strict=True), start=1):
            mrn = f"DEMO-{uuid.uuid4().hex[:8].upper()}"
            response = http.post(
                "/api/v1/subjects",
                json={"site": SITE, "mrn": mrn, "consent_date": (surgery + timedelta(days=18)).date().isoformat()},
            )
            if response.status_code != 201:
                print(f"  subject {number}: enrolment failed {response.status_code}: {response.text}", flush=True)
                failures += 1
                continue
            subject = response.json()
            print(f"  subject {number} ({intent}): {subject['id']} (MRN {subject.get('mrn')}): {how}", flush=True)
            entries = _entries(profile, surgery)
            if intent != "incomplete":
                entries.append(("history", "SCR", (surgery + timedelta(days=20)).date().isoformat(), dict(HISTORY)))
            for form_id, visit_id, visit_date, items in entries:
                saved = http.put(
                    f"/api/v1/subjects/{subject['id']}/forms/{form_id}/{visit_id}",
                    json={"visit_date": visit_date, "items": items},
                )
                if saved.status_code not in (200, 201):
                    failures += 1
                    print(f"    {form_id:<12} {visit_id:<5} FAILED {saved.status_code}: {saved.text}", flush=True)
                    continue
                body = saved.json()
                notes = "; ".join(w["message"] for w in body.get("warnings", []))
                print(
                    f"    {form_id:<12} {visit_id:<5} {body['status']:<9} v{body['version']}"
                    f"{'  warnings: ' + notes if notes else ''}",
                    flush=True,
                )
            if intent == "ineligible":
                when = (surgery + timedelta(days=25)).replace(microsecond=0).isoformat()
                pushed = ehr.post(
                    FHIR_PREFIX,
                    json=_ehr_bundle(mrn_system, mrn, when),
                    headers={"Content-Type": "application/fhir+json"},
                )
                if pushed.status_code != 200:
                    failures += 1
                    print(f"    EHR Bundle FAILED {pushed.status_code}: {pushed.text}", flush=True)
                else:
                    print(
                        f"    EHR Bundle: Patient matched by MRN, platelets {LOW_PLATELETS[1]} "
                        f"{LOW_PLATELETS[2]} on {when[:10]} stored",
                        flush=True,
                    )
            eligibility = http.get(f"/api/v1/subjects/{subject['id']}/eligibility").json()
            status = eligibility.get("status")
            if status != intent:
                failures += 1
            print(f"    status: {status}{'' if status == intent else f' (expected {intent})'}", flush=True)
            for line in _why(eligibility):
                print(f"      why: {line}", flush=True)
            print(
                f"    open: {base}/api/v1/subjects/{subject['id']}/eligibility\n"
                f"          {base}/api/v1/subjects/{subject['id']}\n"
                f"          {base}/api/v1/subjects/{subject['id']}/forms/labs/SCR\n"
                f"          {base}/fhir/Patient/{subject['id']}",
                flush=True,
            )
    print(
        f"demo: open them with a token from `ecrf token --role investigator --site {SITE}` "
        f"(Authorization: Bearer ...), or try them in {base}/docs"
        f"{'' if url else ' (in process: run `ecrf serve` on the same database first)'}",
        flush=True,
    )
    print("demo: done" if not failures else f"demo: {failures} call(s) failed", flush=True)
    return 0 if not failures else 1
