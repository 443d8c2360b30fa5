"""The SAE reporting clock (CRF-SPEC 7.2) through real HTTP on SQLite and PostgreSQL, with the server's clock
set by the test (never a sleep): awareness at the site's first save as serious, due within 24 hours, overdue
after, the investigator's report, the open-SAE list per site and counts in the aggregate report."""

from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest
from crf_support import day, enrol, save

AE = {
    "ctcae_term": "pneumonitis",
    "onset_date": day(40),
    "grade": 3,
    "serious": True,
    "seriousness_criteria": ["hospitalisation"],
    "outcome": "recovering",
}


@contextmanager
def clock_at(server, moment: datetime):
    """Set the server's clock (the SAE clock's time); put it back afterwards."""
    runtime = server.runtime
    before = runtime.clock
    runtime.clock = lambda: moment
    try:
        yield
    finally:
        runtime.clock = before


def entries(subject_id: str) -> str:
    return f"/api/v1/subjects/{subject_id}/forms/adverse_event/entries"


@pytest.fixture
def subject(server):
    with server.client("coordinator", "S01") as http:
        subject = enrol(http)
        assert save(http, subject["id"], "surgery").status_code == 201
    return subject["id"]


def _sae(http, subject_id: str, entry_id: str, **params) -> dict | None:
    listed = http.get("/api/v1/safety/sae", params=params)
    assert listed.status_code == 200, listed.text
    return next(
        (i for i in listed.json()["items"] if i["entry_id"] == entry_id and i["subject_id"] == subject_id), None
    )


def test_the_clock_starts_at_the_first_serious_save_and_runs_24_hours(server, subject):
    aware = datetime(2031, 5, 4, 8, 30, tzinfo=UTC)
    with clock_at(server, aware), server.client("coordinator", "S01", sub="crc-lin") as http:
        entry = http.post(entries(subject), json={"items": AE}).json()["id"]
        sae = _sae(http, subject, entry)
    assert sae["status"] == "due" and sae["aware_by"] == "crc-lin"
    assert datetime.fromisoformat(sae["aware_at"]) == aware
    assert datetime.fromisoformat(sae["due_at"]) == aware + timedelta(hours=24)
    with clock_at(server, aware + timedelta(hours=23, minutes=59)), server.client("monitor", "S01") as http:
        assert _sae(http, subject, entry)["status"] == "due"
        assert _sae(http, subject, entry, status="due") is not None
    with clock_at(server, aware + timedelta(hours=24, seconds=1)), server.client("data_manager") as http:
        assert _sae(http, subject, entry)["status"] == "overdue"
        assert _sae(http, subject, entry, status="due") is None
        assert _sae(http, subject, entry, status="overdue") is not None
    # a later save (edit with a reason) does not move the awareness time
    with clock_at(server, aware + timedelta(hours=30)), server.client("coordinator", "S01") as http:
        edited = http.put(f"{entries(subject)}/{entry}", json={"items": {**AE, "grade": 4}, "reason": "worse"})
        assert edited.status_code == 200, edited.text
        assert datetime.fromisoformat(_sae(http, subject, entry)["aware_at"]) == aware


