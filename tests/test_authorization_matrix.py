"""The authorisation matrix (issue 6): every route x every role x own/other site, against the role model.

MATRIX below is written by hand from the role model (README.md, "Roles"), not read from
ecrf/auth/policy.py: it is the check of the policy against the spec. Every route of the app must have a
row, so a new route cannot be added without deciding who may call it.

Every row is exercised over real HTTP with real tokens, on SQLite and PostgreSQL, by every caller:

- site-limited callers carry `sites: ["S01"]` (investigator, coordinator, ehr and one monitor); study-wide
  callers carry no sites claim (data_manager, sponsor, admin and a second monitor). "own" data are at
  S01, "other" data at S02, all made through the API (subjects and forms, FHIR pushes by an S01 and an
  S02 ehr client, queries, export jobs);
- no token, and an expired token of a role the row allows: 401;
- a role the row does not allow: 403, on its own site's data and on the other site's;
- another site's data: the status of the row's `other` (404 where a path names them), exactly the answer
  an unknown id gets, so existence does not leak; lists, searches and reports leave them out;
- an allowed call: a 2xx (so never a 404 from scoping) to a request that is valid for the route;
- every call that must be refused changes nothing: row count, largest primary key, status tally and
  version sum of every table of the app, and the audit chain head, compared before and after it.

Per row, the refusals run first, against shared targets in the state an allowed call needs (a verified
form for /sign, ...); then the allowed calls, a write that uses up its target on a fresh one of its own.
"""

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from crf_support import VALID, enrol, path, save
from eligibility_support import compose, push
from fhir_builders import bundle, lab, patient, post, urn
from route_support import every_operation
from sqlalchemy import String, cast, func, literal_column, select, union_all
from sqlmodel import SQLModel

import ecrf.models  # noqa: F401 - every table of the app into SQLModel.metadata
from ecrf.app import create_app
from ecrf.audit.models import AuditHead
from ecrf.config import Settings
from ecrf.export import jobs
from ecrf.export.models import ExportJob

STUDY = "NCT04163237"
OWN, OTHER = "S01", "S02"
MISSING = "missing"  # targets that do not exist: the answer another site's data must get
FHIR_JSON = {"Content-Type": "application/fhir+json"}
ASYNC = {"Prefer": "respond-async"}
IDENTIFIER_SYSTEM = "urn:ecrf-test:authorization-matrix"
FORM = "ctc"  # the form the lifecycle rows use: one visit's entry is a single cheap save
VISIT = VALID[FORM][0]

# -- the role model -------------------------------------------------------------------------------------

INVESTIGATOR, COORDINATOR, MONITOR, DATA_MANAGER, SPONSOR, EHR, ADMIN, RANDOMISATION_MANAGER = (
    "investigator",
    "coordinator",
    "monitor",
    "data_manager",
    "sponsor",
    "ehr",
    "admin",
    "randomisation_manager",
)
EVERY_ROLE = frozenset({INVESTIGATOR, COORDINATOR, MONITOR, DATA_MANAGER, SPONSOR, EHR, ADMIN, RANDOMISATION_MANAGER})
DATA_ENTRY = frozenset({INVESTIGATOR, COORDINATOR})  # enrol, enter and edit data
CLINICAL_READ = DATA_ENTRY | {MONITOR, DATA_MANAGER}  # per-subject data, identifiers included
FHIR_READ = CLINICAL_READ | {EHR}  # the FHIR door; the ehr reads back its site's data
FHIR_WRITE = DATA_ENTRY | {EHR}  # data entry, and the ehr's pushes
AUDIT_READ = CLINICAL_READ | {ADMIN}  # the data's history; the admin's audit review
EXPORT = frozenset({SPONSOR, DATA_MANAGER})  # de-identified exports
JOB_READERS = EXPORT | {INVESTIGATOR}  # export jobs: exporters', and an investigator's archive
QUERY_READ = CLINICAL_READ  # the site answers them, monitor and data manager run them
QUERY_RAISE_CLOSE = frozenset({MONITOR, DATA_MANAGER})  # monitor: raise and close; data_manager: queries
QUERY_ANSWER = DATA_ENTRY  # investigator and coordinator: answer queries
AGGREGATE = frozenset({SPONSOR, DATA_MANAGER, MONITOR})  # sponsor: counts; data_manager: reports;
#                                                              monitor: it reads its sites' data, so their counts
CHAIN_CHECK = frozenset({ADMIN, DATA_MANAGER})  # admin: audit review; data_manager: a study-level report
ALLOCATE = DATA_ENTRY  # CRF-SPEC 6: the site randomises, by a dedicated action
LISTS = frozenset({RANDOMISATION_MANAGER})  # the unblinded statistician only: lists, slots, the log

PUBLIC = "public"  # no token needed
STUDY_WIDE = "study"  # about no site's data (the study definition, settings, study-level exports)
SITE = "site"  # the path or body names one site's data
LIST = "list"  # a list, search or report: another site's data are left out
OWNER = "owner"  # an export job: its owner's only


@dataclass(frozen=True)
class Expect:
    roles: frozenset[str]
    scope: str
    other: int | None = None  # the answer to an allowed role's call on another site's (owner's) data
    leak_check: bool = True  # ... which must be exactly the answer to the same call on an unknown target
    ok: range | frozenset[int] = range(200, 300)  # what an allowed call answers
    unseen: frozenset[str] = frozenset()  # roles for which these data do not exist, at their own site too


EVERYONE = Expect(EVERY_ROLE, PUBLIC)
SUBJECT_ROUTE = "/api/v1/subjects/{subject_id}"
FORM_ROUTE = SUBJECT_ROUTE + "/forms/{form_id}/{visit_id}"
ENTRIES_ROUTE = SUBJECT_ROUTE + "/forms/{form_id}/entries"  # a log form's (and every repeating form's) entries
VISIT_ENTRIES_ROUTE = FORM_ROUTE + "/entries"  # a repeating form's entries at one visit
LOG_FORM = "adverse_event"  # a log form: entries tied to no visit
REPEATING_FORM = "afp"  # a repeating form: entries at a visit
SERIOUS_AE = {
    "ctcae_term": "pneumonitis",
    "onset_date": VALID["labs"][1],
    "grade": 3,
    "serious": True,
    "seriousness_criteria": ["hospitalisation"],
    "outcome": "recovering",
}
AE_ENTRY = {"ctcae_term": "rash", "onset_date": VALID["labs"][1], "grade": 2, "serious": False, "outcome": "recovering"}
FHIR_TYPE = "/fhir/{resource_type:fhir_type}"
FHIR_OTHER_TYPE = "/fhir/{resource_type:fhir_other_type}"

