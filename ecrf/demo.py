"""`ecrf demo`: three synthetic subjects at S01, enrolled and filled through the public HTTP API.

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

SITE = "S01"

# (sex, birth date, weight, hemoglobin, creatinine, bilirubin, histology, margin, bclc): varied on purpose,
# including non-canonical units that the server converts.
PROFILES = [
    ("male", "1968-04-12", {"value": 72, "unit": "kg"}, {"value": 13.8, "unit": "g/dL"}, 76, 14.0, "8170/3", "R1", "B"),
    ("female", "1975-09-30", {"value": 128, "unit": "[lb_av]"}, 121, {"value": 0.9, "unit": "mg/dL"}, 18.5, "8172/3", "R0", "A"),
    ("male", "1959-01-07", 81.5, 142, 95, {"value": 1.1, "unit": "mg/dL"}, "8170/3", "R0", "C"),
]


def _entries(profile: tuple, surgery: datetime) -> list[tuple[str, str, str, dict[str, Any]]]:
    sex, birth, weight, hemoglobin, creatinine, bilirubin, histology, margin, bclc = profile

    def day(offset: int) -> str:
        return (surgery + timedelta(days=offset)).date().isoformat()

    return [
        ("surgery", "PREOP", day(0), {"surgery_date": day(0), "resection_type": "anatomical", "visible_tumour_thrombus": False}),
        ("baseline", "PREOP", day(-3), {
            "ecog": 1 if bclc == "C" else 0, "child_pugh_class": "A", "ascites": "none", "encephalopathy": "none",
            "bclc_stage": bclc, "distant_metastasis": False, "regional_lymph_nodes": bclc == "C",
            "prior_antitumour_therapy": False, "recurrent_hcc": False}),
        ("demographics", "SCR", day(20), {
            "birth_date": birth, "sex": sex, "consent_date": day(18), "weight": weight, "height": 168,
            "wocbp": False, "tissue_consent": True}),
        ("labs", "SCR", day(20), {
            "anc": 3.1, "platelets": {"value": 185, "unit": "10*3/uL"}, "hemoglobin": hemoglobin,
            "creatinine": creatinine, "creatinine_uln": 97, "ast": 32, "ast_uln": 40, "alt": 41, "alt_uln": 50,
            "bilirubin": bilirubin, "bilirubin_uln": 21, "albumin": 41, "inr": 1.05, "inr_uln": 1.2, "aptt": 31,
            "aptt_uln": 36}),
        ("pathology", "SCR", day(20), {
            "histology": histology, "margin_status": margin, "closest_margin": {"value": 0.4, "unit": "cm"},
            "tumour_size": 5.5, "tumour_count": 1, "microvascular_invasion": "M1", "pvtt_extent": "Vp1",
            "bile_duct_invasion": False, "capsule_complete": True, "lymph_node_metastasis": False}),
    ]


@contextmanager
def _client(settings: Settings, url: str | None) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {issue_dev_token(settings, role='investigator', sites=[SITE], sub='demo')}"}
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


def run_demo(settings: Settings, url: str | None) -> int:
    """Enrol three synthetic subjects at S01 and fill five forms each; 0 when every call succeeded."""
    surgery = datetime.now(UTC) - timedelta(days=30)
    failures = 0
    with _client(settings, url) as http:
        print(f"demo: {url or 'in process, database ' + settings.database_url.split('@')[-1]}", flush=True)
        for number, profile in enumerate(PROFILES, start=1):
            response = http.post("/api/v1/subjects", json={
                "site": SITE, "mrn": f"DEMO-{uuid.uuid4().hex[:8].upper()}",
                "consent_date": (surgery + timedelta(days=18)).date().isoformat()})
            if response.status_code != 201:
                print(f"  subject {number}: enrolment failed {response.status_code}: {response.text}", flush=True)
                failures += 1
                continue
            subject = response.json()
            print(f"  subject {number}: {subject['id']} (MRN {subject.get('mrn')})", flush=True)
            for form_id, visit_id, visit_date, items in _entries(profile, surgery):
                saved = http.put(f"/api/v1/subjects/{subject['id']}/forms/{form_id}/{visit_id}",
                                 json={"visit_date": visit_date, "items": items})
                if saved.status_code not in (200, 201):
                    failures += 1
                    print(f"    {form_id:<12} {visit_id:<5} FAILED {saved.status_code}: {saved.text}", flush=True)
                    continue
                body = saved.json()
                notes = "; ".join(w["message"] for w in body.get("warnings", []))
                print(f"    {form_id:<12} {visit_id:<5} {body['status']:<9} v{body['version']}"
                      f"{'  warnings: ' + notes if notes else ''}", flush=True)
    print("demo: done" if not failures else f"demo: {failures} call(s) failed", flush=True)
    return 0 if not failures else 1
