"""The clinicians' screens in a real browser (issue 16): Debian's chromium, driven by Playwright, against the
real server on SQLite and PostgreSQL. Every step is a click or a key press on the page; the API is used only
to prepare data another actor (the hospital's EHR, another user) would have made."""

import re
import secrets
from datetime import UTC, datetime, timedelta

import pytest
from crf_support import VALID, day, enrol, path, save
from fhir_builders import FHIR_JSON, MRN, lab
from sqlmodel import Session

from ecrf.config import Settings
from ecrf.web.models import WebSession
from ecrf.web.sessions import COOKIE, _hash
from study_model.loader import load_study
from web_support import axe_violations, chromium, screenshot  # noqa: F401 - chromium is a fixture

from tests.test_endpoints import adverse_event, assess, died, patient_of, randomised
from tests.test_safety import AE, clock_at
from tests.test_subject_checks import randomised as allocated

from playwright.sync_api import Page, expect  # noqa: E402 - after web_support, which explains a missing playwright

pytestmark = pytest.mark.usefixtures("chromium")
TIMEOUT = 20_000
# A subject screened today: eligibility's labs must lie within 14 days before R (today at the site), so the
# surgery was 21 days ago (the SCR visit's target) on the site's calendar.
R = load_study(Settings(_env_file=None).study_dir).today_at("S01")
SURGERY = R - timedelta(days=21)
TIMELINE = {  # form -> (visit date, items changed from crf_support.VALID)
    "surgery": (None, {"surgery_date": SURGERY.isoformat()}),
    "demographics": (R.isoformat(), {"consent_date": (SURGERY + timedelta(days=14)).isoformat()}),
    "baseline": ((SURGERY - timedelta(days=3)).isoformat(), {}),
    "labs": (R.isoformat(), {}),
    "pathology": (R.isoformat(), {}),
    "afp": (R.isoformat(), {}),
    "history": (R.isoformat(), {}),
}


def screened(form_id: str, **changes) -> tuple[str | None, dict]:
    visit_date, items = TIMELINE[form_id]
    return visit_date, {**VALID[form_id][2], **items, **changes}


def open_page(chromium, server, *, width: int = 1200, height: int = 860) -> Page:
    context = chromium.new_context(
        base_url=server.base_url, viewport={"width": width, "height": height}, locale="en-US"
    )
    context.set_default_timeout(TIMEOUT)
    return context.new_page()


def sign_in(page: Page, role: str, site: str | None = "S01") -> Page:
    page.goto("/")
    page.select_option("#dev-role", role)
    page.select_option("#dev-site", site or "")
    page.click("#dev-login button[type=submit]")
    expect(page.locator("#logout")).to_be_visible()
    return page


def goto(page: Page, hash_path: str) -> None:
    """Open an address of the page and wait until the page shows it (not the one before)."""
    if page.url.endswith("/" + hash_path):
        page.reload()  # the same address again: a fresh read, as a user's reload
    else:
        page.goto("/" + hash_path)
    page.wait_for_function("(h) => document.body.dataset.ready === h", arg=hash_path)


def open_form(page: Page, subject_id: str, form_id: str, visit_id: str) -> None:
    goto(page, f"#/subjects/{subject_id}/forms/{form_id}/{visit_id}")
    expect(page.locator("#crf")).to_be_visible()


def fill_item(page: Page, item_id: str, value) -> None:
    control = page.locator(f"#item-{item_id}")
    if isinstance(value, bool):
        control.select_option("true" if value else "false")
    elif isinstance(value, dict):
        control.fill(str(value["value"]))
        page.select_option(f"#item-{item_id}-unit", value["unit"])
    elif control.evaluate("node => node.tagName") == "SELECT":
        control.select_option(str(value))
    else:
        control.fill(str(value))


def fill_and_save(
    page: Page,
    subject_id: str,
    form_id: str,
    items: dict | None = None,
    visit_date: str | None = None,
    expect_text: str = "Saved",
) -> None:
    visit, default_date, default_items = VALID[form_id]
    open_form(page, subject_id, form_id, visit)
    if visit_date or default_date:
        page.fill("#visit-date", visit_date or default_date)
    for item_id, value in (items or default_items).items():
        fill_item(page, item_id, value)
    page.click("#save")
    expect(page.locator("#form-messages")).to_contain_text(expect_text)


