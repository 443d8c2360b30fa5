"""GET /api/v1/reports/enrolment over HTTP on a database of its own: exact counts for data managers and
monitors (their sites only), small cells hidden for sponsors, nothing that identifies a subject."""

import secrets

import pytest

from ecrf.auth.actor import Actor
from ecrf.config import Settings
from ecrf.db import snapshot
from ecrf.reports import service
from ecrf.reports.suppression import hidden_cells
from tests.conftest import running_server
from testkit.databases import fresh_database
from tests.crf_support import VALID, day, enrol, entered_randomisation, path, save

REPORT = "/api/v1/reports/enrolment"
SCREENING_FORMS = ("surgery", "demographics", "baseline", "labs", "pathology", "afp", "history")


def _screened(http, site: str, **overrides) -> dict:
    subject = enrol(http, site)
    for form_id in SCREENING_FORMS:
        response = save(http, subject["id"], form_id, overrides.get(form_id))
        assert response.status_code in (200, 201), response.text
    return subject


def _randomised(server, http, site: str, arm: str) -> dict:
    """A version-1 allocation (the arm entered): the report counts what the store holds, whatever the method."""
    subject = _screened(http, site)
    entered_randomisation(server, subject["id"], site, {"arm": arm, "randomisation_date": day(22)})
    assert save(http, subject["id"], "ctc").status_code == 201
    return subject


@pytest.fixture(scope="module")
def study(database_url, tmp_path_factory):
    """S01: 6 enrolled only, 3 randomised (SORA, SORA, PD1_SORA; one randomisation form verified), 1 ineligible
    (ECOG 3). S02: 1 enrolled only, 1 randomised (PD1_SORA)."""
    tmp_path = tmp_path_factory.mktemp("reports")
    with fresh_database(database_url, tmp_path, "ecrf_reports") as url:
        settings = Settings(database_url=url, jwt_secret=secrets.token_urlsafe(32), export_worker=False, _env_file=None)
        with running_server(settings) as server:
            subjects = []
            with server.client("investigator", "S01") as http:
                subjects += [enrol(http, "S01") for _ in range(6)]
                subjects += [_randomised(server, http, "S01", arm) for arm in ("SORA", "SORA", "PD1_SORA")]
                subjects.append(_screened(http, "S01", baseline={**VALID["baseline"][2], "ecog": 3}))
            with server.client("monitor", "S01") as http:
                verified = http.post(path(subjects[6]["id"], "randomisation", "SCR") + "/verify")
                assert verified.status_code == 200, verified.text
            with server.client("coordinator", "S02") as http:
                subjects.append(enrol(http, "S02"))
                subjects.append(_randomised(server, http, "S02", "PD1_SORA"))
            server.subjects = subjects
            yield server


def _report(server, role: str, *sites: str) -> dict:
    with server.client(role, *sites) as http:
        response = http.get(REPORT)
    assert response.status_code == 200, response.text
    return response.json()


def _nonzero(counts: dict) -> dict:
    return {key: value for key, value in counts.items() if value != 0}


def _form(scope: dict, form_id: str, visit_id: str) -> dict:
    return next(entry for entry in scope["forms"] if (entry["form"], entry["visit"]) == (form_id, visit_id))


