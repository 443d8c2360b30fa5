"""Form lifecycle (verify, sign, lock, unlock) with its roles, reason for change, If-Match, audit trail."""

import hashlib
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from crf_support import enrol, errors_of, path, save


@pytest.fixture
def labs(server):
    """A subject with complete labs at SCR."""
    with server.client("coordinator", "S01") as http:
        subject = enrol(http)
        assert save(http, subject["id"], "surgery").status_code == 201
        assert save(http, subject["id"], "labs", {"hemoglobin": 130, "platelets": 200}).json()["status"] == "complete"
    return subject["id"], path(subject["id"], "labs", "SCR")


def test_full_lifecycle_with_the_right_roles(server, labs):
    subject_id, url = labs
    with server.client("monitor", "S01", sub="mon-li") as http:
        verified = http.post(url + "/verify")
    assert verified.status_code == 200, verified.text
    assert verified.json()["status"] == "verified" and verified.json()["verified"]["by"] == "mon-li"
    with server.client("investigator", "S01", sub="dr-wei") as http:
        signed = http.post(url + "/sign", json={"meaning": "I approve the data of this form"})
    signature = signed.json()["signature"]
    assert signed.json()["status"] == "signed"
    assert signature["name"] == "dr-wei" and signature["meaning"] == "I approve the data of this form"
    assert datetime.fromisoformat(signature["at"]).utcoffset() == timedelta(0)
    assert abs(datetime.fromisoformat(signature["at"]) - datetime.now(UTC)) < timedelta(minutes=1)
    assert len(signature["hash"]) == 64 and int(signature["hash"], 16) >= 0
    with server.client("data_manager", sub="dm-zhao") as http:
        locked = http.post(url + "/lock")
        assert locked.json()["status"] == "locked" and locked.json()["locked"]["by"] == "dm-zhao"
    with server.client("investigator", "S01") as http:
        refused = save(http, subject_id, "labs", {"hemoglobin": 131}, reason="typo")
        assert refused.status_code == 409 and "locked" in refused.json()["detail"]
    with server.client("data_manager") as http:
        assert errors_of(http.post(url + "/unlock", json={})) == {("reason", "reason_required")}
        unlocked = http.post(url + "/unlock", json={"reason": "query 17: hemoglobin transcription"})
    assert unlocked.json()["status"] == "signed" and unlocked.json()["locked"] is None
    with server.client("investigator", "S01") as http:
        edited = save(http, subject_id, "labs", {"hemoglobin": 131, "platelets": 200}, reason="query 17")
    assert edited.status_code == 200
    assert edited.json()["status"] == "complete"  # SDV and signature are reset by the edit
    assert edited.json()["verified"] is None and edited.json()["signature"] is None


@pytest.mark.parametrize(
    "step,body,allowed",
    [
        ("verify", None, {"monitor"}),
        ("sign", {"meaning": "approved"}, {"investigator"}),
        ("lock", None, {"data_manager"}),
        ("unlock", {"reason": "r"}, {"data_manager"}),
    ],
)
def test_each_transition_is_refused_to_every_other_role(server, labs, step, body, allowed):
    _, url = labs
    for role, sites in (
        ("investigator", ("S01",)),
        ("coordinator", ("S01",)),
        ("monitor", ("S01",)),
        ("data_manager", ()),
        ("sponsor", ()),
        ("ehr", ("S01",)),
        ("admin", ()),
    ):
        if role in allowed:
            continue
        with server.client(role, *sites) as http:
            assert http.post(url + f"/{step}", json=body).status_code == 403, (step, role)


def test_transitions_follow_the_order_of_the_lifecycle(server, labs):
    subject_id, url = labs
    with server.client("investigator", "S01") as http:
        early = http.post(url + "/sign", json={"meaning": "approved"})
        assert early.status_code == 409 and "needs it verified" in early.json()["detail"]
        assert http.post(path(subject_id, "afp", "SCR") + "/sign", json={"meaning": "x"}).status_code == 409
    with server.client("data_manager") as http:
        assert http.post(url + "/lock").status_code == 409
    with server.client("monitor", "S01") as http:
        assert http.post(url + "/verify").status_code == 200
        assert http.post(url + "/verify").status_code == 409
    with server.client("monitor", "S02") as http:
        assert http.post(url + "/verify").status_code == 404  # another site's subject does not exist