def test_site_enrols_and_fills_every_form_to_eligible(server, chromium):
    page = open_page(chromium, server)
    page.goto("/")
    screenshot(page, "sign-in")
    sign_in(page, "coordinator")
    mrn = secrets.token_hex(5)
    page.fill("#enrol-mrn", mrn)
    page.fill("#enrol-consent", (SURGERY + timedelta(days=14)).isoformat())
    page.click("#enrol button[type=submit]")
    expect(page.locator("main h1")).to_have_text(f"Subject {mrn}")
    subject_id = page.url.rsplit("/", 1)[1]
    expect(page.locator("#eligibility-status")).to_have_text("incomplete: data missing")
    expect(page.locator('[data-criterion="I02_surgery"]')).to_contain_text("no surgery_date on file")

    visit_date, items = screened("surgery")
    fill_and_save(page, subject_id, "surgery", items, visit_date)

    # demographics: a conditional item, a soft warning, a unit conversion and a reason for change
    open_form(page, subject_id, "demographics", "SCR")
    contraception = page.locator('[data-item="contraception_agreed"]')
    expect(contraception).to_be_hidden()
    page.select_option("#item-wocbp", "true")
    expect(contraception).to_be_visible()
    page.select_option("#item-wocbp", "false")
    expect(contraception).to_be_hidden()
    visit_date, items = screened("demographics", weight={"value": 30, "unit": "kg"})
    page.fill("#visit-date", visit_date)
    for item_id, value in items.items():
        fill_item(page, item_id, value)
    page.click("#save")
    expect(page.locator("#form-messages")).to_contain_text("Saved with 1 warning")
    expect(page.locator('[data-item="weight"] .warning[data-rule="soft_range"]')).to_be_visible()
    fill_item(page, "weight", {"value": 143.3, "unit": "lb"})
    page.click("#save")
    expect(page.locator('#reason-row .error[data-rule="reason_required"]')).to_be_visible()
    expect(page.locator("#reason")).to_be_focused()
    page.fill("#reason", "weight re-measured")
    page.click("#save")
    expect(page.locator("#form-messages")).to_have_text("Saved.")
    open_form(page, subject_id, "demographics", "SCR")
    expect(page.locator("#item-weight")).to_have_value("143.3")  # the entered value and unit are kept
    expect(page.locator("#item-weight-unit")).to_have_value("lb")
    page.click('button.history[data-for="weight"]')  # the item's history, from the audit trail
    history = page.locator('[data-item="weight"] .item-history tbody tr')
    expect(history).to_have_count(2)
    expect(history.nth(1)).to_contain_text("weight re-measured")
    expect(history.nth(1)).to_contain_text("dev-coordinator")
    with server.client("monitor", "S01") as http:
        weight = http.get(path(subject_id, "demographics", "SCR")).json()["items"]["weight"]
    assert weight["unit"] == "kg" and abs(weight["value"] - 65.0) < 0.01  # stored in the canonical unit

    # labs: a hard error shown at its item at once, nothing stored, then fixed
    visit_date, items = screened("labs", platelets=5000, hemoglobin={"value": 13.2, "unit": "g/dL"})
    fill_and_save(page, subject_id, "labs", items, visit_date, expect_text="Not saved: 1 problem")
    platelets_error = page.locator('[data-item="platelets"] .error[data-rule="hard_range"]')
    expect(platelets_error).to_contain_text("outside the possible range")
    expect(page.locator("#item-platelets")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#item-platelets")).to_be_focused()
    expect(page.locator("#announce")).to_contain_text("Not saved")
    expect(page.locator("#form-status")).to_have_text("not started")
    screenshot(page, "form-edit-check")
    page.fill("#item-platelets", "180")
    page.click("#save")
    expect(page.locator("#form-messages")).to_have_text("Saved.")
    expect(platelets_error).to_have_count(0)

    for form_id in ("baseline", "pathology", "afp", "history"):
        fill_and_save(page, subject_id, form_id, *reversed(screened(form_id)))

    goto(page, f"#/subjects/{subject_id}")
    expect(page.locator("#eligibility-status")).to_have_text("eligible")
    criteria = page.locator("#eligibility tbody tr")
    assert criteria.count() >= 10
    expect(page.locator('[data-criterion="I09_hemoglobin"]')).to_contain_text("met")
    page.locator("#eligibility").scroll_into_view_if_needed()
    page.evaluate("document.getElementById('eligibility').scrollIntoView()")
    screenshot(page, "subject")
    # randomisation by the system (v2): a button for the site when eligible, refused with the blocking criteria
    # when the data changed meanwhile (another user's save), never typed into the randomisation form
    expect(page.locator("#randomisation")).to_contain_text("Not randomised yet")
    labs_date, labs = screened("labs")
    with server.client("investigator", "S01") as http:
        low = save(http, subject_id, "labs", {**labs, "platelets": 40}, visit_date=labs_date, reason="re-tested")
        assert low.status_code == 200, low.text
    page.click("#randomise")
    refused = page.locator("#randomise-refused")
    expect(refused).to_contain_text("eligible")
    expect(refused.locator('[data-criterion="I08_platelets"]')).to_be_visible()
    with server.client("monitor", "S01") as http:
        assert http.get(f"/api/v1/subjects/{subject_id}/randomisation").json()["randomised"] is False
    with server.client("investigator", "S01") as http:
        assert (
            save(http, subject_id, "labs", labs, visit_date=labs_date, reason="first value was right").status_code
            == 200
        )
    goto(page, f"#/subjects/{subject_id}")
    page.click("#randomise")
    expect(page.locator("#randomise-message")).to_contain_text("Randomised:")
    with server.client("monitor", "S01") as http:
        allocation = http.get(f"/api/v1/subjects/{subject_id}/randomisation").json()
    assert allocation["randomised"] is True and allocation["randomisation_number"].startswith("R-S01-")
    expect(page.locator("#allocation-arm")).to_have_text(allocation["arm"])
    expect(page.locator("#allocation-number")).to_have_text(allocation["randomisation_number"])
    expect(page.locator("#allocation-date")).to_have_text(R.isoformat())
    expect(page.locator("#randomise")).to_have_count(0)
    expect(page.locator("main > p").first).to_contain_text(allocation["arm"])
    open_form(page, subject_id, "randomisation", "SCR")  # the form: read-only, written by the allocation
    expect(page.locator("#item-arm")).to_have_text(allocation["arm"] + " ")
    expect(page.locator('[data-item="arm"] .source')).to_contain_text("set by the system")
    expect(page.locator("#save")).to_have_count(0)
    expect(page.locator("#allocated-note")).to_be_visible()
    goto(page, "#/")
    expect(page.locator("#subjects")).to_contain_text(mrn)
    expect(page.locator("#subjects tr", has_text=mrn)).to_contain_text("eligible")
    expect(page.locator("#subjects tr", has_text=mrn).locator("td").nth(5)).to_have_text(allocation["arm"])
    page.evaluate("window.scrollTo(0, 0)")
    screenshot(page, "home")

    page.set_viewport_size({"width": 768, "height": 1024})  # a tablet
    open_form(page, subject_id, "labs", "SCR")
    assert page.evaluate("document.documentElement.scrollWidth") <= 768
    page.context.close()


def _link_ehr_patient(server, subject):
    with server.client("ehr", "S01") as http:
        patient = {"resourceType": "Patient", "identifier": [{"system": MRN["S01"], "value": subject["mrn"]}]}
        assert http.post("/fhir/Patient", json=patient, headers=FHIR_JSON).status_code == 200


def test_ehr_value_is_shown_with_its_source_and_a_stale_save_is_never_overwritten(server, chromium):
    with server.client("coordinator", "S01") as http:
        subject = enrol(http)
        assert save(http, subject["id"], "surgery").status_code == 201
    _link_ehr_patient(server, subject)
    with server.client("ehr", "S01") as http:
        pushed = http.post(
            "/fhir/Observation",
            json=lab(f"Patient/{subject['patient_id']}", "718-7", 12.1, "g/dL", day(21)),
            headers=FHIR_JSON,
        )
        assert pushed.status_code == 201, pushed.text
    first, second = open_page(chromium, server), open_page(chromium, server)
    for page in (first, second):
        sign_in(page, "coordinator")
        open_form(page, subject["id"], "labs", "SCR")
    expect(first.locator('[data-item="hemoglobin"] .ehr')).to_contain_text(f"from the hospital record, {day(21)}")
    expect(first.locator("#item-hemoglobin")).to_have_value("12.1")
    expect(first.locator("#item-hemoglobin-unit")).to_have_value("g/dL")

    first.fill("#visit-date", day(21))
    first.fill("#item-platelets", "180")
    first.click("#save")
    expect(first.locator("#form-messages")).to_contain_text("Saved")
    second.fill("#visit-date", day(21))
    second.fill("#item-platelets", "190")
    second.click("#save")
    stale = second.locator("#stale")
    expect(stale).to_contain_text("Someone else")
    expect(stale).to_contain_text("Platelets: 180")
    with server.client("monitor", "S01") as http:
        assert http.get(path(subject["id"], "labs", "SCR")).json()["items"]["platelets"]["value"] == 180
    second.click("#reload")
    expect(second.locator("#item-platelets")).to_have_value("180")
    for page in (first, second):
        page.context.close()


def test_query_sdv_signature_and_lock_each_by_its_role(server, chromium):
    with server.client("coordinator", "S01") as http:
        subject = enrol(http)
        assert save(http, subject["id"], "ctc").status_code == 201
    visit = VALID["ctc"][0]
    monitor = sign_in(open_page(chromium, server), "monitor")
    open_form(monitor, subject["id"], "ctc", visit)
    expect(monitor.locator("#save")).to_have_count(0)  # a monitor does not enter data: no button...
    forged = monitor.evaluate(
        """async (url) => {
        const session = await (await fetch('/web-auth/session')).json();
        const r = await fetch(url, {method: 'PUT', headers: {'Content-Type': 'application/json', 'X-CSRF-Token': session.csrf},
                                    body: JSON.stringify({items: {ctc_count: 9}})});
        return r.status; }""",
        path(subject["id"], "ctc", visit),
    )
    assert forged == 403  # ...and a forged request is refused as the API refuses it
    monitor.click('button.raise[data-for="ctc_count"]')
    monitor.fill("#query-text", "Please confirm the count against the lab sheet")
    monitor.click("#query-submit")
    expect(monitor.locator('#queries .query[data-status="open"]')).to_contain_text("ctc / POD7 / ctc_count")
    screenshot(monitor, "form-query")

    site = sign_in(open_page(chromium, server), "coordinator")
    open_form(site, subject["id"], "ctc", visit)
    expect(site.locator('[data-item="ctc_count"] .badge')).to_contain_text("1 open")
    expect(site.locator(".q-close")).to_have_count(0)
    site.locator("#queries input").fill("Confirmed: 3 cells")
    site.click(".q-answer")
    expect(site.locator('#queries .query[data-status="answered"]')).to_contain_text("Confirmed: 3 cells")

    open_form(monitor, subject["id"], "ctc", visit)
    monitor.click(".q-close")
    expect(monitor.locator('#queries .query[data-status="closed"]')).to_be_visible()
    monitor.click("#verify")
    expect(monitor.locator("#form-status")).to_have_text("verified (SDV)")
    expect(site.locator("#verify")).to_have_count(0)

    investigator = sign_in(open_page(chromium, server), "investigator")
    open_form(investigator, subject["id"], "ctc", visit)
    cookie = next(c for c in investigator.context.cookies() if c["name"] == COOKIE)
    with Session(server.runtime.engine) as session:  # signed in an hour ago: signing asks who they are again
        row = session.get(WebSession, _hash(cookie["value"]))
        row.authenticated_at = datetime.now(UTC) - timedelta(hours=1)
        session.add(row)
        session.commit()
    investigator.fill("#meaning", "I approve these CTC data")
    investigator.click("#sign")
    expect(investigator.locator("#lifecycle-message")).to_contain_text("confirm who you are")
    expect(investigator.locator("#form-status")).to_have_text("verified (SDV)")
    investigator.click("#reauth")  # confirmed, the signature goes on with the meaning entered
    expect(investigator.locator("#form-status")).to_have_text("signed")
    with server.client("monitor", "S01") as http:
        signature = http.get(path(subject["id"], "ctc", visit)).json()["signature"]
    assert signature["meaning"] == "I approve these CTC data" and "investigator" in str(signature)

    manager = sign_in(open_page(chromium, server), "data_manager", None)
    open_form(manager, subject["id"], "ctc", visit)
    manager.click("#lock")
    expect(manager.locator("#form-status")).to_have_text("locked")
    open_form(site, subject["id"], "ctc", visit)
    expect(site.locator("#save")).to_have_count(0)
    expect(site.locator("main")).to_contain_text("This form is locked.")
    for page in (monitor, site, investigator, manager):
        page.context.close()


def entries_url(subject_id: str, form_id: str, visit_id: str | None = None) -> str:
    return f"/api/v1/subjects/{subject_id}/forms/{form_id}/" + (f"{visit_id}/entries" if visit_id else "entries")


def test_adverse_events_and_medication_are_logged_edited_and_withdrawn(server, chromium):
    with server.client("coordinator", "S01") as http:
        subject = enrol(http)
        assert save(http, subject["id"], "surgery").status_code == 201
    page = sign_in(open_page(chromium, server), "coordinator")
    goto(page, f"#/subjects/{subject['id']}")
    expect(page.locator("#log-adverse_event")).to_contain_text("No entries.")
    expect(page.locator("#log-conmed")).to_contain_text("No entries.")

    # an adverse event: the same widgets and edit checks as a visit form; codes are a group of checkboxes
    page.click("#add-adverse_event")
    expect(page.locator("#crf")).to_be_visible()
    expect(page.locator("main h1")).to_contain_text("Adverse event")
    expect(page.locator("#visit-date")).to_have_count(0)  # dated by its onset date
    expect(page.locator("#item-term_verbatim")).to_have_attribute("maxlength", "500")
    assert page.locator("#item-term_verbatim").evaluate("n => n.tagName") == "TEXTAREA"
    expect(page.locator("#item-seriousness_criteria input[type=checkbox]")).to_have_count(6)
    for item_id, value in {
        "ctcae_term": "other",
        "onset_date": day(40),
        "grade": 3,
        "serious": True,
        "outcome": "recovering",
    }.items():
        fill_item(page, item_id, value)
    page.click("#save")
    expect(page.locator("#form-messages")).to_contain_text("Not saved: 2 problem")
    expect(page.locator('[data-item="term_verbatim"] .error[data-rule="verbatim_required"]')).to_be_visible()
    expect(
        page.locator('[data-item="seriousness_criteria"] .error[data-rule="seriousness_criteria_required"]')
    ).to_be_visible()
    page.locator('[data-item="seriousness_criteria"]').scroll_into_view_if_needed()
    screenshot(page, "entry-edit-check")
    with server.client("monitor", "S01") as http:
        assert http.get(entries_url(subject["id"], "adverse_event")).json() == []  # nothing stored
    page.fill("#item-term_verbatim", "Injection site abscess")
    page.check("#item-seriousness_criteria-hospitalisation")
    page.check("#item-seriousness_criteria-other_important")
    page.click("#save")
    expect(page.locator("#form-messages")).to_have_text("Saved.")
    expect(page.locator("#form-status")).to_have_text("complete")
    entry_id = page.url.rsplit("/", 1)[1]
    with server.client("monitor", "S01") as http:
        stored = http.get(f"{entries_url(subject['id'], 'adverse_event')}/{entry_id}").json()
    assert stored["items"]["term_verbatim"]["value"] == "Injection site abscess"
    assert sorted(stored["items"]["seriousness_criteria"]["value"]) == ["hospitalisation", "other_important"]
    assert stored["items"]["severity"]["value"] == "severe"  # derived, shown not typed
    expect(page.locator("#item-severity")).to_contain_text("severe")

    # an edit of a complete entry needs a reason, as a visit form's
    page.uncheck("#item-seriousness_criteria-other_important")
    page.click("#save")
    expect(page.locator('#reason-row .error[data-rule="reason_required"]')).to_be_visible()
    page.fill("#reason", "not an important medical event")
    page.click("#save")
    expect(page.locator("#form-messages")).to_have_text("Saved.")
    goto(page, f"#/subjects/{subject['id']}")
    row = page.locator(f'#log-adverse_event tr[data-entry="{entry_id}"]')
    expect(row).to_contain_text(day(40))
    expect(row).to_contain_text("other")
    expect(row).to_contain_text("complete")
    page.evaluate("document.getElementById('log-adverse_event').scrollIntoView()")
    screenshot(page, "subject-logs")

    # medication: added, then withdrawn as entered in error with a reason, kept and marked
    page.click("#add-conmed")
    page.fill("#item-medication", "Omeprazole 20 mg")
    fill_item(page, "start_date", day(30))
    fill_item(page, "ongoing", True)
    page.click("#save")
    expect(page.locator("#form-messages")).to_have_text("Saved.")
    conmed_id = page.url.rsplit("/", 1)[1]
    page.click("#withdraw-entry")
    expect(page.locator("#withdraw-message .error")).to_contain_text("reason")
    page.fill("#withdraw-reason", "entered for the wrong subject")
    page.click("#withdraw-entry")
    page.wait_for_function("(h) => document.body.dataset.ready === h", arg=f"#/subjects/{subject['id']}")
    withdrawn = page.locator(f'#log-conmed tr[data-entry="{conmed_id}"]')
    expect(withdrawn).to_have_attribute("data-status", "entered_in_error")
    expect(withdrawn).to_contain_text("withdrawn: entered for the wrong subject")
    withdrawn.locator("a").click()
    expect(page.locator("#withdrawn-note")).to_contain_text("entered for the wrong subject")
    expect(page.locator("#save")).to_have_count(0)
    expect(page.locator("#withdraw-entry")).to_have_count(0)
    with server.client("monitor", "S01") as http:
        assert http.get(entries_url(subject["id"], "conmed")).json()[0]["status"] == "entered_in_error"
    page.context.close()


def test_an_adverse_event_from_the_ehr_is_shown_beside_ecrf_entries_marked(server, chromium):
    with server.client("coordinator", "S01") as http:
        subject = enrol(http)
        assert save(http, subject["id"], "surgery").status_code == 201
        typed = http.post(
            entries_url(subject["id"], "adverse_event"),
            json={
                "items": {
                    "ctcae_term": "rash",
                    "onset_date": day(30),
                    "grade": 1,
                    "serious": False,
                    "outcome": "recovering",
                }
            },
        )
        assert typed.status_code == 201, typed.text
        event = {
            "resourceType": "AdverseEvent",
            "actuality": "actual",
            "subject": {"reference": f"Patient/{subject['id']}"},
            "event": {"coding": [{"system": server.runtime.study.local_system, "code": "ae-diarrhea"}]},
            "date": day(41),
            "seriousness": {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/adverse-event-seriousness", "code": "non-serious"}
                ]
            },
        }
        assert http.post("/fhir/AdverseEvent", json=event, headers=FHIR_JSON).status_code == 201
        [pushed] = [e for e in http.get(entries_url(subject["id"], "adverse_event")).json() if e["source"] == "fhir"]
    page = sign_in(open_page(chromium, server), "coordinator")
    goto(page, f"#/subjects/{subject['id']}")
    row = page.locator(f'#log-adverse_event tr[data-entry="{pushed["id"]}"]')
    expect(row).to_have_attribute("data-source", "fhir")
    expect(row).to_contain_text(day(41))
    expect(row).to_contain_text("diarrhea")
    expect(row.locator(".badge.ehr")).to_have_text("from the EHR")
    ecrf = page.locator(f'#log-adverse_event tr[data-entry="{typed.json()["id"]}"]')
    expect(ecrf).to_have_attribute("data-source", "form")
    expect(ecrf.locator(".badge.ehr")).to_have_count(0)
    row.locator("a").click()
    expect(page.locator("#ehr-note")).to_contain_text("from the EHR")
    expect(page.locator("#save")).to_be_visible()  # a coordinator completes it like any entry
    page.context.close()