def test_a_data_manager_gets_exact_counts_per_site_and_overall(study):
    report = _report(study, "data_manager")
    assert report["study"] == "NCT04163237" and report["min_cell"] is None and report["hidden_cells"] == 0
    sites = {scope["site"]: scope for scope in report["sites"]}
    assert list(sites) == ["S01", "S02"]
    s01, s02, overall = sites["S01"], sites["S02"], report["overall"]

    assert (s01["subjects"], s02["subjects"], overall["subjects"]) == (10, 2, 12)
    assert _nonzero(s01["by_status"]) == {"candidate": 6, "eligible": 3, "ineligible": 1}
    assert _nonzero(s02["by_status"]) == {"candidate": 1, "eligible": 1}
    assert _nonzero(overall["by_status"]) == {"candidate": 7, "eligible": 4, "ineligible": 1}
    assert s01["eligibility"] == {"eligible": 3, "ineligible": 1, "incomplete": 6}
    assert overall["eligibility"] == {"eligible": 4, "ineligible": 1, "incomplete": 7}

    # v2: per stratum, the system's allocations only; these subjects' arms were entered (version 1)
    no_strata = {stratum: {"PD1_SORA": 0, "SORA": 0} for stratum in ("S01-A", "S01-BC", "S02-A", "S02-BC")}
    assert s01["randomised"] == {"total": 3, "by_arm": {"PD1_SORA": 1, "SORA": 2, "other": 0}, "by_stratum": no_strata}
    assert s02["randomised"] == {"total": 1, "by_arm": {"PD1_SORA": 1, "SORA": 0, "other": 0}, "by_stratum": no_strata}
    assert overall["randomised"] == {
        "total": 4,
        "by_arm": {"PD1_SORA": 2, "SORA": 2, "other": 0},
        "by_stratum": no_strata,
    }

    assert _form(s01, "randomisation", "SCR") == {
        "form": "randomisation",
        "visit": "SCR",
        "done": 3,
        "by_status": {"draft": 0, "complete": 2, "verified": 1, "signed": 0, "locked": 0},
    }
    assert _form(s01, "labs", "SCR")["done"] == 4 and _form(overall, "labs", "SCR")["done"] == 5
    ctc = {entry["visit"]: entry["done"] for entry in overall["forms"] if entry["form"] == "ctc"}
    assert ctc == {"PREOP": 0, "POD7": 4, "M1": 0, "M3": 0, "M6": 0, "M9": 0, "M12": 0}  # CTC timepoints done
    assert {(entry["form"], entry["visit"]) for entry in overall["forms"]} == {
        (form.id, visit) for form in study.runtime.study.forms for visit in form.visits
    }
    assert not any(scope["suppressed"] for scope in [*report["sites"], overall])


def _report_text(server, role: str) -> str:
    with server.client(role) as http:
        response = http.get(REPORT)
    assert response.status_code == 200
    return response.text


def test_counts_never_carry_ids_dates_or_identifiers(study):
    for role in ("data_manager", "sponsor", "monitor"):
        text = _report_text(study, role)
        for subject in study.subjects:
            for value in (subject["id"], subject["patient_id"], subject["mrn"], subject["consent_date"]):
                assert value not in text
        assert day(0) not in text and day(22) not in text


def test_a_site_limited_monitor_sees_only_its_sites(study):
    report = _report(study, "monitor", "S02")
    assert [scope["site"] for scope in report["sites"]] == ["S02"]
    assert report["overall"]["subjects"] == 2 and report["min_cell"] is None
    assert _nonzero(report["overall"]["by_status"]) == {"candidate": 1, "eligible": 1}
    assert report["overall"]["randomised"]["by_arm"] == {"PD1_SORA": 1, "SORA": 0, "other": 0}
    assert _form(report["overall"], "labs", "SCR")["done"] == 1

    everywhere = _report(study, "monitor")  # no `sites` claim: every site
    assert [scope["site"] for scope in everywhere["sites"]] == ["S01", "S02"]
    assert everywhere["overall"]["subjects"] == 12


def _cells(report: dict) -> dict[tuple, int | None]:
    """Every count of the report: (scope, table, key) -> value."""
    cells = {}
    for scope in [*report["sites"], {**report["overall"], "site": "*"}]:
        for table in ("by_status", "eligibility"):
            cells.update({(scope["site"], table, key): value for key, value in scope[table].items()})
        cells.update({(scope["site"], "arm", key): value for key, value in scope["randomised"]["by_arm"].items()})
        for entry in scope["forms"]:
            cells.update(
                {
                    (scope["site"], entry["form"], entry["visit"], key): value
                    for key, value in entry["by_status"].items()
                }
            )
    return cells