MATRIX: dict[tuple[str, str], Expect] = {
    # public: health, capability statement, the API description
    ("GET", "/healthz"): EVERYONE,
    ("GET", "/fhir/metadata"): EVERYONE,
    ("GET", "/openapi.json"): EVERYONE,
    # SMART Backend Services: discovery and keys for everyone; the token endpoint authenticates by its body
    # (a client assertion), never by a bearer token, so every caller's empty request is a 400 OAuth error
    ("GET", "/fhir/.well-known/smart-configuration"): EVERYONE,
    ("GET", "/auth/jwks"): EVERYONE,
    ("POST", "/auth/token"): Expect(EVERY_ROLE, PUBLIC, ok=frozenset({400})),
    # the registry of machine clients: the admin's
    ("GET", "/api/v1/admin/clients"): Expect(frozenset({ADMIN}), STUDY_WIDE),
    ("POST", "/api/v1/admin/clients"): Expect(frozenset({ADMIN}), STUDY_WIDE),
    ("GET", "/api/v1/admin/clients/{client_id}"): Expect(frozenset({ADMIN}), STUDY_WIDE),
    ("POST", "/api/v1/admin/clients/{client_id}/disable"): Expect(frozenset({ADMIN}), STUDY_WIDE),
    ("POST", "/api/v1/admin/clients/{client_id}/enable"): Expect(frozenset({ADMIN}), STUDY_WIDE),
    ("GET", "/docs"): EVERYONE,
    ("GET", "/docs/oauth2-redirect"): EVERYONE,
    ("GET", "/redoc"): EVERYONE,
    # the web door (ecrf/web): the page, its files and sign-in are open; what it shows comes from /api/v1
    ("GET", "/"): EVERYONE,
    ("GET", "/web/{asset:path}"): EVERYONE,
    ("GET", "/web-auth/session"): EVERYONE,
    ("POST", "/web-auth/dev-login"): EVERYONE,  # dev mode only (the matrix's server is: HS256 dev secret)
    ("POST", "/web-auth/logout"): EVERYONE,
    ("GET", "/web-auth/oidc/login"): Expect(EVERY_ROLE, PUBLIC, ok=frozenset({404})),  # no provider configured here
    ("GET", "/web-auth/oidc/callback"): Expect(EVERY_ROLE, PUBLIC, ok=frozenset({404})),
    ("GET", "/docs/assets/{name}"): EVERYONE,
    # the study definition is nobody's data: every authenticated role (the ehr maps its codes with it)
    ("GET", "/api/v1/study"): Expect(EVERY_ROLE, STUDY_WIDE),
    ("GET", "/api/v1/forms"): Expect(EVERY_ROLE, STUDY_WIDE),
    ("GET", "/api/v1/forms/{form_id}"): Expect(EVERY_ROLE, STUDY_WIDE),
    ("GET", "/fhir/Questionnaire/{form_id}"): Expect(EVERY_ROLE, STUDY_WIDE),
    # ... and through the FHIR door, to the roles that have that door
    ("GET", "/fhir/ResearchStudy/{resource_id}"): Expect(FHIR_READ, STUDY_WIDE),
    # subjects: investigator and coordinator enrol at their sites (the site is in the body, so 403)
    ("POST", "/api/v1/subjects"): Expect(DATA_ENTRY, SITE, other=403, leak_check=False),
    ("GET", "/api/v1/subjects"): Expect(CLINICAL_READ, LIST),
    ("GET", SUBJECT_ROUTE): Expect(CLINICAL_READ, SITE, other=404),
    ("GET", SUBJECT_ROUTE + "/eligibility"): Expect(CLINICAL_READ, SITE, other=404),
    ("GET", SUBJECT_ROUTE + "/endpoints"): Expect(CLINICAL_READ, SITE, other=404),  # dates: identified roles
    ("GET", "/api/v1/eligibility"): Expect(CLINICAL_READ, LIST),
    ("GET", SUBJECT_ROUTE + "/audit"): Expect(AUDIT_READ, SITE, other=404),
    # forms: entry by the site, SDV by the monitor, signature by the investigator, lock by the data manager
    ("GET", FORM_ROUTE): Expect(CLINICAL_READ, SITE, other=404),
    ("PUT", FORM_ROUTE): Expect(DATA_ENTRY, SITE, other=404),
    ("POST", FORM_ROUTE + "/verify"): Expect(frozenset({MONITOR}), SITE, other=404),
    ("POST", FORM_ROUTE + "/sign"): Expect(frozenset({INVESTIGATOR}), SITE, other=404),
    ("POST", FORM_ROUTE + "/lock"): Expect(frozenset({DATA_MANAGER}), SITE, other=404),
    ("POST", FORM_ROUTE + "/unlock"): Expect(frozenset({DATA_MANAGER}), SITE, other=404),
    # entries of log and repeating forms: the same roles as a visit's form, entry by entry
    ("GET", ENTRIES_ROUTE): Expect(CLINICAL_READ, SITE, other=404),
    ("POST", ENTRIES_ROUTE): Expect(DATA_ENTRY, SITE, other=404),
    ("GET", ENTRIES_ROUTE + "/{entry_id}"): Expect(CLINICAL_READ, SITE, other=404),
    ("PUT", ENTRIES_ROUTE + "/{entry_id}"): Expect(DATA_ENTRY, SITE, other=404),
    ("POST", ENTRIES_ROUTE + "/{entry_id}/withdraw"): Expect(DATA_ENTRY, SITE, other=404),
    # serious adverse events: the investigator reports; the site and the monitors follow the open SAEs
    ("POST", ENTRIES_ROUTE + "/{entry_id}/sae-report"): Expect(frozenset({INVESTIGATOR}), SITE, other=404),
    ("GET", "/api/v1/safety/sae"): Expect(CLINICAL_READ, LIST),
    ("POST", ENTRIES_ROUTE + "/{entry_id}/verify"): Expect(frozenset({MONITOR}), SITE, other=404),
    ("POST", ENTRIES_ROUTE + "/{entry_id}/sign"): Expect(frozenset({INVESTIGATOR}), SITE, other=404),
    ("POST", ENTRIES_ROUTE + "/{entry_id}/lock"): Expect(frozenset({DATA_MANAGER}), SITE, other=404),
    ("POST", ENTRIES_ROUTE + "/{entry_id}/unlock"): Expect(frozenset({DATA_MANAGER}), SITE, other=404),
    ("GET", VISIT_ENTRIES_ROUTE): Expect(CLINICAL_READ, SITE, other=404),
    ("POST", VISIT_ENTRIES_ROUTE): Expect(DATA_ENTRY, SITE, other=404),
    ("GET", VISIT_ENTRIES_ROUTE + "/{entry_id}"): Expect(CLINICAL_READ, SITE, other=404),
    ("PUT", VISIT_ENTRIES_ROUTE + "/{entry_id}"): Expect(DATA_ENTRY, SITE, other=404),
    # data clarification queries: monitor and data manager raise, close (and reopen); the site answers
    ("POST", SUBJECT_ROUTE + "/queries"): Expect(QUERY_RAISE_CLOSE, SITE, other=404),
    ("GET", SUBJECT_ROUTE + "/queries"): Expect(QUERY_READ, SITE, other=404),
    ("GET", "/api/v1/queries"): Expect(QUERY_READ, LIST),
    ("GET", "/api/v1/queries/{query_id}"): Expect(QUERY_READ, SITE, other=404),
    ("POST", "/api/v1/queries/{query_id}/answer"): Expect(QUERY_ANSWER, SITE, other=404),
    ("POST", "/api/v1/queries/{query_id}/close"): Expect(QUERY_RAISE_CLOSE, SITE, other=404),
    ("POST", "/api/v1/queries/{query_id}/reopen"): Expect(QUERY_RAISE_CLOSE, SITE, other=404),
    # randomisation (CRF-SPEC 6): the site allocates; the subject's own allocation is read as the subject is;
    # lists, unused slots, the allocation log and their CSV exports are the randomisation manager's alone
    ("POST", SUBJECT_ROUTE + "/randomise"): Expect(ALLOCATE, SITE, other=404),
    ("GET", SUBJECT_ROUTE + "/randomisation"): Expect(CLINICAL_READ, SITE, other=404),
    ("POST", "/fhir/ResearchSubject/{resource_id}/$randomize"): Expect(ALLOCATE, SITE, other=404),
    ("GET", "/fhir/OperationDefinition/{resource_id}"): Expect(FHIR_READ, STUDY_WIDE),
    ("POST", SUBJECT_ROUTE + "/randomisation/notes"): Expect(frozenset({DATA_MANAGER}), SITE, other=404),
    ("GET", "/api/v1/randomisation/lists"): Expect(LISTS, STUDY_WIDE),
    ("GET", "/api/v1/randomisation/lists.csv"): Expect(LISTS, STUDY_WIDE),
    ("GET", "/api/v1/randomisation/lists/{stratum}"): Expect(LISTS, STUDY_WIDE),
    ("GET", "/api/v1/randomisation/allocations"): Expect(LISTS, STUDY_WIDE),
    ("GET", "/api/v1/randomisation/allocations.csv"): Expect(LISTS, STUDY_WIDE),
    # aggregate counts, per site of the caller's sites: never a subject
    ("GET", "/api/v1/reports/enrolment"): Expect(AGGREGATE, LIST),
    # administration: settings and who-saw-what are the admin's; the chain check also the data manager's
    ("GET", "/api/v1/admin/settings"): Expect(frozenset({ADMIN}), STUDY_WIDE),
    ("GET", "/api/v1/admin/audit/verify"): Expect(CHAIN_CHECK, STUDY_WIDE),
    ("GET", "/api/v1/access-log"): Expect(frozenset({ADMIN}), STUDY_WIDE),
    # de-identified exports: sponsor and data manager; a job and its files are its owner's only (404)
    ("GET", "/api/v1/exports/forms/{form_id}.csv"): Expect(EXPORT, STUDY_WIDE),
    ("GET", "/api/v1/exports/forms/{form_id}.csv.manifest"): Expect(EXPORT, STUDY_WIDE),
    ("GET", "/api/v1/exports/odm"): Expect(EXPORT, STUDY_WIDE),
    ("GET", "/api/v1/exports/sdtm"): Expect(EXPORT, STUDY_WIDE),
    ("GET", "/api/v1/exports/endpoints"): Expect(EXPORT, STUDY_WIDE),  # days only, always de-identified
    ("GET", "/fhir/$export"): Expect(EXPORT, STUDY_WIDE),
    ("GET", "/fhir/Group/{group_id}/$export"): Expect(EXPORT, STUDY_WIDE),
    ("POST", "/fhir/$export"): Expect(EXPORT, STUDY_WIDE),
    ("GET", "/fhir/Patient/$export"): Expect(EXPORT, STUDY_WIDE),
    ("POST", "/fhir/Patient/$export"): Expect(EXPORT, STUDY_WIDE),
    ("POST", "/fhir/Group/{group_id}/$export"): Expect(EXPORT, STUDY_WIDE),
    # ... an investigator's job is its own site's identified ODM archive (21 CFR 11.10(b))
    ("GET", "/fhir/$export-status/{job_id}"): Expect(JOB_READERS, OWNER, other=404),
    ("DELETE", "/fhir/$export-status/{job_id}"): Expect(JOB_READERS, OWNER, other=404),
    ("GET", "/fhir/$export-file/{job_id}/{file_name}"): Expect(JOB_READERS, OWNER, other=404),
    # the FHIR door. A write about another site's Patient: 422, as a reference to nothing is
    ("POST", "/fhir"): Expect(FHIR_WRITE, SITE, other=422),
    ("POST", "/fhir/"): Expect(FHIR_WRITE, SITE, other=422),
    ("POST", FHIR_TYPE): Expect(FHIR_WRITE, SITE, other=422),
    ("PUT", FHIR_TYPE): Expect(FHIR_WRITE, SITE, other=422),
    ("PUT", FHIR_TYPE + "/{resource_id}"): Expect(FHIR_WRITE, SITE, other=422),
    ("DELETE", FHIR_TYPE + "/{resource_id}"): Expect(FHIR_WRITE, SITE, other=204),  # v2: as an unknown id (R4)
    # a conditional delete that matches nothing visible is 204 and deletes nothing
    ("DELETE", FHIR_TYPE): Expect(FHIR_WRITE, SITE, other=204),
    ("GET", FHIR_TYPE): Expect(FHIR_READ, LIST),
    ("GET", FHIR_TYPE + "/{resource_id}"): Expect(FHIR_READ, SITE, other=404),
    ("GET", FHIR_TYPE + "/{resource_id}/_history"): Expect(FHIR_READ, SITE, other=404),
    ("GET", FHIR_TYPE + "/{resource_id}/_history/{version_id}"): Expect(FHIR_READ, SITE, other=404),
    ("GET", "/fhir/Patient/{patient_id}/$everything"): Expect(FHIR_READ, SITE, other=404),
    ("GET", "/fhir/OperationDefinition/Patient-everything"): EVERYONE,
    ("GET", FHIR_TYPE + "/_history"): Expect(FHIR_READ, LIST),
    ("GET", "/fhir/_history"): Expect(FHIR_READ, LIST),
    ("POST", FHIR_TYPE + "/_search"): Expect(FHIR_READ, LIST),
    ("PATCH", FHIR_TYPE + "/{resource_id}"): Expect(FHIR_WRITE, SITE, other=404),
    ("PATCH", FHIR_TYPE): Expect(FHIR_WRITE, SITE, other=404),
    # types the door does not keep: a precise refusal (404 not-supported) to those who have the door
    **{
        (method, template): Expect(FHIR_READ, STUDY_WIDE, ok=frozenset({404}))
        for method in ("GET", "POST", "PUT", "DELETE", "PATCH")
        for template in (FHIR_OTHER_TYPE, FHIR_OTHER_TYPE + "/{rest:path}")
    },
}