def test_repeating_form_entries_are_listed_and_added_under_their_visit(server, chromium):
    with server.client("coordinator", "S01") as http:
        subject = enrol(http)
        assert save(http, subject["id"], "surgery").status_code == 201
        assert save(http, subject["id"], "afp").status_code == 201  # the visit's own AFP form
    page = sign_in(open_page(chromium, server), "investigator")
    goto(page, f"#/subjects/{subject['id']}")
    at_scr = page.locator('[data-entries="afp/SCR"]')
    expect(at_scr.locator("li")).to_have_count(0)
    at_scr.locator(".add-entry").click()
    expect(page.locator("main h1")).to_contain_text("Alpha-fetoprotein — Post-operative screening")
    page.fill("#visit-date", day(21))
    fill_item(page, "afp", {"value": -1, "unit": "ng/mL"})
    page.click("#save")
    expect(page.locator('[data-item="afp"] .error[data-rule="hard_range"]')).to_be_visible()
    expect(page.locator("#item-afp")).to_be_focused()
    fill_item(page, "afp", {"value": 300, "unit": "ng/mL"})
    page.click("#save")
    expect(page.locator("#form-messages")).to_contain_text("Saved")
    goto(page, f"#/subjects/{subject['id']}")
    expect(at_scr.locator("li")).to_have_count(1)
    expect(at_scr.locator("li")).to_contain_text(f"entry of {day(21)}")
    expect(page.locator('[data-entries="afp/M1"] li')).to_have_count(0)
    with server.client("monitor", "S01") as http:
        entries = http.get(entries_url(subject["id"], "afp", "SCR")).json()
        own = http.get(path(subject["id"], "afp", "SCR")).json()
    assert [e["items"]["afp"]["value"] for e in entries] == [300] and own["items"]["afp"]["value"] == 250
    page.context.close()


