"""Randomisation by the system (issue 14, CRF-SPEC version 2 section 6): stratified permuted blocks from an
HMAC_DRBG, concealed until allocation, one slot per subject in the allocating transaction, no undo.

The offline tests use the generator as the service does; the HTTP tests run on SQLite and PostgreSQL."""

import math
import os
import json
import shutil
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session, select

from ecrf.audit.models import AuditEntry
from ecrf.config import REPO_FORMS_DIR, Settings
from ecrf.randomisation import lists
from ecrf.randomisation.drbg import HmacDrbg
from ecrf.randomisation.models import RandomisationAllocation
from ecrf.randomisation.scheme import SchemeError, load_scheme
from study_model.loader import load_study
from tests.conftest import running_server
from tests.crf_support import enrol
from tests.eligibility_support import TODAY, compose, push, save_form

DATA = Path(__file__).resolve().parent / "data" / "randomisation_2to1"
LOCAL = "http://example.org/fhir/CodeSystem/nct04163237"
FHIR_JSON = {"Content-Type": "application/fhir+json"}
STUDY = load_study(REPO_FORMS_DIR)
SCHEME = load_scheme(REPO_FORMS_DIR, STUDY)
OTHER_ROLES = [
    ("investigator", "S01"),
    ("coordinator", "S01"),
    ("monitor", "S01"),
    ("data_manager", None),
    ("sponsor", None),
    ("ehr", "S01"),
    ("admin", None),
]


def bclc(code: str) -> dict:
    return {"resources": {"bclc_stage": {"valueCodeableConcept": {"coding": [{"system": LOCAL, "code": code}]}}}}


def eligible(http, variant: dict | None = None, study: str | None = None, site: str = "S01") -> str:
    patient = compose(variant)
    if study:
        patient["resources"]["research_subject"]["study"]["reference"] = f"ResearchStudy/{study}"
    if site != "S01":
        patient["resources"]["patient"]["identifier"][0]["system"] = STUDY.site(site).mrn_system
    return push(http, patient)


def randomise(http, subject_id: str):
    return http.post(f"/api/v1/subjects/{subject_id}/randomise")


# -- the generator, offline ---------------------------------------------------------------------------


def test_hmac_drbg_matches_the_nist_test_vector():
    """NIST CAVP HMAC_DRBG SHA-256, no reseed, no prediction resistance, first vector (1024 bits, 2nd call)."""
    drbg = HmacDrbg(
        bytes.fromhex("ca851911349384bffe89de1cbdc46e6831e44d34a4fb935ee285dd14b71a7488"),
        bytes.fromhex("659ba96c601dc69fc902940805ec0ca8"),
    )
    drbg.generate(128)
    assert drbg.generate(128).hex() == (
        "e528e9abf2dece54d47c7e75e5fe302149f817ea9fb4bee6f4199697d04d5b89d54fbb978a15b5c443c9ec21036d2460b6f73eba"
        "d0dc2aba6e624abf07745bc107694bb7547bb0995f70de25d6b29e2d3011bb19d27676c07162c8b5ccde0668961df86803482cb3"
        "7ed6d5c0bb8d50cf1f50d476aa0458bdaba806f48be9dcb8"
    )


def test_lists_are_reproducible_from_the_secret_and_differ_per_secret_and_stratum():
    first = lists.generate(b"secret-1", STUDY.id, SCHEME, "S01-A")
    assert first == lists.generate(b"secret-1", STUDY.id, SCHEME, "S01-A")
    assert [s.arm for s in first] != [s.arm for s in lists.generate(b"secret-2", STUDY.id, SCHEME, "S01-A")]
    assert [s.arm for s in first] != [s.arm for s in lists.generate(b"secret-1", STUDY.id, SCHEME, "S01-BC")]
    assert len(first) >= 200 and SCHEME.list_length == 200  # CRF-SPEC 6: at least 2 x planned size
    assert lists.checksum(STUDY.id, "S01-A", first) == lists.checksum(STUDY.id, "S01-A", list(first))


