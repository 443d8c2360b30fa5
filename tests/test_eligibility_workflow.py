"""Eligibility as derived state over HTTP: recomputed by every write, mirrored in ResearchSubject.status,
audited, frozen at randomisation, listed in the screening log, scoped by site."""

from sqlmodel import Session, select

from ecrf.audit.models import AuditEntry
from tests.crf_support import VALID, day, enrol, save
from tests.eligibility_support import TODAY, compose, push, save_form, shift


def _eligibility(http, subject_id):
    response = http.get(f"/api/v1/subjects/{subject_id}/eligibility")
    assert response.status_code == 200, response.text
    return response.json()


def _audit(server, patient_id, action):
    with Session(server.runtime.engine) as session:
        return session.exec(
            select(AuditEntry)
            .where(AuditEntry.patient_id == patient_id, AuditEntry.action == action)
            .order_by(AuditEntry.seq)
        ).all()


def _patient_of(http, subject_id):
    return http.get(f"/api/v1/subjects/{subject_id}").json()["patient_id"]


def _lab(patient_id, loinc, value, unit, when):
    return {
        "resourceType": "Observation",
        "status": "final",
        "subject": {"reference": f"Patient/{patient_id}"},
        "code": {"coding": [{"system": "http://loinc.org", "code": loinc}]},
        "effectiveDateTime": when,
        "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit},
    }


def test_every_write_recomputes_status_subject_status_and_audit(server):
    patient = compose({"forms": {"history": None}})
    with server.client("coordinator", "S01") as http:
        subject_id = push(http, patient)
        patient_id = _patient_of(http, subject_id)
        assert _eligibility(http, subject_id)["status"] == "incomplete"
        assert http.get(f"/api/v1/subjects/{subject_id}").json()["status"] == "candidate"

        save_form(http, subject_id, "history", compose()["forms"]["history"])
        assert _eligibility(http, subject_id)["status"] == "eligible"
        assert http.get(f"/api/v1/subjects/{subject_id}").json()["status"] == "eligible"

        low = http.post(
            "/fhir/Observation",
            json=_lab(patient_id, "777-3", 40, "10*9/L", shift(TODAY, "R-1d").isoformat()),
            headers={"Content-Type": "application/fhir+json"},
        )
        assert low.status_code == 201, low.text
        view = _eligibility(http, subject_id)
        assert view["status"] == "ineligible"
        assert http.get(f"/api/v1/subjects/{subject_id}").json()["status"] == "ineligible"

        assert http.delete(
            f"/fhir/{low.headers['Location'].split('/_history')[0].removeprefix('/fhir/')}"
        ).status_code in (200, 204)
        assert _eligibility(http, subject_id)["status"] == "eligible"
        assert http.get(f"/api/v1/subjects/{subject_id}").json()["status"] == "eligible"

    changes = [(e.old_value, e.new_value) for e in _audit(server, patient_id, "eligibility.status")]
    assert changes == [
        (None, "incomplete"),
        ("incomplete", "eligible"),
        ("eligible", "ineligible"),
        ("ineligible", "eligible"),
    ]
    blocked = _audit(server, patient_id, "eligibility.status")[2]
    assert "I08_platelets" in blocked.reason and blocked.resource == f"ResearchSubject/{subject_id}"


def test_screening_log_lists_status_and_blocking_criteria_by_site(server):
    with server.client("coordinator", "S01") as http:
        ineligible = push(http, compose({"resources": {"ecog": {"valueInteger": 3}}}))
        eligible = push(http, compose())
    s02_patient = compose()
    s02_patient["resources"]["patient"]["identifier"][0]["system"] = "urn:oid:2.16.840.1.113883.3.9999.2"
    with server.client("coordinator", "S02") as http:
        other_site = push(http, s02_patient)
        assert http.get(f"/api/v1/subjects/{ineligible}/eligibility").status_code == 404
        own = http.get("/api/v1/eligibility", params={"limit": 500}).json()
        assert other_site in {row["subject"] for row in own["items"]}
        assert not {ineligible, eligible} & {row["subject"] for row in own["items"]}

    with server.client("coordinator", "S01") as http:
        log = http.get("/api/v1/eligibility", params={"status": "ineligible", "limit": 500}).json()
        rows = {row["subject"]: row for row in log["items"]}
        assert ineligible in rows and eligible not in rows and other_site not in rows
        assert all(row["site"] == "S01" and row["status"] == "ineligible" for row in log["items"])
        assert {b["id"] for b in rows[ineligible]["blocking"]} == {"I05_ecog_0_1", "E03_ecog_2_plus"}
        assert http.get("/api/v1/eligibility", params={"site": "S02"}).json()["total"] == 0

        first = http.get("/api/v1/eligibility", params={"limit": 1}).json()
        second = http.get("/api/v1/eligibility", params={"limit": 1, "offset": 1}).json()
        assert first["total"] >= 2 and first["items"][0]["subject"] != second["items"][0]["subject"]
        assert http.get("/api/v1/eligibility", params={"status": "maybe"}).status_code == 422

    with server.client("data_manager") as http:
        everyone = {row["subject"] for row in http.get("/api/v1/eligibility", params={"limit": 500}).json()["items"]}
        assert {ineligible, eligible, other_site} <= everyone
    with server.client("sponsor") as http:
        assert http.get("/api/v1/eligibility").status_code == 403
        assert http.get(f"/api/v1/subjects/{eligible}/eligibility").status_code == 403