def test_each_log_entry_is_verified_signed_and_locked_by_its_role(server, chromium):
    with server.client("coordinator", "S01") as http:
        subject = enrol(http)
        assert save(http, subject["id"], "surgery").status_code == 201
        items = {"ctcae_term": "rash", "onset_date": day(40), "grade": 2, "serious": False, "outcome": "recovering"}
        first = http.post(entries_url(subject["id"], "adverse_event"), json={"items": items})
        other = http.post(
            entries_url(subject["id"], "adverse_event"), json={"items": {**items, "ctcae_term": "fatigue"}}
        )
        assert first.status_code == 201 and other.status_code == 201, first.text
    entry, untouched = first.json()["id"], other.json()["id"]
    hash_path = f"#/subjects/{subject['id']}/entries/adverse_event/-/{entry}"

    site = sign_in(open_page(chromium, server), "coordinator")
    goto(site, hash_path)
    expect(site.locator("#verify")).to_have_count(0)  # the site enters, it does not verify
    monitor = sign_in(open_page(chromium, server), "monitor")
    goto(monitor, hash_path)
    expect(monitor.locator("#save")).to_have_count(0)
    expect(monitor.locator("#withdraw-entry")).to_have_count(0)
    monitor.click("#verify")
    expect(monitor.locator("#form-status")).to_have_text("verified (SDV)")
    expect(monitor.locator("#form-messages")).to_have_text("Verified.")

    investigator = sign_in(open_page(chromium, server), "investigator")
    goto(investigator, hash_path)
    investigator.fill("#meaning", "I confirm this adverse event")
    investigator.click("#sign")
    expect(investigator.locator("#form-status")).to_have_text("signed")
    manager = sign_in(open_page(chromium, server), "data_manager", None)
    goto(manager, hash_path)
    manager.click("#lock")
    expect(manager.locator("#form-status")).to_have_text("locked")

    goto(site, hash_path)
    expect(site.locator("#save")).to_have_count(0)
    expect(site.locator("#withdraw-entry")).to_have_count(0)
    expect(site.locator("main")).to_contain_text("This form is locked.")
    goto(site, f"#/subjects/{subject['id']}")
    expect(site.locator(f'#log-adverse_event tr[data-entry="{entry}"]')).to_have_attribute("data-status", "locked")
    expect(site.locator(f'#log-adverse_event tr[data-entry="{untouched}"]')).to_have_attribute(
        "data-status", "complete"
    )
    with server.client("monitor", "S01") as http:
        stored = http.get(f"{entries_url(subject['id'], 'adverse_event')}/{entry}").json()
    assert stored["status"] == "locked" and stored["signature"]["meaning"] == "I confirm this adverse event"

    goto(manager, hash_path)  # unlocked with a reason, the site may correct it again
    manager.fill("#unlock-reason", "late lab result")
    manager.click("#unlock")
    expect(manager.locator("#form-status")).not_to_have_text("locked")
    goto(site, hash_path)
    expect(site.locator("#save")).to_be_visible()
    for page in (site, monitor, investigator, manager):
        page.context.close()