# Variants of a row where a parameter or the data's origin changes who may call it.
IDENTIFIED = "identified (deidentify=false)"
SITE_ARCHIVE = "a site's archive (site=, deidentify=false)"
ECRF_ENTERED = "data entered in the eCRF, not pushed by an ehr"
VARIANT_EXPECTATIONS: dict[tuple[str, str, str], Expect] = {
    # sponsors never get identifiers; a data manager may ask for them
    ("GET", "/fhir/$export", IDENTIFIED): Expect(frozenset({DATA_MANAGER}), STUDY_WIDE),
    ("GET", "/api/v1/exports/odm", IDENTIFIED): Expect(frozenset({DATA_MANAGER}), STUDY_WIDE),
    # a site's identified archive: the investigator of the site, the data manager of any
    ("GET", "/api/v1/exports/odm", SITE_ARCHIVE): Expect(
        frozenset({INVESTIGATOR, DATA_MANAGER}), SITE, other=404, leak_check=False
    ),
    ("GET", "/api/v1/exports/sdtm", IDENTIFIED): Expect(frozenset({DATA_MANAGER}), STUDY_WIDE),
    ("GET", "/fhir/Group/{group_id}/$export", IDENTIFIED): Expect(frozenset({DATA_MANAGER}), STUDY_WIDE),
    ("GET", "/api/v1/exports/forms/{form_id}.csv", IDENTIFIED): Expect(frozenset({DATA_MANAGER}), STUDY_WIDE),
    ("GET", "/api/v1/exports/forms/{form_id}.csv.manifest", IDENTIFIED): Expect(frozenset({DATA_MANAGER}), STUDY_WIDE),
    # the ehr reads back what it pushed, nothing else: data entered in the eCRF at its site do not exist for it
    ("GET", FHIR_TYPE + "/{resource_id}", ECRF_ENTERED): Expect(FHIR_READ, SITE, other=404, unseen=frozenset({EHR})),
    ("GET", FHIR_TYPE, ECRF_ENTERED): Expect(FHIR_READ, LIST, unseen=frozenset({EHR})),
    # ... so it cannot change or delete them either (its update names a Patient it does not see: 422)
    ("PUT", FHIR_TYPE + "/{resource_id}", ECRF_ENTERED): Expect(FHIR_WRITE, SITE, other=422, unseen=frozenset({EHR})),
    ("DELETE", FHIR_TYPE + "/{resource_id}", ECRF_ENTERED): Expect(
        FHIR_WRITE, SITE, other=204, unseen=frozenset({EHR})
    ),  # v2: as an unknown id (R4), nothing written
}


# -- callers -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Caller:
    name: str
    role: str | None
    sites: tuple[str, ...] = ()

    @property
    def site_limited(self) -> bool:
        return bool(self.sites)

    @property
    def sub(self) -> str:
        return "matrix-" + "".join(c if c.isalnum() else "-" for c in self.name)


CALLERS = (
    Caller("investigator@S01", INVESTIGATOR, (OWN,)),
    Caller("coordinator@S01", COORDINATOR, (OWN,)),
    Caller("monitor@S01", MONITOR, (OWN,)),
    Caller("monitor(all sites)", MONITOR),
    Caller("data_manager", DATA_MANAGER),
    Caller("sponsor", SPONSOR),
    Caller("ehr@S01", EHR, (OWN,)),
    Caller("admin", ADMIN),
    Caller("randomisation_manager", RANDOMISATION_MANAGER),
)
ANONYMOUS = Caller("no token", None)
EXPIRED = Caller("expired token", None)


class As:
    """One identity on the shared HTTP connection pool (a client per identity costs an SSL context each)."""

    def __init__(self, http: httpx.Client, token: str | None):
        self.http, self.auth = http, {"Authorization": f"Bearer {token}"} if token else {}

    def request(self, method: str, url: str, *, headers: dict[str, str] | None = None, **kwargs) -> httpx.Response:
        response = self.http.request(method, url, headers={**self.auth, **(headers or {})}, **kwargs)
        self.http.cookies.clear()  # a web sign-in row's session cookie must not follow the next identity
        return response

    def get(self, url: str, **kwargs) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs) -> httpx.Response:
        return self.request("POST", url, **kwargs)

    def put(self, url: str, **kwargs) -> httpx.Response:
        return self.request("PUT", url, **kwargs)


# -- the seeded world ----------------------------------------------------------------------------------


@dataclass
class Req:
    method: str
    url: str
    json: Any = None
    params: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    ids: tuple[str, ...] = ()  # the target's ids, masked when comparing with the unknown target's answer
    item: str | None = None  # lists: the id whose presence says whether the site's data were shown
    shown: Callable[[Any], Any] | None = None  # lists: the part of the body that shows data


def _expect(response: httpx.Response, status: int) -> httpx.Response:
    assert response.status_code == status, (
        f"seeding {response.request.method} {response.request.url}: {response.status_code} {response.text[:500]}"
    )
    return response


def observation(subject: str, identifier: str | None = None) -> dict[str, Any]:
    resource = lab(subject, "718-7", 13.1, "g/dL", "2026-03-02")
    if identifier:
        resource["identifier"] = [{"system": IDENTIFIER_SYSTEM, "value": identifier}]
    return resource