def test_randomisation_needs_eligible_and_freezes_the_result(server):
    randomisation = {
        "visit": "SCR",
        "visit_date": TODAY.isoformat(),
        "items": {"arm": "PD1_SORA", "randomisation_date": TODAY.isoformat()},
    }
    with server.client("investigator", "S01") as http:
        blocked = push(
            http,
            compose(
                {
                    "resources": {
                        "bclc_stage": {
                            "valueCodeableConcept": {
                                "coding": [
                                    {"system": "http://example.org/fhir/CodeSystem/nct04163237", "code": "bclc-D"}
                                ]
                            }
                        }
                    }
                }
            ),
        )
        # v2: the system allocates (POST .../randomise); a typed arm is refused as derived
        assert save_form(http, blocked, "randomisation", randomisation, expect=422)
        refused = http.post(f"/api/v1/subjects/{blocked}/randomise")
        assert refused.status_code == 409
        assert {(e["item"], e["rule"]) for e in refused.json()["errors"]} == {("I03_bclc_abc", "not_met")}
        assert _eligibility(http, blocked)["frozen"] is False

        subject_id = push(http, compose())
        patient_id = _patient_of(http, subject_id)
        assert http.post(f"/api/v1/subjects/{subject_id}/randomise").status_code == 201
        accepted = http.get(f"/api/v1/subjects/{subject_id}/forms/randomisation/SCR").json()
        assert accepted["eligibility_basis"]["overall"] == "eligible"
        frozen = _eligibility(http, subject_id)
        assert frozen["frozen"] is True and frozen["status"] == "eligible"
        assert frozen["changed_since_randomisation"] is False
        assert frozen["reference_date"] == TODAY.isoformat() and frozen["randomised"] is True

        response = http.post(
            "/fhir/Observation",
            json=_lab(patient_id, "777-3", 40, "10*9/L", TODAY.isoformat()),
            headers={"Content-Type": "application/fhir+json"},
        )
        assert response.status_code == 201
        later = _eligibility(http, subject_id)
        assert later["frozen"] is True and later["status"] == "eligible"
        assert later["changed_since_randomisation"] is True and later["live_status"] == "ineligible"
        assert {c["id"]: c["result"] for c in later["live"]["criteria"]}["I08_platelets"] == "not_met"
        assert http.get(f"/api/v1/subjects/{subject_id}").json()["status"] == "on-study"  # v2: allocated
        row = next(
            r
            for r in http.get("/api/v1/eligibility", params={"limit": 500}).json()["items"]
            if r["subject"] == subject_id
        )
        assert (row["status"], row["live_status"], row["frozen"], row["changed_since_randomisation"]) == (
            "eligible",
            "ineligible",
            True,
            True,
        )
    flags = _audit(server, patient_id, "eligibility.changed_since_randomisation")
    assert [(e.old_value, e.new_value) for e in flags] == [("false", "true")]


def test_a_subject_entered_only_through_the_ecrf_door(server):
    """Enrolled with POST /subjects, every form PUT; labs 79 days old are out of today's window. Version 1
    let a randomisation dated the day after the labs make that day R; version 2 does not back-date (9.7):
    the typed date is refused as derived, and the allocation, R being the site's date, lists the criteria
    that the old labs leave unknown."""
    with server.client("investigator", "S01") as http:
        subject = enrol(http)
        for form_id in ("surgery", "demographics", "baseline", "labs", "pathology", "afp", "history"):
            assert save(http, subject["id"], form_id).status_code in (200, 201)
        today = _eligibility(http, subject["id"])
        assert today["status"] == "incomplete"
        assert {m["item"] for m in today["missing"] if m["criterion"] == "I08_platelets"} == {"platelets"}
        typed = save(http, subject["id"], "randomisation")
        assert typed.status_code == 422
        assert {(e["item"], e["rule"]) for e in typed.json()["errors"]} == {
            ("arm", "derived"),
            ("randomisation_date", "derived"),
        }
        refused = http.post(f"/api/v1/subjects/{subject['id']}/randomise")
        assert refused.status_code == 409
        assert "I08_platelets" in {e["item"] for e in refused.json()["errors"]}
        view = _eligibility(http, subject["id"])
        assert not view["frozen"] and view["status"] == "incomplete"
        assert VALID["randomisation"][2]["randomisation_date"] == day(22)