def _visible_rule(page: Page, item_id: str, rule: str) -> None:
    expect(page.locator(f'[data-item="{item_id}"] .warning[data-rule="{rule}"]')).to_be_visible()


def test_endpoints_status_and_open_items_in_a_clinicians_words(server, chromium):
    with server.client("investigator", "S01") as http:
        subject_id, _ = randomised(server, http, "SORA")  # randomised on day(20): day 0
        assess(http, subject_id, "ned", 60)
        recurrence = assess(http, subject_id, "recurrence", 92, recurrence=90, visit="M6")
        end = died(http, subject_id, 97, end=98)
        fatal = adverse_event(http, subject_id, 99, grade=5)  # after the death and the end of study: two open items
        waiting = enrol(http)  # enrolled, never randomised
    page = sign_in(open_page(chromium, server), "investigator")
    goto(page, f"#/subjects/{subject_id}")
    expect(page.locator("#subject-status")).to_have_text("off study")
    expect(page.locator("#subject-end-date")).to_have_text(day(98))
    panel = page.locator("#endpoints")
    expect(panel).to_contain_text(f"Day 0 is the randomisation date, {day(20)} (arm SORA)")
    rfs, os = panel.locator('tr[data-endpoint="rfs"]'), panel.locator('tr[data-endpoint="os"]')
    expect(rfs).to_have_attribute("data-event", "true")
    expect(rfs.locator(".outcome")).to_have_text("event: recurrence or death")
    expect(rfs.locator(".days")).to_have_text("70 days")
    expect(rfs.locator(".date")).to_have_text(day(90))
    rfs_evidence = rfs.locator('.evidence[data-form="disease_assessment"] a')
    expect(rfs_evidence).to_have_text(f"Disease assessment: Date of recurrence, {day(90)}")
    expect(os.locator(".outcome")).to_have_text("event: death")
    expect(os.locator(".days")).to_have_text("77 days")
    expect(os.locator('.evidence[data-form="end_of_study"]')).to_contain_text(f"Date of death, {day(97)}")
    expect(os.locator(".evidence a")).to_have_attribute(
        "href", f"#/subjects/{subject_id}/entries/end_of_study/-/{end['id']}"
    )
    items = panel.locator("#endpoint-open-items > ul > li")
    expect(items).to_have_count(2)
    fatal_item = panel.locator('#endpoint-open-items li[data-kind="fatal_adverse_event_without_death"]')
    expect(fatal_item).to_contain_text(f"grade 5 (fatal) adverse event with onset {day(99)}")
    expect(fatal_item.locator("a")).to_have_attribute(
        "href", f"#/subjects/{subject_id}/entries/adverse_event/-/{fatal['id']}"
    )
    late = panel.locator('#endpoint-open-items li[data-kind="data_after_end_of_study"]')
    expect(late).to_contain_text(f"2 record(s) dated after the end of study ({day(98)})")  # the entry, its date
    expect(late.locator(f'a[href$="/{fatal["id"]}"]')).to_have_text(f"Adverse event entry of {day(99)}")  # once
    expect(panel.locator("#endpoint-conflicts")).to_have_count(0)
    page.evaluate("document.getElementById('endpoints').scrollIntoView()")
    screenshot(page, "subject-endpoints")
    rfs_evidence.click()  # the evidence opens the entry that decided it
    expect(page.locator("main h1")).to_contain_text("Disease assessment")
    assert page.url.endswith(f"/{recurrence['id']}")

    # a second death date from the hospital's record: a conflict, the earliest used, a query suggested
    with server.client("investigator", "S01") as http:
        patient = http.get(f"/fhir/Patient/{patient_of(http, subject_id)}").json()
        patient["deceasedDateTime"] = day(95)
        assert http.put(f"/fhir/Patient/{patient['id']}", json=patient, headers=FHIR_JSON).status_code == 200
    goto(page, f"#/subjects/{subject_id}")
    conflict = page.locator('#endpoint-conflicts li[data-kind="death_dates_differ"]')
    expect(conflict).to_have_count(1)  # one conflict of both endpoints, listed once
    expect(conflict).to_contain_text(f"two different death dates are on file ({day(95)}, {day(97)}); {day(95)} is used")
    expect(conflict).to_contain_text("Recurrence-free survival, Overall survival")
    expect(conflict).to_contain_text(f"the death date in the hospital record, {day(95)}")
    expect(page.locator('tr[data-endpoint="os"] .days')).to_have_text("75 days")

    # the hospital's record says deceased, with no date: censored, a conflict and an open item in words
    with server.client("investigator", "S01") as http:
        undated, patient_id = randomised(server, http, "SORA")
        assess(http, undated, "ned", 60)
        patient = http.get(f"/fhir/Patient/{patient_id}").json()
        flagged = http.put(f"/fhir/Patient/{patient_id}", json={**patient, "deceasedBoolean": True}, headers=FHIR_JSON)
        assert flagged.status_code == 200, flagged.text
    goto(page, f"#/subjects/{undated}")
    expect(page.locator('tr[data-endpoint="os"]')).to_have_attribute("data-event", "false")
    expect(page.locator('tr[data-endpoint="os"] .outcome')).to_have_text("censored (no event so far)")
    expect(page.locator('tr[data-endpoint="os"] .days')).to_have_text("40 days")
    no_date = page.locator('#endpoint-conflicts li[data-kind="death_without_date"]')
    expect(no_date).to_contain_text("the hospital record says the subject died, without a date")
    expect(no_date).to_contain_text("the hospital record: deceased, no date")
    expect(page.locator('#endpoint-open-items li[data-kind="death_without_date"]')).to_contain_text(
        "record the date of death in the end of study"
    )

    goto(page, f"#/subjects/{waiting['id']}")
    expect(page.locator("#endpoints-not-randomised")).to_contain_text("Not randomised")
    expect(page.locator("#endpoints tr[data-endpoint]")).to_have_count(0)
    expect(page.locator("#subject-status")).to_have_text("candidate")
    expect(page.locator("#subject-end-date")).to_have_count(0)
    page.context.close()

    # a session whose role lacks endpoints.read gets no panel and asks nothing: the page follows the policy's list
    page = open_page(chromium, server)
    asked = []
    page.on("request", lambda request: asked.append(request.url) if "/endpoints" in request.url else None)

    def without_endpoints(route):
        info = route.fetch().json()
        if info.get("actions"):
            info["actions"] = [a for a in info["actions"] if a != "endpoints.read"]
        route.fulfill(json=info)

    page.route("**/web-auth/session", without_endpoints)
    sign_in(page, "investigator")
    goto(page, f"#/subjects/{subject_id}")
    expect(page.locator("#visits")).to_be_visible()
    expect(page.locator("#endpoints")).to_have_count(0)
    assert asked == []
    page.context.close()