class World:
    """The data of one backend, made through the API by seeding identities of each site."""

    def __init__(self, server):
        self.server = server
        self.pool = httpx.Client(base_url=server.base_url, timeout=60)
        self.seed = {
            (role, site): As(self.pool, server.token(role, site, sub=self.seed_sub(role, site)))
            for role in (COORDINATOR, INVESTIGATOR, EHR)
            for site in (OWN, OTHER)
        }
        self.monitor = As(self.pool, server.token(MONITOR, sub="matrix-seed-monitor"))
        self.data_manager = As(self.pool, server.token(DATA_MANAGER, sub="matrix-seed-data-manager"))
        self.callers = {
            caller: As(self.pool, server.token(caller.role, *caller.sites, sub=caller.sub)) for caller in CALLERS
        }
        self.expired = {
            caller: As(self.pool, server.token(caller.role, *caller.sites, sub=caller.sub, ttl=-10))
            for caller in CALLERS
        }
        self.anonymous = As(self.pool, None)
        self.shared: dict[tuple, Any] = {}
        self.namespace = ""  # set for rows that change their target (see `mutating`)
        self.writes = 0  # bumped whenever seeding writes, so the fingerprint chain is taken again
        self.missing_id = str(uuid.uuid4())
        self.missing_hex = uuid.uuid4().hex

    @staticmethod
    def seed_sub(role: str, site: str) -> str:
        """The own site's FHIR data are pushed by the ehr caller itself: an ehr reads back what it pushed
        (another ehr client's pushes do not exist for it, tests/test_fhir_ehr_scope.py)."""
        ehr_caller = next(caller for caller in CALLERS if caller.role == EHR)
        return ehr_caller.sub if (role, (site,)) == (EHR, ehr_caller.sites) else f"matrix-seed-{role}-{site}"

    def once(self, key: tuple, fresh: bool, make: Callable[[], Any]) -> Any:
        key = (self.namespace, *key)
        if not fresh and key in self.shared:
            return self.shared[key]
        self.writes += 1
        made = make()
        if not fresh:
            self.shared[key] = made
        return made

    def subject(self, site: str, fresh: bool = False) -> str:
        if site == MISSING:
            return self.missing_id
        return self.once(("subject", site), fresh, lambda: enrol(self.seed[COORDINATOR, site], site)["id"])

    def eligible(self, site: str, fresh: bool = False) -> str:
        """A subject eligible today at the site (the FHIR door and two forms, by the site's coordinator)."""
        if site == MISSING:
            return self.missing_id

        def make() -> str:
            patient = compose()
            patient["resources"]["patient"]["identifier"][0]["system"] = self.server.runtime.study.site(site).mrn_system
            return push(self.seed[COORDINATOR, site], patient)

        return self.once(("eligible", site), fresh, make)

    def lists(self) -> None:
        """The allocation lists exist (generated once, as `ecrf serve` does at its first start)."""
        from ecrf.randomisation.service import generate

        runtime = self.server.runtime
        if generate(runtime.engine, runtime.settings, runtime.study, runtime.randomisation):
            self.writes += 1

    def form(self, state: str, site: str, fresh: bool = False) -> str:
        """The path of a form of a new subject: complete, verified, signed or locked."""
        if site == MISSING:
            return path(self.missing_id, FORM, VISIT)

        def make() -> str:
            subject_id = self.subject(site, fresh=True)
            _expect(save(self.seed[COORDINATOR, site], subject_id, FORM), 201)
            url = path(subject_id, FORM, VISIT)
            steps = [
                (self.monitor, "verify", None),
                (self.seed[INVESTIGATOR, site], "sign", {"meaning": "approved"}),
                (self.data_manager, "lock", None),
            ]
            for http, step, body in steps[: ["complete", "verified", "signed", "locked"].index(state)]:
                _expect(http.post(f"{url}/{step}", json=body), 200)
            return url

        return self.once(("form", state, site), fresh, make)

    def sae(self, site: str, fresh: bool = False) -> tuple[str, str]:
        """(subject id, entry id) of a serious adverse event of a new subject of the site (its clock running)."""
        if site == MISSING:
            return self.missing_id, self.missing_hex[:16]

        def make() -> tuple[str, str]:
            subject_id = self.subject(site, fresh=True)
            created = _expect(
                self.seed[COORDINATOR, site].post(_entries_url(subject_id), json={"items": SERIOUS_AE}), 201
            ).json()
            return subject_id, created["id"]

        return self.once(("sae", site), fresh, make)

    def entry(self, state: str, site: str, fresh: bool = False, visit: bool = False) -> tuple[str, str]:
        """(subject id, entry id) of an entry of a new subject: of the log form, or (visit) of the repeating
        form at its first visit; complete, verified, signed or locked."""
        if site == MISSING:
            return self.missing_id, self.missing_hex[:16]

        def make() -> tuple[str, str]:
            subject_id = self.subject(site, fresh=True)
            created = _expect(
                self.seed[COORDINATOR, site].post(_entries_url(subject_id, visit=visit), json=_entry_body(visit)), 201
            ).json()
            url = _entries_url(subject_id, created["id"], visit)
            steps = [
                (self.monitor, "verify", None),
                (self.seed[INVESTIGATOR, site], "sign", {"meaning": "approved"}),
                (self.data_manager, "lock", None),
            ]
            for http, step, body in steps[: ["complete", "verified", "signed", "locked"].index(state)]:
                _expect(http.post(f"{url}/{step}", json=body), 200)
            return subject_id, created["id"]

        return self.once(("entry", state, site, visit), fresh, make)

    def fhir(self, site: str, fresh: bool = False) -> dict[str, str]:
        """A Patient and an Observation (with an identifier) pushed in one transaction by the site's ehr."""
        if site == MISSING:
            return {"patient": self.missing_id, "observation": self.missing_id, "identifier": self.missing_hex}

        def make() -> dict[str, str]:
            patient_url, identifier = urn(), uuid.uuid4().hex
            body = bundle([post(patient(site=site), patient_url), post(observation(patient_url, identifier))])
            response = _expect(self.seed[EHR, site].post("/fhir", json=body, headers=FHIR_JSON), 200)
            ids = [entry["response"]["location"].split("/")[1] for entry in response.json()["entry"]]
            return {"patient": ids[0], "observation": ids[1], "identifier": identifier}

        return self.once(("fhir", site), fresh, make)

    def query(self, state: str, site: str, fresh: bool = False) -> str:
        """A data clarification query raised by a monitor on a subject of the site: open or closed."""
        if site == MISSING:
            return self.missing_hex

        def make() -> str:
            body = {"text": "Please confirm the CTC count against the source document."}
            raised = _expect(self.monitor.post(f"/api/v1/subjects/{self.subject(site)}/queries", json=body), 201)
            query_id = raised.json()["id"]
            if state == "closed":
                _expect(self.monitor.post(f"/api/v1/queries/{query_id}/close", json={"text": "resolved"}), 200)
            return query_id

        return self.once(("query", state, site), fresh, make)

    def entered(self, site: str, fresh: bool = False) -> dict[str, Any]:
        """The Observation a form save at the site wrote (through the eCRF door, by a coordinator)."""
        if site == MISSING:
            return {
                "observation": self.missing_id,
                "patient": self.missing_id,
                "content": observation(f"Patient/{self.missing_id}"),
            }

        def make() -> dict[str, Any]:
            http = self.seed[COORDINATOR, site]
            saved = _expect(save(http, self.subject(site, fresh=True), FORM), 201).json()
            reference = saved["items"]["ctc_count"]["resource"]
            content = _expect(self.seed[INVESTIGATOR, site].get(f"/fhir/{reference}"), 200).json()
            content.pop("meta", None)
            patient_id = content["subject"]["reference"].split("/")[1]
            return {"observation": reference.split("/")[1], "patient": patient_id, "content": content}

        return self.once(("entered", site), fresh, make)

    def job(self, owner: Caller | None, fresh: bool = False) -> dict[str, str]:
        """A finished de-identified export of Patients, kicked off by `owner`."""
        if owner is None:
            return {"id": self.missing_hex, "file": "Patient.ndjson"}

        def make() -> dict[str, str]:
            self.subject(OWN), self.subject(OTHER)  # something to export: de-identified exports hold subjects only
            http = self.callers[owner]
            if owner.role == INVESTIGATOR:  # its own site's identified ODM archive
                kick = http.get(
                    "/api/v1/exports/odm",
                    params={"site": owner.sites[0], "deidentify": "false", "mode": "archive"},
                    headers=ASYNC,
                )
            else:
                kick = http.get("/fhir/$export", params={"_type": "Patient"}, headers=ASYNC)
            status_url = _expect(kick, 202).headers["content-location"]
            settle(self.server)
            manifest = _expect(http.get(status_url), 200).json()
            assert manifest["output"], f"the export of {owner.name} wrote no file: {manifest}"
            return {"id": status_url.rsplit("/", 1)[1], "file": manifest["output"][0]["url"].rsplit("/", 1)[1]}

        return self.once(("job", owner.name), fresh, make)


# -- one valid request per route -----------------------------------------------------------------------
# A builder gets the world, whose data the call is about (OWN, OTHER or MISSING), whether the call may use
# up its target (an allowed write: then a fresh one), and the caller (export jobs are per owner).

Builder = Callable[[World, str, bool, Caller], Req]


def mutating(build: Builder) -> Builder:
    """Marks a builder whose request changes its target: its row gets shared targets of its own, so a
    refusal it wrongly lets through cannot spoil the targets of another row."""
    build.mutates = True
    return build


def _static(method: str, url: str, **kwargs) -> Builder:
    return lambda w, site, fresh, caller: Req(method, url, **kwargs)


def _subject_id(url: str) -> str:
    return url.split("/")[4]  # /api/v1/subjects/{id}/...


def _form_read(w: World, site: str, fresh: bool, caller: Caller) -> Req:
    url = w.form("complete", site)
    return Req("GET", url, ids=(_subject_id(url),))


@mutating
def _form_save(w: World, site: str, fresh: bool, caller: Caller) -> Req:
    """Saves with a reason, so saving the same form again is valid too: no target is used up."""
    subject_id = w.subject(site)
    visit, visit_date, items = VALID[FORM]
    body = {"visit_date": visit_date, "items": items, "reason": "authorisation matrix"}
    return Req("PUT", path(subject_id, FORM, visit), json=body, ids=(subject_id,))


def _form_step(step: str, state: str, body: dict[str, Any] | None = None) -> Builder:
    def build(w: World, site: str, fresh: bool, caller: Caller) -> Req:
        url = w.form(state, site, fresh)
        return Req("POST", f"{url}/{step}", json=body, ids=(_subject_id(url),))

    return mutating(build)


def _entries_url(subject_id: str, entry_id: str | None = None, visit: bool = False) -> str:
    base = (
        path(subject_id, REPEATING_FORM, VALID[REPEATING_FORM][0])
        if visit
        else f"/api/v1/subjects/{subject_id}/forms/{LOG_FORM}"
    )
    return f"{base}/entries" + (f"/{entry_id}" if entry_id else "")


def _entry_body(visit: bool) -> dict[str, Any]:
    if visit:
        return {"items": VALID[REPEATING_FORM][2], "visit_date": VALID[REPEATING_FORM][1]}
    return {"items": AE_ENTRY}


def _entries_list(visit: bool) -> Builder:
    def build(w: World, site: str, fresh: bool, caller: Caller) -> Req:
        subject_id, _ = w.entry("complete", site, visit=visit)
        return Req("GET", _entries_url(subject_id, visit=visit), ids=(subject_id,))

    return build