def _blocks(slots):
    blocks = {}
    for slot in slots:
        blocks.setdefault(slot.block, []).append(slot)
    return list(blocks.values())


@pytest.mark.parametrize("stratum", SCHEME.strata)
def test_blocks_are_balanced_sizes_equally_likely_and_arms_not_predictable(stratum):
    """10,000 allocations per stratum, from the generator as the service seeds it (only the list length is
    raised). Every block holds each arm equally; block sizes 2 and 4 are equally frequent (two-sided binomial
    z-test, |z| < 3.89, p < 0.0001); and given everything blocking implies (the block's size and the arms
    already in it) the next arm is a fair draw: the PD1_SORA count equals the sum of the conditional
    probabilities within |z| < 3.89, as it does, separately, at the first slot of every block."""
    scheme = load_scheme(REPO_FORMS_DIR, STUDY)
    object.__setattr__(scheme, "list_length", 10_000)
    slots = lists.generate(b"balance-test-secret", STUDY.id, scheme, stratum)
    blocks = _blocks(slots)
    assert len(slots) >= 10_000
    for block in blocks:
        assert len(block) == block[0].block_size in (2, 4)
        assert Counter(s.arm for s in block) == {"PD1_SORA": len(block) // 2, "SORA": len(block) // 2}
    sizes = Counter(block[0].block_size for block in blocks)
    n = len(blocks)
    assert abs(sizes[2] - n / 2) / math.sqrt(n / 4) < 3.89, sizes

    expected = variance = observed = 0.0
    first_observed = 0
    for block in blocks:
        left = {"PD1_SORA": len(block) // 2, "SORA": len(block) // 2}
        for position, slot in enumerate(block):
            p = left["PD1_SORA"] / (len(block) - position)
            expected, variance = expected + p, variance + p * (1 - p)
            observed += slot.arm == "PD1_SORA"
            first_observed += position == 0 and slot.arm == "PD1_SORA"
            left[slot.arm] -= 1
    assert abs(observed - expected) / math.sqrt(variance) < 3.89
    assert abs(first_observed - n / 2) / math.sqrt(n / 4) < 3.89


def test_a_2_to_1_scheme_is_data():
    scheme = load_scheme(_study_copy_dir(), STUDY)
    assert scheme.ratio == {"PD1_SORA": 2, "SORA": 1} and scheme.strata == ("early", "later")
    slots = lists.generate(b"k", STUDY.id, scheme, "later")
    for block in _blocks(slots):
        assert Counter(s.arm for s in block) == {"PD1_SORA": 2 * len(block) // 3, "SORA": len(block) // 3}


def test_a_scheme_that_does_not_fit_the_study_is_refused(tmp_path):
    shutil.copytree(REPO_FORMS_DIR, tmp_path / "forms")
    spec = yaml.safe_load((REPO_FORMS_DIR / "randomisation.yaml").read_text())
    spec.update(ratio={"PD1_SORA": 1, "PLACEBO": 1}, block_sizes=[3])
    (tmp_path / "forms" / "randomisation.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(SchemeError, match="ratio") as refused:
        load_scheme(tmp_path / "forms", STUDY)
    assert "block_sizes" in str(refused.value)


_COPY: dict[str, Path] = {}


def _study_copy_dir() -> Path:
    """forms/ with study id TEST-2TO1 and the 2:1 scheme of tests/data/randomisation_2to1."""
    if "dir" not in _COPY:
        import tempfile

        target = Path(tempfile.mkdtemp(prefix="ecrf-2to1-")) / "forms"
        shutil.copytree(REPO_FORMS_DIR, target)
        study = (target / "study.yaml").read_text().replace("id: NCT04163237", "id: TEST-2TO1", 1)
        (target / "study.yaml").write_text(study)
        shutil.copy(DATA / "randomisation.yaml", target / "randomisation.yaml")
        _COPY["dir"] = target
    return _COPY["dir"]


# -- over HTTP ------------------------------------------------------------------------------------------


def test_randomise_allocates_writes_the_subject_and_answers_a_repeat(server):
    with server.client("investigator", "S01") as http:
        subject_id = eligible(http)
        first = randomise(http, subject_id)
        assert first.status_code == 201, first.text
        allocation = first.json()
        assert allocation["arm"] in ("PD1_SORA", "SORA") and allocation["stratum"] == "S01-BC"  # bclc-B
        assert allocation["randomisation_date"] == TODAY.isoformat() and allocation["method"] == "system"
        number = allocation["randomisation_number"]
        assert number.startswith("R-S01-") and len(number) == len("R-S01-0001") and number[6:].isdigit()
        again = randomise(http, subject_id)
        assert again.status_code == 200 and again.json() == allocation
        assert http.get(f"/api/v1/subjects/{subject_id}/randomisation").json() == allocation

        subject = http.get(f"/fhir/ResearchSubject/{subject_id}").json()
        assert subject["status"] == "on-study" and subject["assignedArm"] == allocation["arm"]
        assert {"use": "official", "system": SCHEME.identifier_system, "value": number} in subject["identifier"]
        form = http.get(f"/api/v1/subjects/{subject_id}/forms/randomisation/SCR").json()
        assert form["items"]["arm"]["value"] == allocation["arm"]
        assert form["items"]["randomisation_date"]["value"] == TODAY.isoformat()
        assert form["eligibility_basis"]["overall"] == "eligible"
        frozen = http.get(f"/api/v1/subjects/{subject_id}/eligibility").json()
        assert frozen["frozen"] is True and frozen["randomised"] is True
        assert http.get(f"/api/v1/subjects/{subject_id}").json()["arm"] == allocation["arm"]
        patient_id = http.get(f"/api/v1/subjects/{subject_id}").json()["patient_id"]
    with Session(server.runtime.engine) as session:
        entries = session.exec(
            select(AuditEntry).where(AuditEntry.patient_id == patient_id, AuditEntry.action == "randomisation.allocate")
        ).all()
    assert len(entries) == 1 and entries[0].new_value == f"{number} {allocation['arm']}"
    assert entries[0].reason.startswith("stratum S01-BC, slot ") and entries[0].actor_sub == "dev-investigator"


def test_the_fhir_operation_allocates_and_is_in_the_capability_statement(server):
    with server.client("coordinator", "S01") as http:
        subject_id = eligible(http, bclc("bclc-A"))
        response = http.post(f"/fhir/ResearchSubject/{subject_id}/$randomize", headers=FHIR_JSON)
        assert response.status_code == 201, response.text
        values = {p["name"]: p for p in response.json()["parameter"]}
        assert values["stratum"]["valueString"] == "S01-A" and values["arm"]["valueString"] in ("PD1_SORA", "SORA")
        again = http.post(f"/fhir/ResearchSubject/{subject_id}/$randomize", headers=FHIR_JSON)
        assert again.status_code == 200 and again.json() == response.json()
        assert (
            http.get(f"/api/v1/subjects/{subject_id}/randomisation").json()["randomisation_number"]
            == values["randomisationNumber"]["valueString"]
        )
        definition = http.get("/fhir/OperationDefinition/ResearchSubject-randomize").json()
        assert definition["resourceType"] == "OperationDefinition" and definition["code"] == "randomize"
    metadata = server.client().get("/fhir/metadata").json()
    subject = next(r for r in metadata["rest"][0]["resource"] if r["type"] == "ResearchSubject")
    assert {"name": "randomize", "definition": definition["url"]} in subject["operation"]


def test_a_typed_arm_is_refused_as_derived(server):
    with server.client("investigator", "S01") as http:
        subject_id = eligible(http)
        refused = save_form(
            http,
            subject_id,
            "randomisation",
            {
                "visit": "SCR",
                "visit_date": TODAY.isoformat(),
                "items": {"arm": "PD1_SORA", "randomisation_date": TODAY.isoformat()},
            },
            expect=422,
        )
        assert {(e["item"], e["rule"]) for e in refused.json()["errors"]} == {
            ("arm", "derived"),
            ("randomisation_date", "derived"),
        }
        assert http.get(f"/fhir/ResearchSubject/{subject_id}").json().get("assignedArm") is None
        assert http.get(f"/api/v1/subjects/{subject_id}/randomisation").json() == {
            "subject_id": subject_id,
            "randomised": False,
        }


def test_ineligible_or_unconsented_subjects_are_refused_and_nothing_is_allocated(server):
    with server.client("investigator", "S01") as http:
        blocked = eligible(http, bclc("bclc-D"))
        refused = randomise(http, blocked)
        assert refused.status_code == 409
        assert {(e["item"], e["rule"]) for e in refused.json()["errors"]} == {("I03_bclc_abc", "not_met")}
        candidate = enrol(http, "S01")["id"]
        assert randomise(http, candidate).status_code == 409
        assert http.get(f"/api/v1/subjects/{blocked}/randomisation").json()["randomised"] is False
        fhir = http.post(f"/fhir/ResearchSubject/{blocked}/$randomize", headers=FHIR_JSON)
        assert fhir.status_code == 409 and fhir.json()["resourceType"] == "OperationOutcome"
    with Session(server.runtime.engine) as session:
        assert (
            session.exec(
                select(RandomisationAllocation).where(RandomisationAllocation.subject_id.in_([blocked, candidate]))
            ).all()
            == []
        )
    with server.client("investigator", "S02") as other_site:
        assert randomise(other_site, blocked).status_code == 404  # another site's subject: unknown


def test_concurrent_randomisations_take_distinct_consecutive_slots(server):
    with server.client("coordinator", "S02") as http:  # S02-A: no other test allocates there
        subjects = [eligible(http, bclc("bclc-A"), site="S02") for _ in range(16)]
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda s: randomise(server.client("coordinator", "S02"), s), subjects))
        assert [a.status_code for a in answers] == [201] * 16, [a.text for a in answers if a.status_code != 201]
        repeat_of = subjects[0]
        lone = eligible(http, bclc("bclc-A"), site="S02")
        with ThreadPoolExecutor(8) as pool:
            repeats = list(pool.map(lambda _: randomise(server.client("investigator", "S02"), lone), range(8)))
    assert sorted(r.status_code for r in repeats) == [200] * 7 + [201]
    assert len({r.json()["randomisation_number"] for r in repeats}) == 1
    with Session(server.runtime.engine) as session:
        rows = session.exec(
            select(RandomisationAllocation).where(
                RandomisationAllocation.study_id == STUDY.id, RandomisationAllocation.stratum == "S02-A"
            )
        ).all()
    taken = sorted(row.sequence for row in rows if row.subject_id in subjects)
    assert taken == list(range(taken[0], taken[0] + 16))
    assert len({row.subject_id for row in rows}) == len(rows)
    assert [row.subject_id for row in rows].count(lone) == 1 and repeat_of in {row.subject_id for row in rows}
    numbers = sorted(int(row.number.rsplit("-", 1)[1]) for row in rows)
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))  # the site's sequence has no gaps