def test_cross_form_warnings_at_their_items_and_the_deviation_flag(server, chromium):
    subject_id = allocated(server, "SORA")["id"]  # consented on day 14, allocated SORA on day 22
    page = sign_in(open_page(chromium, server), "investigator")
    goto(page, f"#/subjects/{subject_id}")
    page.click("#add-exposure")  # the PD-1 antibody for a SORA subject, before the randomisation date
    for item_id, value in {
        "drug": "pd1",
        "start_date": day(18),
        "dose": 200,
        "route": "iv",
        "frequency": "q3w",
        "modification": "none",
    }.items():
        fill_item(page, item_id, value)
    page.click("#save")
    expect(page.locator("#form-messages")).to_contain_text("Saved with 2 warning")
    _visible_rule(page, "drug", "pd1_for_sora")
    _visible_rule(page, "start_date", "exposure_before_randomisation")
    expect(page.locator('[data-item="drug"] .warning')).to_contain_text("sorafenib alone (SORA)")
    expect(page.locator("#deviation-note")).to_be_visible()
    expect(page.locator("#deviation-note")).to_contain_text("protocol deviation")
    expect(page.locator("#deviation-note")).to_contain_text("started before the randomisation date")
    exposure_id = page.url.rsplit("/", 1)[1]
    goto(page, f"#/subjects/{subject_id}")
    flagged = page.locator(f'#log-exposure tr[data-entry="{exposure_id}"] .badge.deviation')
    expect(flagged).to_contain_text("protocol deviation")

    # an adverse event before consent, related to the PD-1 antibody for a SORA subject
    page.click("#add-adverse_event")
    for item_id, value in {
        "ctcae_term": "rash",
        "onset_date": day(10),
        "grade": 2,
        "serious": False,
        "related_pd1": "related",
        "outcome": "recovering",
    }.items():
        fill_item(page, item_id, value)
    page.click("#save")
    expect(page.locator("#form-messages")).to_contain_text("Saved with 2 warning")
    _visible_rule(page, "onset_date", "onset_before_consent")
    _visible_rule(page, "related_pd1", "related_pd1_for_sora")
    expect(page.locator("#deviation-note")).to_be_hidden()  # a warning, not a protocol deviation
    expect(page.locator("#announce")).to_contain_text("Saved with 2 warning")

    # the end of study, then the same event edited: grade 5 after the death, dated after the end of study
    with server.client("investigator", "S01") as http:
        died(http, subject_id, 60, end=61)
    goto(page, "#" + page.url.split("#", 1)[1])  # the entry again, as another user's save left it
    for item_id, value in {
        "onset_date": day(62),
        "grade": 5,
        "serious": True,
        "outcome": "fatal",
        "resolution_date": day(62),
        "related_pd1": "not_related",
    }.items():
        fill_item(page, item_id, value)
    page.check("#item-seriousness_criteria-death")
    page.click("#save")
    expect(page.locator('#reason-row .error[data-rule="reason_required"]')).to_be_visible()
    page.fill("#reason", "fatal outcome reported by the family")
    page.click("#save")
    expect(page.locator("#form-messages")).to_contain_text("Saved with 2 warning")
    _visible_rule(page, "grade", "grade5_without_death")
    _visible_rule(page, "onset_date", "after_end_of_study")
    expect(page.locator('[data-item="onset_date"] .warning[data-rule="onset_before_consent"]')).to_have_count(0)
    page.context.close()