def _entry_add(visit: bool) -> Builder:
    def build(w: World, site: str, fresh: bool, caller: Caller) -> Req:
        subject_id = w.subject(site)
        return Req("POST", _entries_url(subject_id, visit=visit), json=_entry_body(visit), ids=(subject_id,))

    return mutating(build)


def _entry_read(visit: bool) -> Builder:
    def build(w: World, site: str, fresh: bool, caller: Caller) -> Req:
        subject_id, entry_id = w.entry("complete", site, visit=visit)
        return Req("GET", _entries_url(subject_id, entry_id, visit), ids=(subject_id, entry_id))

    return build


def _entry_save(visit: bool) -> Builder:
    """Saves with a reason, so saving the same entry again is valid too: no target is used up."""

    def build(w: World, site: str, fresh: bool, caller: Caller) -> Req:
        subject_id, entry_id = w.entry("complete", site, visit=visit)
        body = {**_entry_body(visit), "reason": "authorisation matrix"}
        return Req("PUT", _entries_url(subject_id, entry_id, visit), json=body, ids=(subject_id, entry_id))

    return mutating(build)


def _entry_step(step: str, state: str, body: dict[str, Any] | None = None) -> Builder:
    def build(w: World, site: str, fresh: bool, caller: Caller) -> Req:
        subject_id, entry_id = w.entry(state, site, fresh)
        return Req("POST", f"{_entries_url(subject_id, entry_id)}/{step}", json=body, ids=(subject_id, entry_id))

    return mutating(build)


@mutating
def _sae_report(w: World, site: str, fresh: bool, caller: Caller) -> Req:
    subject_id, entry_id = w.sae(site, fresh)
    return Req(
        "POST",
        f"{_entries_url(subject_id, entry_id)}/sae-report",
        json={"reference": "CIOMS-matrix"},
        ids=(subject_id, entry_id),
    )


def _subject_get(suffix: str) -> Builder:
    def build(w: World, site: str, fresh: bool, caller: Caller) -> Req:
        subject_id = w.subject(site)
        return Req("GET", f"/api/v1/subjects/{subject_id}{suffix}", ids=(subject_id,))

    return build


def _enrol(w: World, site: str, fresh: bool, caller: Caller) -> Req:
    body = {"site": site, "mrn": uuid.uuid4().hex[:12], "consent_date": VALID[FORM][1]}
    return Req("POST", "/api/v1/subjects", json=body)


def _listing(url: str, target: Callable[[World, str], str]) -> Builder:
    def build(w: World, site: str, fresh: bool, caller: Caller) -> Req:
        return Req(
            "GET", url, params={"site": site, "limit": 500}, item=target(w, site), shown=lambda body: body["items"]
        )

    return build


def _raise_query(w: World, site: str, fresh: bool, caller: Caller) -> Req:
    subject_id = w.subject(site)
    body = {"form_id": FORM, "visit_id": VISIT, "item_id": "ctc_count", "text": "Is the count per 5 mL?"}
    return Req("POST", f"/api/v1/subjects/{subject_id}/queries", json=body, ids=(subject_id,))


def _query_step(method: str, suffix: str, state: str, body: dict[str, Any] | None = None) -> Builder:
    def build(w: World, site: str, fresh: bool, caller: Caller) -> Req:
        query_id = w.query(state, site, fresh)
        return Req(method, f"/api/v1/queries/{query_id}{suffix}", json=body, ids=(query_id,))

    return mutating(build) if method != "GET" else build


@mutating
def _randomise(w: World, site: str, fresh: bool, caller: Caller) -> Req:
    """An allowed call allocates a fresh eligible subject (201); a shared one would answer its repeat (200)."""
    subject_id = w.eligible(site, fresh)
    return Req("POST", f"/api/v1/subjects/{subject_id}/randomise", ids=(subject_id,))


@mutating
def _fhir_randomize(w: World, site: str, fresh: bool, caller: Caller) -> Req:
    subject_id = w.eligible(site, fresh)
    return Req("POST", f"/fhir/ResearchSubject/{subject_id}/$randomize", headers=FHIR_JSON, ids=(subject_id,))


@mutating
def _randomisation_note(w: World, site: str, fresh: bool, caller: Caller) -> Req:
    """A note on an allocated subject (allocated once, by the site's coordinator); notes add up, nothing is used up."""
    subject_id = w.eligible(site)
    if site != MISSING:
        w.once(
            ("allocated", site),
            False,
            lambda: _expect(w.seed[COORDINATOR, site].post(f"/api/v1/subjects/{subject_id}/randomise"), 201),
        )
    return Req(
        "POST",
        f"/api/v1/subjects/{subject_id}/randomisation/notes",
        json={"text": "randomised in error"},
        ids=(subject_id,),
    )


def _lists(url: str) -> Builder:
    def build(w: World, site: str, fresh: bool, caller: Caller) -> Req:
        w.lists()
        return Req("GET", url)

    return build


def _report(w: World, site: str, fresh: bool, caller: Caller) -> Req:
    w.subject(OWN), w.subject(OTHER)  # both sites have subjects to count
    return Req("GET", "/api/v1/reports/enrolment", item=site, shown=lambda body: [s["site"] for s in body["sites"]])


def _job_owner(caller: Caller, site: str) -> Caller | None:
    """OWN: the caller's own job (a sponsor's for callers who may not export); OTHER: another owner's."""
    if site == MISSING:
        return None
    exporters = [c for c in CALLERS if c.role in JOB_READERS]
    mine = caller if caller in exporters else next(c for c in exporters if c.role == SPONSOR)
    return mine if site == OWN else next(c for c in exporters if c != mine)


def _job(method: str, operation: str = "$export-status") -> Builder:
    def build(w: World, site: str, fresh: bool, caller: Caller) -> Req:
        job = w.job(_job_owner(caller, site), fresh)
        tail = f"/{job['file']}" if operation == "$export-file" else ""
        return Req(method, f"/fhir/{operation}/{job['id']}{tail}", ids=(job["id"],))

    return mutating(build) if method != "GET" else build


def _site_archive(w: World, site: str, fresh: bool, caller: Caller) -> Req:
    return Req(
        "GET",
        "/api/v1/exports/odm",
        params={"site": site if site != MISSING else "S99", "deidentify": "false", "mode": "archive"},
        headers=ASYNC,
    )


def _kick_off(url: str, **params) -> Builder:
    return _static("GET", url, params={"_type": "Patient", **params}, headers=ASYNC)


def _post_kick_off(url: str) -> Builder:
    body = {"resourceType": "Parameters", "parameter": [{"name": "_type", "valueString": "Patient"}]}
    return _static("POST", url, json=body, headers={**ASYNC, **FHIR_JSON})


CLIENT_JWKS = {
    "keys": [
        {
            "kty": "EC",
            "crv": "P-256",
            "kid": "matrix",
            "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
            "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0",
        }
    ]
}


def _client_body() -> dict:
    return {
        "name": f"matrix-{uuid.uuid4().hex[:8]}",
        "role": "ehr",
        "site": OWN,
        "scopes": "system/Observation.cs",
        "jwks": CLIENT_JWKS,
    }


def _client_id(w: World) -> str:
    if getattr(w, "smart_client", None) is None:
        from ecrf.auth.actor import SYSTEM
        from ecrf.smart import service

        w.smart_client = service.add_client(
            w.server.runtime.engine, SYSTEM, w.server.runtime.study, **_client_body()
        ).id
        w.writes += 1
    return w.smart_client


def _client_route(method: str, tail: str = "") -> Builder:
    def build(w: World, site: str, fresh: bool, caller: Caller) -> Req:
        return Req(method, f"/api/v1/admin/clients/{_client_id(w)}{tail}")

    return mutating(build) if method != "GET" else build


@mutating
def _client_add(w: World, site: str, fresh: bool, caller: Caller) -> Req:
    return Req("POST", "/api/v1/admin/clients", json=_client_body())


def _fhir_bundle(url: str) -> Builder:
    def build(w: World, site: str, fresh: bool, caller: Caller) -> Req:
        patient_id = w.fhir(site)["patient"]
        body = bundle([post(observation(f"Patient/{patient_id}"))])
        return Req("POST", url, json=body, headers=FHIR_JSON, ids=(patient_id,))

    return build


def _fhir_create(w: World, site: str, fresh: bool, caller: Caller) -> Req:
    patient_id = w.fhir(site)["patient"]
    return Req(
        "POST", "/fhir/Observation", json=observation(f"Patient/{patient_id}"), headers=FHIR_JSON, ids=(patient_id,)
    )


def _fhir_conditional_update(w: World, site: str, fresh: bool, caller: Caller) -> Req:
    patient_id, identifier = w.fhir(site)["patient"], uuid.uuid4().hex
    return Req(
        "PUT",
        "/fhir/Observation",
        params={"identifier": f"{IDENTIFIER_SYSTEM}|{identifier}"},
        json=observation(f"Patient/{patient_id}", identifier),
        headers=FHIR_JSON,
        ids=(patient_id,),
    )


@mutating
def _fhir_update(w: World, site: str, fresh: bool, caller: Caller) -> Req:
    """A new version of the site's Observation, about its own Patient: no target is used up."""
    data = w.fhir(site)
    body = {**observation(f"Patient/{data['patient']}", data["identifier"]), "id": data["observation"]}
    return Req(
        "PUT",
        f"/fhir/Observation/{data['observation']}",
        json=body,
        headers=FHIR_JSON,
        ids=(data["patient"], data["observation"]),
    )