def test_only_the_randomisation_manager_sees_lists_and_unused_slots(server):
    with server.client("investigator", "S01") as http:
        subject_id = eligible(http)
        allocation = randomise(http, subject_id).json()
    routes = [
        "/api/v1/randomisation/lists",
        "/api/v1/randomisation/lists.csv",
        "/api/v1/randomisation/allocations",
        "/api/v1/randomisation/allocations.csv",
        "/api/v1/randomisation/lists/S01-BC",
    ]
    for role, site in OTHER_ROLES:
        with server.client(role, *([site] if site else [])) as http:
            for route in routes:
                assert http.get(route).status_code == 403, (role, route)
            for probe in ("/fhir/RandomisationSlot", "/fhir/Basic?code=randomisation"):
                assert http.get(probe).status_code in (403, 404), (role, probe)
    with server.client("randomisation_manager") as manager:
        summaries = {s["stratum"]: s for s in manager.get(routes[0]).json()["lists"]}
        assert set(summaries) == set(SCHEME.strata)
        assert all(len(s["checksum"]) == 64 and s["used"] + s["unused"] == s["slots"] for s in summaries.values())
        stratum = manager.get(routes[4]).json()
        assert any(slot["used"] is False for slot in stratum["slots"])
        mine = next(slot for slot in stratum["slots"] if slot["subject_id"] == subject_id)
        assert mine["arm"] == allocation["arm"] and mine["number"] == allocation["randomisation_number"]
        csv = manager.get(routes[1])
        assert csv.headers["content-type"].startswith("text/csv")
        assert csv.text.splitlines()[0] == "stratum,sequence,block,block_size,arm,used,subject_id,number"
        assert allocation["randomisation_number"] in manager.get(routes[3]).text
        assert manager.get(f"/api/v1/subjects/{subject_id}").status_code == 403  # no clinical data
        assert manager.get("/fhir/Patient").status_code == 403
    with Session(server.runtime.engine) as session:  # the trail has allocations and list sizes, never a list
        generated = session.exec(select(AuditEntry).where(AuditEntry.action == "randomisation.generate")).all()
    assert generated and all("SORA" not in f"{e.new_value} {e.reason}" for e in generated)