def test_editing_a_complete_form_needs_a_reason(server, labs):
    subject_id, _ = labs
    with server.client("coordinator", "S01") as http:
        assert errors_of(save(http, subject_id, "labs", {"hemoglobin": 128})) == {("reason", "reason_required")}
        assert errors_of(save(http, subject_id, "labs", {"hemoglobin": 128}, reason="  ")) == {
            ("reason", "reason_required")
        }
        assert save(http, subject_id, "labs", {"hemoglobin": 128}, reason="lab re-run").status_code == 200


def test_stale_if_match_is_412_and_nothing_is_overwritten(server, labs):
    subject_id, url = labs
    with server.client("coordinator", "S01") as alice, server.client("investigator", "S01") as bob:
        read_a, read_b = alice.get(url), bob.get(url)
        etag = read_a.headers["etag"]
        assert etag == read_b.headers["etag"] == f'W/"{read_a.json()["version"]}"'
        first = save(alice, subject_id, "labs", {"hemoglobin": 140}, reason="alice", headers={"If-Match": etag})
        assert first.status_code == 200 and first.headers["etag"] != etag
        second = save(bob, subject_id, "labs", {"hemoglobin": 99}, reason="bob", headers={"If-Match": etag})
        assert second.status_code == 412 and "read it again" in second.json()["detail"]
        after = bob.get(url).json()
        assert after["items"]["hemoglobin"]["value"] == 140 and after["version"] == first.json()["version"]
        assert (
            save(bob, subject_id, "labs", {"hemoglobin": 99}, reason="x", headers={"If-Match": "garbage"}).status_code
            == 412
        )
    with server.client("monitor", "S01") as http:
        assert http.post(url + "/verify", headers={"If-Match": etag}).status_code == 412
        assert http.post(url + "/verify", headers={"If-Match": first.headers["etag"]}).status_code == 200


@pytest.mark.parametrize("form", ['W/"{v}"', '"{v}"', "{v}"])
def test_if_match_takes_the_forms_the_fhir_door_takes(server, labs, form):
    subject_id, url = labs
    with server.client("coordinator", "S01") as http:
        version = http.get(url).json()["version"]
        saved = save(
            http, subject_id, "labs", {"hemoglobin": 141}, reason="re-run", headers={"If-Match": form.format(v=version)}
        )
        assert saved.status_code == 200, saved.text
        assert saved.json()["version"] == version + 1


@pytest.mark.parametrize("etag", ['W/"1234567890"', 'W/"\u0663"', 'W/"-1"', 'W/""', 'W/"1e3"'])
def test_if_match_that_names_no_version_is_412_as_such(server, labs, etag):
    """Read by the one parser both doors use: ten digits or a non-ASCII digit name no version of anything."""
    subject_id, url = labs
    with server.client("coordinator", "S01") as http:
        refused = save(http, subject_id, "labs", {"hemoglobin": 99}, reason="x", headers={"If-Match": etag.encode()})
        assert refused.status_code == 412, refused.text
        assert "is not a version of this form" in refused.json()["detail"], refused.text
        assert http.get(url).json()["items"]["hemoglobin"]["value"] == 130