def test_a_sponsor_never_sees_a_small_cell(study):
    minimum = study.settings.report_min_cell
    exact, sponsor = _report(study, "data_manager"), _report(study, "sponsor")
    assert sponsor["min_cell"] == minimum == 5
    truth, shown = _cells(exact), _cells(sponsor)
    assert truth.keys() == shown.keys()
    for cell, value in shown.items():
        if value is None:
            continue
        assert value == truth[cell] and (value == 0 or value >= minimum), cell
    assert all(shown[cell] is None for cell, value in truth.items() if 0 < value < minimum)
    assert sponsor["hidden_cells"] == sum(value is None for value in shown.values())

    # exact enrolment per site; a line (a site's breakdown, or a category over the sites and overall) never
    # holds exactly one hidden count, which subtraction from its total would give back
    assert [scope["subjects"] for scope in sponsor["sites"]] == [10, 2] and sponsor["overall"]["subjects"] == 12
    for scope in [*sponsor["sites"], sponsor["overall"]]:
        for counts in (
            scope["by_status"],
            scope["eligibility"],
            scope["randomised"]["by_arm"],
            *(entry["by_status"] for entry in scope["forms"]),
        ):
            assert sum(value is None for value in counts.values()) != 1
    scopes = [*sponsor["sites"], sponsor["overall"]]
    for key in sponsor["overall"]["by_status"]:
        assert sum(scope["by_status"][key] is None for scope in scopes) != 1
    assert sponsor["overall"]["by_status"]["candidate"] == 7  # big enough, and protected by its hidden neighbours
    assert sponsor["overall"]["randomised"] == {
        "total": None,
        "by_arm": {"PD1_SORA": None, "SORA": None, "other": 0},
        "by_stratum": {stratum: {"PD1_SORA": 0, "SORA": 0} for stratum in ("S01-A", "S01-BC", "S02-A", "S02-BC")},
    }
    assert all(scope["suppressed"] for scope in scopes)


def test_the_threshold_is_a_setting_and_applies_to_callers_without_subject_access(study):
    sponsor = Actor(sub="sponsor", roles=frozenset({"sponsor"}))
    manager = Actor(sub="dm", roles=frozenset({"data_manager"}))
    with snapshot(study.runtime.engine) as session:
        off = service.enrolment(session, study.runtime.study, sponsor, min_cell=0)
        low = service.enrolment(session, study.runtime.study, sponsor, min_cell=2)
        default = service.enrolment(session, study.runtime.study, sponsor, min_cell=5)
        exact = service.enrolment(session, study.runtime.study, manager, min_cell=5)
    assert off == exact and off["min_cell"] is None and off["hidden_cells"] == 0
    assert low["min_cell"] == 2 and low["overall"]["by_status"]["candidate"] == 7
    assert low["sites"][0]["by_status"]["ineligible"] is None  # a single subject
    assert 0 < low["hidden_cells"] < default["hidden_cells"]


@pytest.mark.parametrize(
    "role,sites", [("investigator", ("S01",)), ("coordinator", ("S01",)), ("ehr", ("S01",)), ("admin", ())]
)
def test_roles_without_report_aggregate_get_403(study, role, sites):
    with study.client(role, *sites) as http:
        assert http.get(REPORT).status_code == 403
    with study.client() as anonymous:
        assert anonymous.get(REPORT).status_code == 401


def test_small_cell_rule_hides_small_counts_and_their_complements():
    rows, columns = ["S01", "S02", "all"], ["a", "b", "c"]
    values = {
        ("S01", "a"): 6,
        ("S01", "b"): 2,
        ("S01", "c"): 0,
        ("S02", "a"): 9,
        ("S02", "b"): 0,
        ("S02", "c"): 0,
        ("all", "a"): 15,
        ("all", "b"): 2,
        ("all", "c"): 0,
    }
    # S01.b and all.b are small; rows S01 and all then each hide their next smallest non-zero count (a), so
    # neither 2 follows from a published total (S01: 8, all: 17) nor from the column (all.a = S01.a + 9)
    assert hidden_cells(values, rows, columns, 5) == {("S01", "b"), ("all", "b"), ("S01", "a"), ("all", "a")}
    assert hidden_cells(values, rows, columns, 2) == set()
    lonely = {("S01", "a"): 3, ("S01", "b"): 0, ("all", "a"): 3, ("all", "b"): 0}
    assert hidden_cells(lonely, ["S01", "all"], ["a", "b"], 5) == set(lonely)  # a zero hidden when nothing else is