def test_the_investigator_reports_once_and_it_is_audited(server, subject):
    aware = datetime(2031, 6, 1, 0, 0, tzinfo=UTC)
    with clock_at(server, aware), server.client("coordinator", "S01") as http:
        entry = http.post(entries(subject), json={"items": AE}).json()["id"]
    url = f"{entries(subject)}/{entry}/sae-report"
    with clock_at(server, aware + timedelta(hours=30)):
        with server.client("coordinator", "S01") as http:
            assert http.post(url, json={"reference": "CIOMS-1"}).status_code == 403
        with server.client("investigator", "S02") as http:
            assert http.post(url, json={"reference": "CIOMS-1"}).status_code == 404
            assert _sae(http, subject, entry) is None  # another site's SAE is not listed
        with server.client("investigator", "S01", sub="dr-wei") as http:
            future = http.post(
                url, json={"reference": "CIOMS-1", "reported_at": (aware + timedelta(days=9)).isoformat()}
            )
            assert future.status_code == 409
            early = http.post(
                url, json={"reference": "CIOMS-1", "reported_at": (aware - timedelta(hours=1)).isoformat()}
            )
            assert early.status_code == 409
            sent = (aware + timedelta(hours=20)).isoformat()
            reported = http.post(url, json={"reference": "CIOMS-2031-0042", "reported_at": sent})
            assert reported.status_code == 200, reported.text
            body = reported.json()
            assert body["status"] == "reported" and body["on_time"] is True and body["reported_by"] == "dr-wei"
            assert body["reference"] == "CIOMS-2031-0042"
            assert http.post(url, json={"reference": "again"}).status_code == 409
    with server.client("data_manager") as http:
        trail = http.get(f"/api/v1/subjects/{subject}/audit", params={"form": "adverse_event", "limit": 200}).json()
    actions = [e["action"] for e in trail["items"]]
    assert actions.count("sae.aware") == 1 and actions.count("sae.report") == 1
    report = next(e for e in trail["items"] if e["action"] == "sae.report")
    assert report["who"]["sub"] == "dr-wei" and "CIOMS-2031-0042" in report["new_value"]


def test_a_late_report_is_not_on_time(server, subject):
    aware = datetime(2031, 7, 1, 0, 0, tzinfo=UTC)
    with clock_at(server, aware), server.client("coordinator", "S01") as http:
        entry = http.post(entries(subject), json={"items": AE}).json()["id"]
    with clock_at(server, aware + timedelta(hours=26)), server.client("investigator", "S01") as http:
        body = http.post(f"{entries(subject)}/{entry}/sae-report", json={"reference": "late"}).json()
    assert body["status"] == "reported" and body["on_time"] is False


def test_not_serious_downgraded_and_withdrawn_events(server, subject):
    with server.client("coordinator", "S01") as http:
        mild = http.post(
            entries(subject), json={"items": {**AE, "serious": False, "seriousness_criteria": None, "grade": 1}}
        ).json()["id"]
        assert _sae(http, subject, mild) is None  # never serious: no clock
        serious = http.post(entries(subject), json={"items": AE}).json()["id"]
        downgraded = http.put(
            f"{entries(subject)}/{serious}",
            json={
                "items": {**AE, "serious": False, "seriousness_criteria": None},
                "reason": "not hospitalised after all",
            },
        )
        assert downgraded.status_code == 200, downgraded.text
        assert _sae(http, subject, serious)["status"] == "not_serious"
        again = http.post(entries(subject), json={"items": AE}).json()["id"]
        assert http.post(f"{entries(subject)}/{again}/withdraw", json={"reason": "duplicate"}).status_code == 200
        assert _sae(http, subject, again)["status"] == "withdrawn"
        open_ = http.get("/api/v1/safety/sae", params=[("status", "due"), ("status", "overdue")]).json()["items"]
        assert not {serious, again} & {i["entry_id"] for i in open_}


def test_the_aggregate_report_counts_saes_per_site_never_their_details(server, subject):
    with server.client("coordinator", "S01") as http:
        http.post(entries(subject), json={"items": AE})
    with server.client("data_manager") as http:
        exact = http.get("/api/v1/reports/enrolment").json()
    s01 = next(s for s in exact["sites"] if s["site"] == "S01")
    assert set(s01["sae"]) == {"due", "overdue", "reported", "not_serious", "withdrawn"}
    assert sum(v for v in s01["sae"].values()) >= 1
    with server.client("sponsor") as http:
        report = http.get("/api/v1/reports/enrolment")
    assert report.status_code == 200
    text = report.text
    assert subject not in text and "pneumonitis" not in text  # counts only
    sponsor_s01 = next(s for s in report.json()["sites"] if s["site"] == "S01")
    assert set(sponsor_s01["sae"]) == set(s01["sae"])
    for status, n in sponsor_s01["sae"].items():  # small cells hidden (null), others exact
        assert n is None or n == 0 or n >= report.json()["min_cell"]


def test_the_study_says_which_form_and_item_start_the_clock_and_its_window(server):
    with server.client("coordinator", "S01") as http:
        clock = http.get("/api/v1/study").json()["safety"]
    assert clock == {"form": "adverse_event", "serious_item": "serious", "report_within_hours": 24.0}