def test_audit_shows_who_what_old_new_reason_source_and_version(server, labs):
    subject_id, url = labs
    with server.client("investigator", "S01", sub="dr-wei") as http:
        save(
            http,
            subject_id,
            "labs",
            {"hemoglobin": {"value": 12.5, "unit": "g/dL"}, "platelets": 200},
            reason="transcription error",
        )
    with server.client("monitor", "S01") as http:
        http.post(url + "/verify", json={"reason": "SDV done"})
    with server.client("monitor", "S01") as http:
        trail = http.get(f"/api/v1/subjects/{subject_id}/audit", params={"form": "labs", "limit": 500}).json()
        items = http.get(f"/api/v1/subjects/{subject_id}/audit", params={"item": "hemoglobin"}).json()["items"]
    hemoglobin = [e for e in items if e["item_id"] == "hemoglobin"]
    assert [e["action"] for e in hemoglobin] == ["create", "update"]
    change = hemoglobin[1]
    assert change["old_value"].startswith("130") and change["new_value"].startswith("125")
    assert change["reason"] == "transcription error" and change["source"] == "form"
    assert change["who"] == {"sub": "dr-wei", "role": "investigator", "site": "S01"}
    assert change["visit_id"] == "SCR" and change["form_id"] == "labs" and change["subject_id"] == subject_id
    assert change["resource"].startswith("Observation/") and change["resource_version"] == 2
    assert datetime.fromisoformat(change["at"]).utcoffset() == timedelta(0)
    actions = [(e["action"], e["old_value"], e["new_value"]) for e in trail["items"] if e["action"].startswith("form.")]
    assert actions == [("form.status", None, "complete"), ("form.verify", "complete", "verified")]
    assert trail["items"][-1]["reason"] == "SDV done"
    seqs = [e["seq"] for e in trail["items"]]
    assert seqs == sorted(seqs) and trail["total"] == len(trail["items"])
    for entry in trail["items"]:
        assert len(entry["hash"]) == 64 and len(entry["prev_hash"]) == 64


def test_audit_filters_by_time_and_pages(server, labs):
    subject_id, _ = labs
    with server.client("admin") as http:
        everything = http.get(f"/api/v1/subjects/{subject_id}/audit", params={"limit": 500}).json()
        middle = everything["items"][len(everything["items"]) // 2]["at"]
        later = http.get(f"/api/v1/subjects/{subject_id}/audit", params={"since": middle, "limit": 500}).json()
        earlier = http.get(f"/api/v1/subjects/{subject_id}/audit", params={"until": middle, "limit": 500}).json()
        page = http.get(f"/api/v1/subjects/{subject_id}/audit", params={"offset": 1, "limit": 2}).json()
    assert 0 < later["total"] < everything["total"] and earlier["total"] < everything["total"]
    assert all(e["at"] >= middle for e in later["items"])
    assert page["items"] == everything["items"][1:3]
    with server.client("sponsor") as http:
        assert http.get(f"/api/v1/subjects/{subject_id}/audit").status_code == 403


def test_the_chain_links_each_entry_to_the_previous_one_and_verifies(server, labs):
    subject_id, _ = labs
    with server.client("admin") as http:
        entries = http.get(f"/api/v1/subjects/{subject_id}/audit", params={"limit": 500}).json()["items"]
    for entry in entries:
        payload = {
            key: entry[key]
            for key in (
                "seq",
                "action",
                "source",
                "patient_id",
                "form_id",
                "visit_id",
                "item_id",
                "old_value",
                "new_value",
                "reason",
                "resource",
                "resource_version",
                "prev_hash",
            )
        }
        payload.update(
            actor_sub=entry["who"]["sub"],
            actor_role=entry["who"]["role"],
            actor_site=entry["who"]["site"],
            at=datetime.fromisoformat(entry["at"]).astimezone(UTC).isoformat(timespec="microseconds"),
        )
        assert hashlib.sha256(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).hexdigest() == entry["hash"]
    result = subprocess.run(
        [sys.executable, "-m", "ecrf.cli", "audit", "verify"],
        capture_output=True,
        text=True,
        env={**os.environ, "ECRF_DATABASE_URL": server.settings.database_url},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "chain intact" in result.stdout


def test_concurrent_first_saves_of_one_form_never_fail_or_fork(server):
    from concurrent.futures import ThreadPoolExecutor

    with server.client("coordinator", "S01") as http:
        subject = enrol(http)

    def first_save(n):
        with server.client("coordinator", "S01") as http:
            return save(http, subject["id"], "afp", {"afp": 10 + n}, reason="race", headers={"If-Match": 'W/"0"'})

    with ThreadPoolExecutor(8) as pool:
        statuses = sorted(response.status_code for response in pool.map(first_save, range(8)))
    assert statuses.count(201) == 1 and set(statuses) <= {201, 409, 412}, statuses
    with server.client("coordinator", "S01") as http:
        assert http.get(path(subject["id"], "afp", "SCR")).json()["version"] == 1