@mutating
def _fhir_delete(w: World, site: str, fresh: bool, caller: Caller) -> Req:
    data = w.fhir(site, fresh)
    return Req("DELETE", f"/fhir/Observation/{data['observation']}", ids=(data["observation"],))


@mutating
def _fhir_conditional_delete(w: World, site: str, fresh: bool, caller: Caller) -> Req:
    data = w.fhir(site, fresh)
    return Req(
        "DELETE",
        "/fhir/Observation",
        params={"identifier": f"{IDENTIFIER_SYSTEM}|{data['identifier']}"},
        ids=(data["identifier"],),
    )


def _fhir_read(suffix: str) -> Builder:
    def build(w: World, site: str, fresh: bool, caller: Caller) -> Req:
        observation_id = w.fhir(site)["observation"]
        return Req("GET", f"/fhir/Observation/{observation_id}{suffix}", ids=(observation_id,))

    return build


def _everything(w: World, site: str, fresh: bool, caller: Caller) -> Req:
    patient_id = w.fhir(site)["patient"]
    return Req("GET", f"/fhir/Patient/{patient_id}/$everything", ids=(patient_id,))


def _fhir_search(w: World, site: str, fresh: bool, caller: Caller) -> Req:
    observation_id = w.fhir(site)["observation"]
    return Req(
        "GET",
        "/fhir/Observation",
        params={"_id": observation_id},
        item=observation_id,
        shown=lambda body: [entry.get("resource") for entry in body.get("entry") or []],
    )


def _fhir_history(url: str) -> Builder:
    def build(w: World, site: str, fresh: bool, caller: Caller) -> Req:
        observation_id = w.fhir(site)["observation"]
        params = {"_count": 500, **({"_type": "Observation"} if url == "/fhir/_history" else {})}
        return Req(
            "GET",
            url,
            params=params,
            item=observation_id,
            shown=lambda body: [entry.get("resource") for entry in body.get("entry") or []],
        )

    return build


def _fhir_post_search(w: World, site: str, fresh: bool, caller: Caller) -> Req:
    observation_id = w.fhir(site)["observation"]
    return Req(
        "POST",
        "/fhir/Observation/_search",
        params={"_id": observation_id},
        item=observation_id,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        shown=lambda body: [entry.get("resource") for entry in body.get("entry") or []],
    )


JSON_PATCH = {"Content-Type": "application/json-patch+json"}
STATUS_PATCH = [{"op": "replace", "path": "/status", "value": "final"}]


@mutating
def _fhir_patch(w: World, site: str, fresh: bool, caller: Caller) -> Req:
    data = w.fhir(site)
    return Req(
        "PATCH",
        f"/fhir/Observation/{data['observation']}",
        json=STATUS_PATCH,
        headers=JSON_PATCH,
        ids=(data["observation"],),
    )


@mutating
def _fhir_conditional_patch(w: World, site: str, fresh: bool, caller: Caller) -> Req:
    data = w.fhir(site)
    return Req(
        "PATCH",
        "/fhir/Observation",
        params={"identifier": f"{IDENTIFIER_SYSTEM}|{data['identifier']}"},
        json=STATUS_PATCH,
        headers=JSON_PATCH,
        ids=(data["identifier"],),
    )


def _entered_read(w: World, site: str, fresh: bool, caller: Caller) -> Req:
    observation_id = w.entered(site)["observation"]
    return Req("GET", f"/fhir/Observation/{observation_id}", ids=(observation_id,))


def _entered_search(w: World, site: str, fresh: bool, caller: Caller) -> Req:
    observation_id = w.entered(site)["observation"]
    return Req(
        "GET",
        "/fhir/Observation",
        params={"_id": observation_id},
        item=observation_id,
        shown=lambda body: [entry.get("resource") for entry in body.get("entry") or []],
    )


@mutating
def _entered_update(w: World, site: str, fresh: bool, caller: Caller) -> Req:
    """The form's Observation sent back as it is: a new version, valid while the form is not locked."""
    data = w.entered(site)
    body = {**data["content"], "id": data["observation"]}
    return Req(
        "PUT",
        f"/fhir/Observation/{data['observation']}",
        json=body,
        headers=FHIR_JSON,
        ids=(data["observation"], data["patient"]),
    )


@mutating
def _entered_delete(w: World, site: str, fresh: bool, caller: Caller) -> Req:
    observation_id = w.entered(site, fresh)["observation"]
    return Req("DELETE", f"/fhir/Observation/{observation_id}", ids=(observation_id,))


def _unkept_type(method: str, url: str) -> Builder:
    body = {"resourceType": "Claim", "status": "active"} if method in ("POST", "PUT", "PATCH") else None
    return _static(method, url, json=body, headers=FHIR_JSON)