def test_open_saes_of_the_site_and_the_investigators_report(server, chromium):
    now = datetime.now(UTC)
    with server.client("coordinator", "S01") as http:
        subject = enrol(http)
        assert save(http, subject["id"], "surgery").status_code == 201
        with clock_at(server, now - timedelta(hours=30)):
            late = http.post(entries_url(subject["id"], "adverse_event"), json={"items": AE}).json()["id"]
        recent = http.post(
            entries_url(subject["id"], "adverse_event"), json={"items": {**AE, "ctcae_term": "diarrhea"}}
        ).json()["id"]
    coordinator = sign_in(open_page(chromium, server), "coordinator")
    overdue_row = coordinator.locator(f'#sae-list tr[data-entry="{late}"]')
    due_row = coordinator.locator(f'#sae-list tr[data-entry="{recent}"]')
    expect(overdue_row).to_have_attribute("data-status", "overdue")
    expect(overdue_row).to_contain_text("SAE: report overdue")
    expect(overdue_row).to_contain_text(subject["mrn"])
    expect(due_row).to_have_attribute("data-status", "due")
    expect(due_row).to_contain_text("SAE: report due")
    rows = coordinator.locator("#sae-list tbody tr")
    statuses = [rows.nth(i).get_attribute("data-status") for i in range(rows.count())]
    assert statuses == sorted(statuses, key=lambda s: s != "overdue")  # the overdue ones first
    expect(coordinator.locator("#sae")).to_contain_text("within 24 hours")
    goto(coordinator, f"#/subjects/{subject['id']}")
    expect(coordinator.locator(f'#log-adverse_event tr[data-entry="{late}"] .badge.sae')).to_have_text(
        "SAE: report overdue"
    )
    goto(coordinator, f"#/subjects/{subject['id']}/entries/adverse_event/-/{recent}")
    expect(coordinator.locator("#sae-status")).to_have_text("SAE: report due")
    expect(coordinator.locator("#sae-report")).to_have_count(0)  # the investigator reports, not the site staff

    investigator = sign_in(open_page(chromium, server), "investigator")
    investigator.locator(f'#sae-list tr[data-entry="{late}"] a').click()
    expect(investigator.locator("main h1")).to_contain_text("Adverse event")
    expect(investigator.locator("#sae-status")).to_have_text("SAE: report overdue")
    investigator.click("#sae-report-submit")  # no reference: the browser asks for it, nothing sent
    expect(investigator.locator("#sae-reference")).to_be_focused()
    investigator.fill("#sae-reference", "CIOMS-2026-0042")
    investigator.evaluate(  # sent 40 hours ago, on this computer's clock: before the site knew of it
        """() => { const d = new Date(Date.now() - 40 * 3600 * 1000); const p = (n) => String(n).padStart(2, '0');
        document.getElementById('sae-reported-at').value =
          `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}`; }"""
    )
    investigator.click("#sae-report-submit")
    expect(investigator.locator("#sae-message .error")).to_contain_text(
        "before the site became aware"
    )  # the API refused
    expect(investigator.locator("#sae-status")).to_have_text("SAE: report overdue")
    investigator.fill("#sae-reported-at", "")
    investigator.click("#sae-report-submit")
    expect(investigator.locator("#sae-message")).to_have_text("Report recorded.")
    expect(investigator.locator("#sae-status")).to_have_text("SAE: reported")
    expect(investigator.locator("#sae-reported")).to_contain_text("late")
    expect(investigator.locator("#sae-reference-shown")).to_have_text("CIOMS-2026-0042")
    expect(investigator.locator("#sae-report")).to_have_count(0)  # once
    with server.client("monitor", "S01") as http:
        [reported] = [i for i in http.get("/api/v1/safety/sae").json()["items"] if i["entry_id"] == late]
    assert reported["status"] == "reported" and reported["reference"] == "CIOMS-2026-0042"
    assert reported["reported_by"] and reported["on_time"] is False
    goto(investigator, "#/")
    expect(investigator.locator(f'#sae-list tr[data-entry="{late}"]')).to_have_count(0)  # no longer open
    expect(investigator.locator(f'#sae-list tr[data-entry="{recent}"]')).to_be_visible()
    for page in (coordinator, investigator):
        page.context.close()