def test_allocations_cannot_be_changed_or_undone(server):
    with server.client("investigator", "S01") as http:
        subject_id = eligible(http)
        assert randomise(http, subject_id).status_code == 201
        for method in ("DELETE", "PUT", "PATCH"):
            assert http.request(method, f"/api/v1/subjects/{subject_id}/randomisation").status_code == 405
    for table in ("randomisation_allocation", "randomisation_slot", "randomisation_list"):
        with pytest.raises(DBAPIError, match="append-only"), server.runtime.engine.begin() as connection:
            connection.execute(text(f"DELETE FROM {table}"))


@pytest.fixture(scope="module")
def second_study(database_url):
    """A second study in the same database: forms/ with another id and the 2:1 scheme (3 slots per list)."""
    settings = Settings(
        database_url=database_url,
        study_dir=_study_copy_dir(),
        jwt_secret="j" * 40,
        randomisation_secret="r" * 40,
        _env_file=None,
    )
    with running_server(settings) as running:
        yield running


def test_a_2_to_1_study_allocates_in_its_ratio_exhausts_and_verifies(second_study):
    with second_study.client("investigator", "S01") as http:
        first = eligible(http, study="TEST-2TO1")
        answers = [randomise(http, first)]
        assert answers[0].status_code == 201, answers[0].text
        with second_study.client("randomisation_manager") as manager:  # one block of 3 or 6: whole blocks only
            size = next(
                s for s in manager.get("/api/v1/randomisation/lists").json()["lists"] if s["stratum"] == "later"
            )["slots"]
        assert size in (3, 6)
        subjects = [first] + [eligible(http, study="TEST-2TO1") for _ in range(size)]
        answers += [randomise(http, subject_id) for subject_id in subjects[1:size]]
        assert [a.status_code for a in answers] == [201] * size
        assert Counter(a.json()["arm"] for a in answers) == {"PD1_SORA": 2 * size // 3, "SORA": size // 3}
        assert {a.json()["stratum"] for a in answers} == {"later"}
        assert [a.json()["randomisation_number"] for a in answers] == [f"RX-S01-{n:03d}" for n in range(1, size + 1)]
        exhausted = randomise(http, subjects[size])
        assert exhausted.status_code == 409 and "stratum later is exhausted" in exhausted.text
        assert http.get(f"/api/v1/subjects/{subjects[size]}/randomisation").json()["randomised"] is False

    env = {
        **os.environ,
        "ECRF_DATABASE_URL": second_study.settings.database_url,
        "ECRF_STUDY_DIR": str(_study_copy_dir()),
        "ECRF_RANDOMISATION_SECRET": "r" * 40,
    }
    command = [sys.executable, "-m", "ecrf.cli", "randomisation", "verify"]
    intact = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert intact.returncode == 0, intact.stderr
    wrong_secret = subprocess.run(
        command, env={**env, "ECRF_RANDOMISATION_SECRET": "x" * 40}, capture_output=True, text=True, timeout=120
    )
    assert wrong_secret.returncode == 1 and "checksum" in wrong_secret.stderr
    _tamper(
        second_study,
        "UPDATE randomisation_slot SET arm = 'SORA' WHERE study_id = 'TEST-2TO1' "
        "AND stratum = 'early' AND sequence = (SELECT MIN(sequence) FROM randomisation_slot "
        "WHERE study_id = 'TEST-2TO1' AND stratum = 'early' AND arm = 'PD1_SORA')",
    )
    tampered = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert tampered.returncode == 1 and "RANDOMISATION LIST early: the stored slots differ" in tampered.stderr


def _tamper(server, statement: str) -> None:
    """What only the table owner can do: lift the append-only trigger for one statement."""
    with server.runtime.engine.begin() as connection:
        if server.backend == "postgresql":
            connection.execute(text("ALTER TABLE randomisation_slot DISABLE TRIGGER randomisation_slot_append_only"))
            connection.execute(text(statement))
            connection.execute(text("ALTER TABLE randomisation_slot ENABLE TRIGGER randomisation_slot_append_only"))
        else:
            connection.execute(text("DROP TRIGGER randomisation_slot_no_update"))
            connection.execute(text(statement))
            connection.execute(
                text(
                    "CREATE TRIGGER randomisation_slot_no_update BEFORE UPDATE ON randomisation_slot "
                    "BEGIN SELECT RAISE(ABORT, 'randomisation_slot is append-only'); END"
                )
            )


def test_the_enrolment_report_counts_allocations_per_stratum_and_arm(server):
    with server.client("coordinator", "S01") as http:
        assert randomise(http, eligible(http, bclc("bclc-A"))).status_code == 201
    with server.client("data_manager") as http:
        report = http.get("/api/v1/reports/enrolment").json()
    with Session(server.runtime.engine) as session:
        rows = session.exec(select(RandomisationAllocation).where(RandomisationAllocation.study_id == STUDY.id)).all()
    for scope in [*report["sites"], report["overall"]]:
        mine = [row for row in rows if scope.get("site", row.site) == row.site]
        expected = {
            stratum: {
                arm.id: sum(1 for row in mine if (row.stratum, row.arm) == (stratum, arm.id)) for arm in STUDY.arms
            }
            for stratum in SCHEME.strata
        }
        assert scope["randomised"]["by_stratum"] == expected, scope.get("site")
    assert report["overall"]["randomised"]["by_stratum"]["S01-A"] != {"PD1_SORA": 0, "SORA": 0}
    with server.client("sponsor") as http:  # small cells hidden as every other count of the report
        sponsor = http.get("/api/v1/reports/enrolment").json()
    cells = [n for stratum in sponsor["overall"]["randomised"]["by_stratum"].values() for n in stratum.values()]
    assert all(n is None or n == 0 or n >= sponsor["min_cell"] for n in cells)


def test_no_door_changes_or_deletes_an_allocation(server):
    with server.client("investigator", "S01") as http:
        subject_id = eligible(http)
        allocation = randomise(http, subject_id).json()
        content = http.get(f"/fhir/ResearchSubject/{subject_id}").json()
        other = "SORA" if allocation["arm"] == "PD1_SORA" else "PD1_SORA"
        changed = http.put(
            f"/fhir/ResearchSubject/{subject_id}", json={**content, "assignedArm": other}, headers=FHIR_JSON
        )
        assert changed.status_code == 409, changed.text
        assert "never change" in changed.json()["issue"][0]["diagnostics"]
        renumbered = {
            **content,
            "identifier": [i for i in content["identifier"] if i.get("system") != SCHEME.identifier_system],
        }
        assert http.put(f"/fhir/ResearchSubject/{subject_id}", json=renumbered, headers=FHIR_JSON).status_code == 409
        patched = http.patch(
            f"/fhir/ResearchSubject/{subject_id}",
            content=json.dumps([{"op": "replace", "path": "/assignedArm", "value": other}]),
            headers={"Content-Type": "application/json-patch+json"},
        )
        assert patched.status_code == 409, patched.text
        assert http.delete(f"/fhir/ResearchSubject/{subject_id}").status_code == 409
        after = http.get(f"/fhir/ResearchSubject/{subject_id}").json()
        assert after["assignedArm"] == allocation["arm"] and after["meta"]["versionId"] == content["meta"]["versionId"]
        # other changes of the subject still go through
        period = http.put(
            f"/fhir/ResearchSubject/{subject_id}",
            json={**content, "period": {**content.get("period", {}), "end": TODAY.isoformat()}},
            headers=FHIR_JSON,
        )
        assert period.status_code == 200, period.text
        assert http.get(f"/api/v1/subjects/{subject_id}/randomisation").json() == allocation


def test_a_mis_randomisation_is_a_note_and_the_allocation_stays(server):
    with server.client("investigator", "S01") as http:
        subject_id = eligible(http)
        allocation = randomise(http, subject_id).json()
        assert (
            http.post(f"/api/v1/subjects/{subject_id}/randomisation/notes", json={"text": "wrong subject"}).status_code
            == 403
        )
        unallocated = eligible(http)
    with server.client("data_manager") as http:
        noted = http.post(
            f"/api/v1/subjects/{subject_id}/randomisation/notes",
            json={"text": "randomised in error: consent withdrawn the day before"},
        )
        assert noted.status_code == 201, noted.text
        assert noted.json()["randomisation_number"] == allocation["randomisation_number"]
        assert http.post(f"/api/v1/subjects/{unallocated}/randomisation/notes", json={"text": "x"}).status_code == 409
        assert http.get(f"/api/v1/subjects/{subject_id}/randomisation").json() == allocation
        trail = http.get(f"/api/v1/subjects/{subject_id}/audit", params={"limit": 500}).json()
    assert "randomised in error: consent withdrawn the day before" in str(trail)


def test_the_randomisation_secret_is_neither_the_study_nor_the_jwt_secret(tmp_path):
    from ecrf.randomisation.service import randomisation_secret

    same = Settings(
        database_url=f"sqlite:///{tmp_path / 'e.db'}",
        study_secret="s" * 40,
        randomisation_secret="s" * 40,
        _env_file=None,
    )
    with pytest.raises(SchemeError, match="must differ"):
        randomisation_secret(same)
    generated = Settings(database_url=f"sqlite:///{tmp_path / 'e.db'}", _env_file=None)
    first = randomisation_secret(generated)
    assert first == randomisation_secret(generated) and len(first) >= 48
    assert (tmp_path / ".ecrf-randomisation-secret").stat().st_mode & 0o777 == 0o600


def test_the_screening_log_shows_allocations_and_counts_per_stratum_and_arm(server):
    with server.client("coordinator", "S01") as http:
        subject_id = eligible(http)
        allocation = randomise(http, subject_id).json()
        log = http.get("/api/v1/eligibility", params={"limit": 500, "site": "S01"}).json()
    row = next(r for r in log["items"] if r["subject"] == subject_id)
    assert row["allocation"] == {
        "arm": allocation["arm"],
        "stratum": "S01-BC",
        "randomisation_number": allocation["randomisation_number"],
    }
    with Session(server.runtime.engine) as session:
        stored = Counter(
            (a.stratum, a.arm)
            for a in session.exec(
                select(RandomisationAllocation).where(
                    RandomisationAllocation.study_id == STUDY.id, RandomisationAllocation.site == "S01"
                )
            ).all()
        )
    assert {(c["stratum"], c["arm"]): c["n"] for c in log["randomised"]} == dict(stored)
    assert {c["site"] for c in log["randomised"]} == {"S01"}