REQUESTS: dict[tuple[str, str], Builder] = {
    ("GET", "/healthz"): _static("GET", "/healthz"),
    ("GET", "/fhir/metadata"): _static("GET", "/fhir/metadata"),
    ("GET", "/openapi.json"): _static("GET", "/openapi.json"),
    ("GET", "/docs"): _static("GET", "/docs"),
    ("GET", "/docs/oauth2-redirect"): _static("GET", "/docs/oauth2-redirect"),
    ("GET", "/redoc"): _static("GET", "/redoc"),
    ("GET", "/"): _static("GET", "/"),
    ("GET", "/web/{asset:path}"): _static("GET", "/web/app.js"),
    ("GET", "/web-auth/session"): _static("GET", "/web-auth/session"),
    ("POST", "/web-auth/dev-login"): _static("POST", "/web-auth/dev-login", json={"role": "monitor"}),
    ("POST", "/web-auth/logout"): _static("POST", "/web-auth/logout", json={}),
    ("GET", "/web-auth/oidc/login"): _static("GET", "/web-auth/oidc/login"),
    ("GET", "/web-auth/oidc/callback"): _static("GET", "/web-auth/oidc/callback", params={"state": "s", "code": "c"}),
    ("GET", "/docs/assets/{name}"): _static("GET", "/docs/assets/swagger-ui.css"),
    ("GET", "/api/v1/study"): _static("GET", "/api/v1/study"),
    ("GET", "/api/v1/forms"): _static("GET", "/api/v1/forms"),
    ("GET", "/api/v1/forms/{form_id}"): _static("GET", f"/api/v1/forms/{FORM}"),
    ("GET", "/fhir/Questionnaire/{form_id}"): _static("GET", f"/fhir/Questionnaire/{FORM}"),
    ("GET", "/fhir/ResearchStudy/{resource_id}"): _static("GET", f"/fhir/ResearchStudy/{STUDY}"),
    ("POST", "/api/v1/subjects"): _enrol,
    ("GET", "/api/v1/subjects"): _listing("/api/v1/subjects", World.subject),
    ("GET", SUBJECT_ROUTE): _subject_get(""),
    ("GET", SUBJECT_ROUTE + "/eligibility"): _subject_get("/eligibility"),
    ("GET", SUBJECT_ROUTE + "/endpoints"): _subject_get("/endpoints"),
    ("GET", "/api/v1/eligibility"): _listing("/api/v1/eligibility", World.subject),
    ("GET", SUBJECT_ROUTE + "/audit"): _subject_get("/audit"),
    ("GET", FORM_ROUTE): _form_read,
    ("PUT", FORM_ROUTE): _form_save,
    ("POST", FORM_ROUTE + "/verify"): _form_step("verify", "complete"),
    ("POST", FORM_ROUTE + "/sign"): _form_step("sign", "verified", {"meaning": "I approve the data of this form"}),
    ("POST", FORM_ROUTE + "/lock"): _form_step("lock", "signed"),
    ("POST", FORM_ROUTE + "/unlock"): _form_step("unlock", "locked", {"reason": "correction needed"}),
    ("GET", ENTRIES_ROUTE): _entries_list(visit=False),
    ("POST", ENTRIES_ROUTE): _entry_add(visit=False),
    ("GET", ENTRIES_ROUTE + "/{entry_id}"): _entry_read(visit=False),
    ("PUT", ENTRIES_ROUTE + "/{entry_id}"): _entry_save(visit=False),
    ("POST", ENTRIES_ROUTE + "/{entry_id}/withdraw"): _entry_step("withdraw", "complete", {"reason": "wrong subject"}),
    ("POST", ENTRIES_ROUTE + "/{entry_id}/sae-report"): _sae_report,
    ("GET", "/api/v1/safety/sae"): _listing("/api/v1/safety/sae", lambda w, site: w.sae(site)[1]),
    ("POST", ENTRIES_ROUTE + "/{entry_id}/verify"): _entry_step("verify", "complete"),
    ("POST", ENTRIES_ROUTE + "/{entry_id}/sign"): _entry_step("sign", "verified", {"meaning": "I approve this entry"}),
    ("POST", ENTRIES_ROUTE + "/{entry_id}/lock"): _entry_step("lock", "signed"),
    ("POST", ENTRIES_ROUTE + "/{entry_id}/unlock"): _entry_step("unlock", "locked", {"reason": "correction needed"}),
    ("GET", VISIT_ENTRIES_ROUTE): _entries_list(visit=True),
    ("POST", VISIT_ENTRIES_ROUTE): _entry_add(visit=True),
    ("GET", VISIT_ENTRIES_ROUTE + "/{entry_id}"): _entry_read(visit=True),
    ("PUT", VISIT_ENTRIES_ROUTE + "/{entry_id}"): _entry_save(visit=True),
    ("POST", SUBJECT_ROUTE + "/queries"): _raise_query,
    ("GET", SUBJECT_ROUTE + "/queries"): _subject_get("/queries"),
    ("GET", "/api/v1/queries"): _listing("/api/v1/queries", lambda w, site: w.query("open", site)),
    ("GET", "/api/v1/queries/{query_id}"): _query_step("GET", "", "open"),
    ("POST", "/api/v1/queries/{query_id}/answer"): _query_step("POST", "/answer", "open", {"text": "Yes, per 5 mL."}),
    ("POST", "/api/v1/queries/{query_id}/close"): _query_step("POST", "/close", "open", {"text": "resolved"}),
    ("POST", "/api/v1/queries/{query_id}/reopen"): _query_step("POST", "/reopen", "closed", {"text": "source differs"}),
    ("POST", SUBJECT_ROUTE + "/randomise"): _randomise,
    ("GET", SUBJECT_ROUTE + "/randomisation"): _subject_get("/randomisation"),
    ("POST", "/fhir/ResearchSubject/{resource_id}/$randomize"): _fhir_randomize,
    ("POST", SUBJECT_ROUTE + "/randomisation/notes"): _randomisation_note,
    ("GET", "/fhir/OperationDefinition/{resource_id}"): _static(
        "GET", "/fhir/OperationDefinition/ResearchSubject-randomize"
    ),
    ("GET", "/api/v1/randomisation/lists"): _lists("/api/v1/randomisation/lists"),
    ("GET", "/api/v1/randomisation/lists.csv"): _lists("/api/v1/randomisation/lists.csv"),
    ("GET", "/api/v1/randomisation/lists/{stratum}"): _lists("/api/v1/randomisation/lists/S01-A"),
    ("GET", "/api/v1/randomisation/allocations"): _lists("/api/v1/randomisation/allocations"),
    ("GET", "/api/v1/randomisation/allocations.csv"): _lists("/api/v1/randomisation/allocations.csv"),
    ("GET", "/api/v1/reports/enrolment"): _report,
    ("GET", "/api/v1/admin/settings"): _static("GET", "/api/v1/admin/settings"),
    ("GET", "/api/v1/admin/audit/verify"): _static("GET", "/api/v1/admin/audit/verify"),
    ("GET", "/api/v1/access-log"): _static("GET", "/api/v1/access-log"),
    ("GET", "/api/v1/exports/forms/{form_id}.csv"): _static("GET", f"/api/v1/exports/forms/{FORM}.csv"),
    ("GET", "/api/v1/exports/forms/{form_id}.csv.manifest"): _static(
        "GET", f"/api/v1/exports/forms/{FORM}.csv.manifest"
    ),
    ("GET", "/fhir/$export"): _kick_off("/fhir/$export"),
    ("GET", "/api/v1/exports/odm"): _kick_off("/api/v1/exports/odm"),
    ("GET", "/api/v1/exports/sdtm"): _kick_off("/api/v1/exports/sdtm"),
    ("GET", "/api/v1/exports/endpoints"): _kick_off("/api/v1/exports/endpoints"),
    ("GET", "/fhir/Group/{group_id}/$export"): _kick_off(f"/fhir/Group/{STUDY}/$export"),
    ("POST", "/fhir/$export"): _post_kick_off("/fhir/$export"),
    ("GET", "/fhir/Patient/$export"): _kick_off("/fhir/Patient/$export"),
    ("POST", "/fhir/Patient/$export"): _post_kick_off("/fhir/Patient/$export"),
    ("POST", "/fhir/Group/{group_id}/$export"): _post_kick_off(f"/fhir/Group/{STUDY}/$export"),
    ("GET", "/fhir/.well-known/smart-configuration"): _static("GET", "/fhir/.well-known/smart-configuration"),
    ("GET", "/auth/jwks"): _static("GET", "/auth/jwks"),
    ("POST", "/auth/token"): _static("POST", "/auth/token", json={"grant_type": "client_credentials"}),
    ("GET", "/api/v1/admin/clients"): _static("GET", "/api/v1/admin/clients"),
    ("POST", "/api/v1/admin/clients"): _client_add,
    ("GET", "/api/v1/admin/clients/{client_id}"): _client_route("GET"),
    ("POST", "/api/v1/admin/clients/{client_id}/disable"): _client_route("POST", "/disable"),
    ("POST", "/api/v1/admin/clients/{client_id}/enable"): _client_route("POST", "/enable"),
    ("GET", "/fhir/$export-status/{job_id}"): _job("GET"),
    ("DELETE", "/fhir/$export-status/{job_id}"): _job("DELETE"),
    ("GET", "/fhir/$export-file/{job_id}/{file_name}"): _job("GET", "$export-file"),
    ("POST", "/fhir"): _fhir_bundle("/fhir"),
    ("POST", "/fhir/"): _fhir_bundle("/fhir/"),
    ("POST", FHIR_TYPE): _fhir_create,
    ("PUT", FHIR_TYPE): _fhir_conditional_update,
    ("PUT", FHIR_TYPE + "/{resource_id}"): _fhir_update,
    ("DELETE", FHIR_TYPE + "/{resource_id}"): _fhir_delete,
    ("DELETE", FHIR_TYPE): _fhir_conditional_delete,
    ("GET", FHIR_TYPE): _fhir_search,
    ("GET", FHIR_TYPE + "/{resource_id}"): _fhir_read(""),
    ("GET", "/fhir/Patient/{patient_id}/$everything"): _everything,
    ("GET", "/fhir/OperationDefinition/Patient-everything"): _static(
        "GET", "/fhir/OperationDefinition/Patient-everything"
    ),
    ("GET", FHIR_TYPE + "/{resource_id}/_history"): _fhir_read("/_history"),
    ("GET", FHIR_TYPE + "/{resource_id}/_history/{version_id}"): _fhir_read("/_history/1"),
    ("GET", FHIR_TYPE + "/_history"): _fhir_history("/fhir/Observation/_history"),
    ("GET", "/fhir/_history"): _fhir_history("/fhir/_history"),
    ("POST", FHIR_TYPE + "/_search"): _fhir_post_search,
    ("PATCH", FHIR_TYPE + "/{resource_id}"): _fhir_patch,
    ("PATCH", FHIR_TYPE): _fhir_conditional_patch,
    **{
        (method, FHIR_OTHER_TYPE): _unkept_type(method, "/fhir/Claim")
        for method in ("GET", "POST", "PUT", "DELETE", "PATCH")
    },
    **{
        (method, FHIR_OTHER_TYPE + "/{rest:path}"): _unkept_type(method, "/fhir/Claim/e1")
        for method in ("GET", "POST", "PUT", "DELETE", "PATCH")
    },
}


VARIANT_REQUESTS: dict[tuple[str, str, str], Builder] = {
    ("GET", "/fhir/$export", IDENTIFIED): _kick_off("/fhir/$export", deidentify="false"),
    ("GET", "/api/v1/exports/odm", IDENTIFIED): _kick_off("/api/v1/exports/odm", deidentify="false"),
    ("GET", "/api/v1/exports/odm", SITE_ARCHIVE): _site_archive,
    ("GET", "/api/v1/exports/sdtm", IDENTIFIED): _kick_off("/api/v1/exports/sdtm", deidentify="false"),
    ("GET", "/fhir/Group/{group_id}/$export", IDENTIFIED): _kick_off(
        f"/fhir/Group/{STUDY}/$export", deidentify="false"
    ),
    ("GET", "/api/v1/exports/forms/{form_id}.csv", IDENTIFIED): _static(
        "GET", f"/api/v1/exports/forms/{FORM}.csv", params={"deidentify": "false"}
    ),
    ("GET", "/api/v1/exports/forms/{form_id}.csv.manifest", IDENTIFIED): _static(
        "GET", f"/api/v1/exports/forms/{FORM}.csv.manifest", params={"deidentify": "false"}
    ),
    ("GET", FHIR_TYPE + "/{resource_id}", ECRF_ENTERED): _entered_read,
    ("GET", FHIR_TYPE, ECRF_ENTERED): _entered_search,
    ("PUT", FHIR_TYPE + "/{resource_id}", ECRF_ENTERED): _entered_update,
    ("DELETE", FHIR_TYPE + "/{resource_id}", ECRF_ENTERED): _entered_delete,
}


# -- the database fingerprint --------------------------------------------------------------------------


def _as_text(*values) -> Any:
    joined = None
    for value in values:
        part = func.coalesce(cast(value, String), "")
        joined = part if joined is None else joined + "|" + part
    return joined


def _fingerprint_query():
    """One statement: per table of the app its row count, largest primary key (each key column) and
    version sum, per status value its row count (workflow changes made in place), and the audit chain
    head."""
    parts = []
    for table in SQLModel.metadata.sorted_tables:
        values = [func.count(), *(func.max(column) for column in table.primary_key.columns)]
        if "version" in table.c:
            values.append(func.sum(table.c.version))
        parts.append(
            select(literal_column(f"'{table.name}'", String).label("k"), _as_text(*values).label("v")).select_from(
                table
            )
        )
        if "status" in table.c:
            label = literal_column(f"'{table.name}.status='", String) + table.c.status
            parts.append(select(label.label("k"), _as_text(func.count()).label("v")).group_by(table.c.status))
    parts.append(
        select(
            literal_column("'audit chain head'", String).label("k"),
            _as_text(AuditHead.last_seq, AuditHead.last_hash).label("v"),
        )
    )
    return union_all(*parts)