def test_sponsor_downloads_a_deidentified_export_and_sees_no_subject(server, chromium):
    with server.client("coordinator", "S01") as http:
        subject = enrol(http)
        assert save(http, subject["id"], "ctc").status_code == 201
    sponsor = sign_in(open_page(chromium, server), "sponsor", None)
    expect(sponsor.locator("#nav")).not_to_contain_text("Subjects")
    assert sponsor.evaluate("async () => (await fetch('/api/v1/subjects')).status") == 403
    sponsor.click('#nav a[href="#/exports"]')
    with sponsor.expect_download() as download:
        sponsor.click('#csv-exports a[href$="/ctc.csv"]')
    content = open(download.value.path(), encoding="utf-8").read()
    header = content.splitlines()[0]
    assert "ctc_count" in header and subject["mrn"] not in content and subject["id"] not in content
    sponsor.context.close()


def test_dev_sign_in_as_each_role_shows_what_that_role_may_do(server, chromium):
    page = open_page(chromium, server)
    shown = {}
    for role, site in (
        ("investigator", "S01"),
        ("coordinator", "S01"),
        ("monitor", "S01"),
        ("data_manager", None),
        ("sponsor", None),
        ("admin", None),
        ("ehr", "S01"),
    ):
        sign_in(page, role, site)
        shown[role] = sorted(page.locator("#nav a").all_inner_texts())
        expect(page.locator("#enrol")).to_have_count(1 if role in ("investigator", "coordinator") else 0)
        page.click("#logout")
        expect(page.locator("#dev-login")).to_be_visible()
    assert shown["coordinator"] == ["Open queries", "Subjects"]
    assert shown["sponsor"] == ["Exports"] and shown["admin"] == [] and shown["ehr"] == []
    assert shown["data_manager"] == ["Exports", "Open queries", "Subjects"]
    page.context.close()


def test_keyboard_only_sign_in_enrol_and_form_entry(server, chromium):
    page = open_page(chromium, server)
    page.goto("/")
    expect(page.locator("#dev-login")).to_be_visible()

    def tab_to(selector: str, limit: int = 1000) -> None:  # the screening log lists every subject of the site
        for _ in range(limit):
            page.keyboard.press("Tab")
            if page.evaluate("(s) => document.activeElement && document.activeElement.matches(s)", selector):
                return
        raise AssertionError(f"Tab never reached {selector}")

    tab_to("#dev-role")  # investigator, the first role, and S01, the first site, are preselected
    tab_to("#dev-login button")
    page.keyboard.press("Enter")
    expect(page.locator("#who")).to_contain_text("Investigator")
    tab_to("#enrol-mrn")
    mrn = secrets.token_hex(5)
    page.keyboard.type(mrn)
    page.keyboard.press("Tab")
    consent = day(14)
    page.keyboard.type(f"{consent[5:7]}{consent[8:10]}{consent[:4]}")  # en-US date field: month, day, year
    expect(page.locator("#enrol-consent")).to_have_value(consent)
    page.keyboard.press("Enter")
    expect(page.locator("main h1")).to_have_text(f"Subject {mrn}")
    tab_to('a[href$="/forms/ctc/PREOP"]')
    page.keyboard.press("Enter")
    expect(page.locator("#crf")).to_be_visible()
    tab_to("#item-ctc_count")
    page.keyboard.type("-1")
    page.keyboard.press("Enter")
    expect(page.locator('[data-item="ctc_count"] .error')).to_be_visible()
    expect(page.locator("#item-ctc_count")).to_be_focused()  # the error takes the focus to its item
    page.keyboard.press("Control+A")
    page.keyboard.type("2")
    page.keyboard.press("Enter")
    expect(page.locator("#form-messages")).to_contain_text("Saved")
    page.context.close()


@pytest.mark.parametrize("screen", ["sign-in", "home", "subject", "form", "entry", "conduct", "sae"])
def test_no_serious_accessibility_violations(server, chromium, screen):
    with server.client("coordinator", "S01") as http:
        subject = enrol(http)
        assert save(http, subject["id"], "labs", dict(VALID["labs"][2], platelets=5000)).status_code == 422
    page = open_page(chromium, server)
    if screen in ("conduct", "sae"):  # a randomised subject: endpoints with open items, a deviation, an open SAE
        with server.client("investigator", "S01") as http:
            subject_id, _ = randomised(server, http, "SORA")
            assess(http, subject_id, "recurrence", 92, recurrence=90)
            died(http, subject_id, 97, end=98)
            fatal = adverse_event(http, subject_id, 99, grade=5)
        sign_in(page, "investigator")
        if screen == "conduct":
            goto(page, f"#/subjects/{subject_id}")
            expect(page.locator("#endpoint-open-items li").first).to_be_visible()
        else:
            goto(page, f"#/subjects/{subject_id}/entries/adverse_event/-/{fatal['id']}")
            expect(page.locator("#sae-report")).to_be_visible()
            on_entry = axe_violations(page)  # the entry with its SAE clock and report form
            assert on_entry == [], on_entry
            goto(page, "#/")  # and the home screen with the open SAEs
            expect(page.locator(f'#sae-list tr[data-entry="{fatal["id"]}"]')).to_be_visible()
    elif screen == "sign-in":
        page.goto("/")
        expect(page.locator("#dev-login")).to_be_visible()
    else:
        sign_in(page, "coordinator")
        if screen == "subject":
            goto(page, f"#/subjects/{subject['id']}")
            expect(page.locator("#eligibility")).to_be_visible()
        elif screen == "form":
            open_form(page, subject["id"], "labs", "SCR")
            page.fill("#item-platelets", "5000")
            page.click("#save")
            expect(page.locator('[data-item="platelets"] .error')).to_be_visible()
        elif screen == "entry":  # a new adverse event, refused: text, checkboxes and errors at their items
            goto(page, f"#/subjects/{subject['id']}/entries/adverse_event/-/new")
            fill_item(page, "ctcae_term", "rash")
            fill_item(page, "serious", True)
            page.click("#save")
            expect(page.locator('[data-item="seriousness_criteria"] .error')).to_be_visible()
        else:
            expect(page.locator("#subjects")).to_be_visible()
    violations = axe_violations(page)
    assert violations == [], violations
    page.context.close()


def test_the_interface_speaks_the_sites_language_from_its_catalogue(server, chromium):
    page = sign_in(open_page(chromium, server), "coordinator")
    page.select_option("#lang", "zh")
    expect(page.locator("main h1")).to_have_text("筛选日志")
    expect(page.locator("html")).to_have_attribute("lang", "zh")
    page.reload()
    expect(page.locator("#enrol-title")).to_have_text("登记受试者")
    assert re.search("退出", page.locator("#logout").inner_text())
    page.context.close()