FINGERPRINT = _fingerprint_query()


def fingerprint(engine) -> dict[str, str]:
    with engine.connect() as connection:
        return dict(connection.execute(FINGERPRINT).all())


def _changes(before: dict[str, str], after: dict[str, str]) -> str:
    return "; ".join(
        f"{name}: {before.get(name)} -> {after.get(name)}"
        for name in sorted(set(before) | set(after))
        if before.get(name) != after.get(name)
    )


def settle(server, timeout: float = 60) -> None:
    """Wait until no export job is queued or running: the worker writes when it finishes one."""
    deadline = time.monotonic() + timeout
    while True:
        with server.runtime.engine.connect() as connection:
            active = connection.execute(
                select(func.count()).select_from(ExportJob).where(ExportJob.status.in_(jobs.ACTIVE))
            ).scalar_one()
        if not active:
            return
        assert time.monotonic() < deadline, "export jobs did not finish in time"
        time.sleep(0.05)


# -- running the matrix --------------------------------------------------------------------------------

ALLOWED, UNAUTHENTICATED, FORBIDDEN, OTHERS, HIDDEN = "allowed", "401", "403", "other", "hidden"


@dataclass(frozen=True)
class Call:
    caller: Caller
    site: str
    outcome: str


def plan(expect: Expect) -> list[Call]:
    """Every caller x own/other data, with the outcome the role model gives."""
    calls = []
    for site in (OWN, OTHER) if expect.scope in (SITE, LIST, OWNER) else (OWN,):
        for caller in (ANONYMOUS, EXPIRED, *CALLERS):
            if expect.scope == PUBLIC:
                outcome = ALLOWED
            elif caller in (ANONYMOUS, EXPIRED):
                outcome = UNAUTHENTICATED
            elif caller.role in expect.unseen:
                outcome = HIDDEN if expect.scope == LIST else OTHERS
            elif caller.role not in expect.roles:
                outcome = FORBIDDEN
            elif site == OWN or (expect.scope in (SITE, LIST) and not caller.site_limited):
                outcome = ALLOWED
            else:
                outcome = HIDDEN if expect.scope == LIST else OTHERS
            calls.append(Call(caller, site, outcome))
    return calls


def _masked(response: httpx.Response, ids: tuple[str, ...]) -> tuple[int, str]:
    text = response.text
    for value in ids:
        text = text.replace(value, "<id>")
    return response.status_code, text


class Matrix:
    """One row: its refusals (each checked to change nothing), then its allowed calls."""

    def __init__(self, server, world: World, name: str, method: str, expect: Expect, build: Builder):
        self.server, self.world, self.name, self.method = server, world, name, method
        self.expect, self.build = expect, build
        self.mismatches: list[str] = []
        self.state: dict[str, str] = {}
        self.writes = -1

    def identity(self, caller: Caller) -> As:
        if caller is ANONYMOUS:
            return self.world.anonymous
        if caller is EXPIRED:  # of a role the row allows, so expiry is the only reason to refuse it
            allowed = next((c for c in CALLERS if c.role in self.expect.roles - self.expect.unseen), CALLERS[0])
            return self.world.expired[allowed]
        return self.world.callers[caller]

    def send(self, caller: Caller, req: Req) -> httpx.Response:
        return self.identity(caller).request(req.method, req.url, json=req.json, params=req.params, headers=req.headers)

    def fail(self, call: Call, req: Req, response: httpx.Response, expected: str) -> None:
        self.mismatches.append(
            f"{call.caller.name} on {call.site} data: {req.method} {req.url}"
            f"{'?' + str(httpx.QueryParams(req.params)) if req.params else ''} -> "
            f"{response.status_code} {response.text[:200]!r}; expected {expected}"
        )

    def measured(self, caller: Caller, req: Req) -> tuple[httpx.Response, str]:
        """Send, and say what it changed in the database (the fingerprints form a chain)."""
        if self.writes != self.world.writes:  # seeding wrote since the last fingerprint
            self.state, self.writes = fingerprint(self.server.runtime.engine), self.world.writes
        response = self.send(caller, req)
        after = fingerprint(self.server.runtime.engine)
        changed, self.state = _changes(self.state, after), after
        return response, changed

    def shows(self, caller: Caller, req: Req, response: httpx.Response) -> bool:
        """Whether the list shows `req.item`, following pages (other tests' data share the server)."""
        offset = 0
        while True:
            body = response.json()
            if req.item in json.dumps(req.shown(body)):
                return True
            total, limit = body.get("total") or 0, body.get("limit") or 0
            offset += limit
            if not limit or offset >= total:
                return False
            response = self.send(caller, Req(req.method, req.url, params={**(req.params or {}), "offset": offset}))
            self.writes = -1  # a page read may log access: take the chain again

    def refused(self, call: Call) -> None:
        req = self.build(self.world, call.site, False, call.caller)
        response, changed = self.measured(call.caller, req)
        if changed:
            self.fail(call, req, response, f"a refusal to change nothing, but it changed {changed}")
        if call.outcome in (UNAUTHENTICATED, FORBIDDEN):
            if response.status_code != int(call.outcome):
                self.fail(call, req, response, call.outcome)
        elif call.outcome == HIDDEN:
            if response.status_code != 200 or self.shows(call.caller, req, response):
                self.fail(call, req, response, f"200 without {req.item} (data it may not see)")
        else:
            if response.status_code != self.expect.other:
                self.fail(call, req, response, f"{self.expect.other} (data it may not see: another site's or owner's)")
            if self.expect.leak_check:
                self.same_as_unknown(call, req, response)

    def same_as_unknown(self, call: Call, req: Req, response: httpx.Response) -> None:
        unknown = self.build(self.world, MISSING, False, call.caller)
        answer, changed = self.measured(call.caller, unknown)
        if changed:
            self.fail(call, unknown, answer, f"a call on an unknown target to change nothing, but it changed {changed}")
        ids = (*req.ids, *unknown.ids)
        if _masked(response, ids) != _masked(answer, ids):
            self.fail(
                call,
                req,
                response,
                f"what an unknown target gets, not to leak existence: {answer.status_code} {answer.text[:200]!r}",
            )

    def allowed(self, call: Call) -> None:
        req = self.build(self.world, call.site, self.method != "GET", call.caller)
        response = self.send(call.caller, req)
        if response.status_code not in self.expect.ok:
            shown = "" if self.expect.ok == range(200, 300) else f" ({', '.join(map(str, sorted(self.expect.ok)))})"
            self.fail(call, req, response, "allowed" + shown)
        elif req.item is not None and not self.shows(call.caller, req, response):
            self.fail(call, req, response, f"{req.item} in the answer")
        settle(self.server)

    def run(self) -> list[str]:
        calls = plan(self.expect)
        settle(self.server)
        self.world.namespace = self.name if getattr(self.build, "mutates", False) else ""
        try:
            for call in calls:
                if call.outcome != ALLOWED:
                    self.refused(call)
            for call in calls:
                if call.outcome == ALLOWED:
                    self.allowed(call)
        finally:
            self.world.namespace = ""
        return self.mismatches


@pytest.fixture(scope="module")
def world(server):
    seeded = World(server)
    yield seeded
    seeded.pool.close()


def _route_id(route: tuple[str, str]) -> str:
    return f"{route[0]} {route[1]}"


def test_every_route_of_the_app_has_a_row_in_the_matrix():
    """Deny by default: a route nobody decided the matrix of fails here, by name."""
    app = create_app(Settings(database_url="sqlite://", jwt_secret="matrix", _env_file=None))
    routes = every_operation(app)
    assert len(routes) > 30, "the route walk found too few routes to be meaningful"
    missing = sorted(routes - set(MATRIX))
    stale = sorted(set(MATRIX) - routes)
    assert not missing, "routes without a row in the authorisation matrix: " + ", ".join(map(_route_id, missing))
    assert not stale, "matrix rows for routes the app does not have: " + ", ".join(map(_route_id, stale))
    assert set(REQUESTS) == set(MATRIX), "rows without a request: " + ", ".join(
        map(_route_id, sorted(set(MATRIX) ^ set(REQUESTS)))
    )


@pytest.mark.parametrize("route", sorted(MATRIX), ids=_route_id)
def test_route_matrix(server, world, route):
    mismatches = Matrix(server, world, _route_id(route), route[0], MATRIX[route], REQUESTS[route]).run()
    assert not mismatches, f"{_route_id(route)}: {len(mismatches)} mismatch(es) with the role model:\n" + "\n".join(
        mismatches
    )


@pytest.mark.parametrize("variant", sorted(VARIANT_EXPECTATIONS), ids=lambda v: f"{v[0]} {v[1]} [{v[2]}]")
def test_route_variant_matrix(server, world, variant):
    assert variant[:2] in MATRIX and set(VARIANT_REQUESTS) == set(VARIANT_EXPECTATIONS)
    name = f"{_route_id(variant[:2])} [{variant[2]}]"
    mismatches = Matrix(server, world, name, variant[0], VARIANT_EXPECTATIONS[variant], VARIANT_REQUESTS[variant]).run()
    assert not mismatches, f"{name}: {len(mismatches)} mismatch(es) with the role model:\n" + "\n".join(mismatches)
