"""Data clarification queries: lifecycle, roles per step, site scoping, checks against the study, audit."""

import logging
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from crf_support import enrol, errors_of, path, save
from sqlmodel import Session, select

from ecrf.audit.service import verify
from ecrf.queries.models import QueryMessage

ROLES = (
    ("investigator", ("S01",)),
    ("coordinator", ("S01",)),
    ("monitor", ("S01",)),
    ("data_manager", ()),
    ("sponsor", ()),
    ("ehr", ("S01",)),
    ("admin", ()),
)


def queries_of(subject_id: str) -> str:
    return f"/api/v1/subjects/{subject_id}/queries"


def raise_query(http, subject_id: str, text: str = "Please confirm the value against the source", **where):
    return http.post(queries_of(subject_id), json={"text": text, **where})


def is_recent_utc(moment: str) -> bool:
    parsed = datetime.fromisoformat(moment)
    return parsed.utcoffset() == timedelta(0) and abs(parsed - datetime.now(UTC)) < timedelta(minutes=2)


@pytest.fixture
def labs(server):
    """A subject at S01 with complete labs at SCR."""
    with server.client("coordinator", "S01") as http:
        subject = enrol(http)
        assert save(http, subject["id"], "surgery").status_code == 201
        assert save(http, subject["id"], "labs", {"hemoglobin": 130, "platelets": 200}).status_code == 201
    return subject["id"]


@pytest.fixture
def open_query(server, labs):
    with server.client("monitor", "S01", sub="mon-li") as http:
        raised = raise_query(http, labs, form_id="labs", visit_id="SCR", item_id="hemoglobin")
    assert raised.status_code == 201, raised.text
    return labs, raised.json()


def test_full_lifecycle_with_thread_counts_and_audit(server, labs):
    form_url = path(labs, "labs", "SCR")
    with server.client("monitor", "S01", sub="mon-li") as http:
        raised = raise_query(
            http, labs, "Hb 130 g/L: source says 13.0 g/dL?", form_id="labs", visit_id="SCR", item_id="hemoglobin"
        )
        assert raised.status_code == 201, raised.text
        query = raised.json()
        assert raised.headers["location"] == f"/api/v1/queries/{query['id']}"
        assert http.get(raised.headers["location"]).json() == query
        form = http.get(form_url).json()
        assert form["open_queries"] == 1 and form["open_queries_by_item"] == {"hemoglobin": 1}
        assert http.get(f"/api/v1/subjects/{labs}").json()["open_queries"] == 1
    assert {key: query[key] for key in ("subject_id", "site", "form_id", "visit_id", "item_id", "status")} == {
        "subject_id": labs,
        "site": "S01",
        "form_id": "labs",
        "visit_id": "SCR",
        "item_id": "hemoglobin",
        "status": "open",
    }
    assert query["raised"]["sub"] == "mon-li" and query["raised"]["role"] == "monitor"
    [first] = query["messages"]
    assert first["action"] == "raise" and first["status"] == "open" and first["seq"] == 1
    assert first["who"] == {"sub": "mon-li", "role": "monitor"} and is_recent_utc(first["at"])
    assert first["text"] == "Hb 130 g/L: source says 13.0 g/dL?"

    url = f"/api/v1/queries/{query['id']}"
    steps = [
        ("investigator", ("S01",), "dr-wei", "answer", {"text": "checked the lab sheet: 130 g/L"}, "answered"),
        ("coordinator", ("S01",), "crc-ma", "answer", {"text": "lab print-out filed"}, "answered"),
        ("monitor", ("S01",), "mon-li", "close", {"text": "  resolved  "}, "closed"),
        ("data_manager", (), "dm-zhao", "reopen", {"text": "unit on the print-out is g/dL"}, "open"),
        ("investigator", ("S01",), "dr-wei", "answer", {"text": "corrected on the source"}, "answered"),
        ("data_manager", (), "dm-zhao", "close", None, "closed"),
    ]
    thread = query["messages"]
    for role, sites, sub, action, body, status in steps:
        with server.client(role, *sites, sub=sub) as http:
            response = http.post(f"{url}/{action}", json=body)
        assert response.status_code == 200, (action, response.text)
        view = response.json()
        assert view["status"] == status
        assert view["messages"][:-1] == thread  # the thread only grows; earlier messages never change
        last = view["messages"][-1]
        assert (last["seq"], last["action"], last["status"]) == (len(thread) + 1, action, status)
        assert last["who"] == {"sub": sub, "role": role} and is_recent_utc(last["at"])
        assert last["text"] == (body["text"].strip() if body else None)
        thread = view["messages"]
        if action == "close":
            with server.client("investigator", "S01") as http:
                assert http.get(form_url).json()["open_queries"] == 0
                assert http.get(f"/api/v1/subjects/{labs}").json()["open_queries"] == 0

    with server.client("monitor", "S01") as http:
        trail = http.get(f"/api/v1/subjects/{labs}/audit", params={"item": "hemoglobin", "limit": 500}).json()
    entries = [e for e in trail["items"] if e["action"].startswith("query.")]
    assert [(e["action"], e["old_value"], e["new_value"]) for e in entries] == [
        ("query.raise", None, "open"),
        ("query.answer", "open", "answered"),
        ("query.answer", "answered", "answered"),
        ("query.close", "answered", "closed"),
        ("query.reopen", "closed", "open"),
        ("query.answer", "open", "answered"),
        ("query.close", "answered", "closed"),
    ]
    for entry, message in zip(entries, thread):
        assert entry["who"]["sub"] == message["who"]["sub"] and entry["who"]["role"] == message["who"]["role"]
        assert entry["at"] == message["at"] and is_recent_utc(entry["at"])
        assert entry["resource"] == f"Query/{query['id']}" and entry["resource_version"] == message["seq"]
        assert (entry["form_id"], entry["visit_id"], entry["source"]) == ("labs", "SCR", "query")
        assert entry["reason"] == message["text"]
    with Session(server.runtime.engine) as session:
        assert list(verify(session)) == []


def test_a_thread_message_cannot_be_changed_or_deleted(server, open_query):
    _, query = open_query
    with Session(server.runtime.engine) as session:
        message = session.exec(select(QueryMessage).where(QueryMessage.query_id == query["id"])).one()
        message.text = "rewritten"
        with pytest.raises(RuntimeError, match="append-only"):
            session.flush()
        session.rollback()
        session.delete(session.exec(select(QueryMessage).where(QueryMessage.query_id == query["id"])).one())
        with pytest.raises(RuntimeError, match="append-only"):
            session.flush()
    with server.client("monitor", "S01") as http:
        assert http.get(f"/api/v1/queries/{query['id']}").json() == query


def _prepare(server, subject_id: str, step: str) -> str:
    """A query in a status from which `step` is allowed."""
    with server.client("monitor", "S01") as http:
        query = raise_query(http, subject_id, form_id="labs", visit_id="SCR").json()
        if step == "reopen":
            assert http.post(f"/api/v1/queries/{query['id']}/close").status_code == 200
    return query["id"]


@pytest.mark.parametrize(
    "step,body,allowed",
    [
        ("answer", {"text": "done"}, {"investigator", "coordinator"}),
        ("close", {"text": "ok"}, {"monitor", "data_manager"}),
        ("reopen", {"text": "not ok"}, {"monitor", "data_manager"}),
    ],
)
def test_each_step_is_refused_to_every_other_role_and_changes_nothing(server, labs, step, body, allowed):
    query_id = _prepare(server, labs, step)
    with server.client("data_manager") as http:
        before = http.get(f"/api/v1/queries/{query_id}").json()
        audit_before = http.get(f"/api/v1/subjects/{labs}/audit", params={"limit": 1}).json()["total"]
    for role, sites in ROLES:
        if role in allowed:
            continue
        with server.client(role, *sites) as http:
            assert http.post(f"/api/v1/queries/{query_id}/{step}", json=body).status_code == 403, (step, role)
    with server.client("data_manager") as http:
        assert http.get(f"/api/v1/queries/{query_id}").json() == before
        assert http.get(f"/api/v1/subjects/{labs}/audit", params={"limit": 1}).json()["total"] == audit_before
    for role in allowed:  # and each allowed role may
        query_id = _prepare(server, labs, step)
        sites = dict(ROLES)[role]
        with server.client(role, *sites) as http:
            assert http.post(f"/api/v1/queries/{query_id}/{step}", json=body).status_code == 200, (step, role)


def test_raising_and_reading_are_refused_to_the_other_roles(server, open_query):
    subject_id, query = open_query
    for role, sites in ROLES:
        with server.client(role, *sites) as http:
            raised = raise_query(http, subject_id)
            assert raised.status_code == (201 if role in {"monitor", "data_manager"} else 403), role
            reads = [
                http.get(f"/api/v1/queries/{query['id']}"),
                http.get("/api/v1/queries"),
                http.get(queries_of(subject_id)),
            ]
            expected = 200 if role in {"investigator", "coordinator", "monitor", "data_manager"} else 403
            assert [r.status_code for r in reads] == [expected] * 3, role
    with server.client("monitor", "S01") as http:
        assert http.get(queries_of(subject_id)).json()["total"] == 3  # the fixture's and the two allowed raises


def test_another_sites_query_does_not_exist(server, open_query):
    subject_id, query = open_query
    url = f"/api/v1/queries/{query['id']}"
    with server.client("monitor", "S02") as http:
        assert http.get(url).status_code == 404
        assert http.get(queries_of(subject_id)).status_code == 404
        assert raise_query(http, subject_id).status_code == 404
        assert http.post(url + "/close").status_code == 404
        assert query["id"] not in {q["id"] for q in http.get("/api/v1/queries", params={"limit": 500}).json()["items"]}
        assert http.get("/api/v1/queries", params={"site": "S01"}).json()["total"] == 0
    with server.client("investigator", "S02") as http:
        assert http.post(url + "/answer", json={"text": "not mine"}).status_code == 404
    for role, sites in (("monitor", ()), ("data_manager", ()), ("coordinator", ("S02", "S01"))):
        with server.client(role, *sites) as http:
            assert http.get(url).status_code == 200, role
    with server.client("data_manager") as http:
        assert http.get(url).json() == query  # nothing changed by the refused steps


@pytest.mark.parametrize(
    "where,expected",
    [
        ({"form_id": "nosuchform"}, {("form_id", "unknown_form")}),
        ({"form_id": "labs", "visit_id": "SCR", "item_id": "nosuchitem"}, {("item_id", "unknown_item")}),
        ({"form_id": "labs", "visit_id": "SCR", "item_id": "afp"}, {("item_id", "unknown_item")}),
        ({"item_id": "nosuchitem"}, {("item_id", "unknown_item")}),
        ({"form_id": "labs", "visit_id": "W99"}, {("visit_id", "unknown_visit")}),
        ({"form_id": "labs", "visit_id": "POD7"}, {("visit_id", "visit")}),
        ({"form_id": "labs", "item_id": "hemoglobin"}, {("visit_id", "required")}),
        (
            {"form_id": "nosuchform", "visit_id": "W99", "text": "   "},
            {("form_id", "unknown_form"), ("visit_id", "unknown_visit"), ("text", "required")},
        ),
    ],
)
def test_a_query_must_point_at_data_of_the_study(server, labs, where, expected):
    with server.client("monitor", "S01") as http:
        before = http.get(queries_of(labs)).json()["total"]
        assert errors_of(http.post(queries_of(labs), json={"text": "why?", **where})) == expected
        assert http.get(queries_of(labs)).json()["total"] == before
        assert http.post(queries_of(labs), json={"form_id": "labs"}).status_code == 422  # text is required
        assert http.post(queries_of(labs), json={"text": "x", "colour": "red"}).status_code == 422
        assert raise_query(http, "no-such-subject").status_code == 404
        assert 400 <= raise_query(http, labs, "nul \x00 byte").status_code < 500  # PostgreSQL text holds no NUL


def test_the_form_and_visit_are_inferred_where_the_study_allows_only_one(server, labs):
    with server.client("monitor", "S01") as http:
        by_item = raise_query(http, labs, item_id="ecog").json()
        by_form = raise_query(http, labs, form_id="demographics").json()
        visit_only = raise_query(http, labs, visit_id="M1").json()
        subject_only = raise_query(http, labs).json()
    assert (by_item["form_id"], by_item["visit_id"], by_item["item_id"]) == ("baseline", "PREOP", "ecog")
    assert (by_form["form_id"], by_form["visit_id"], by_form["item_id"]) == ("demographics", "SCR", None)
    assert (visit_only["form_id"], visit_only["visit_id"]) == (None, "M1")
    assert (subject_only["form_id"], subject_only["visit_id"], subject_only["item_id"]) == (None, None, None)


def test_a_locked_form_cannot_be_queried(server, labs):
    form_url = path(labs, "labs", "SCR")
    with server.client("monitor", "S01") as http:
        assert http.post(form_url + "/verify").status_code == 200
    with server.client("investigator", "S01") as http:
        assert http.post(form_url + "/sign", json={"meaning": "approved"}).status_code == 200
    with server.client("data_manager") as http:
        assert http.post(form_url + "/lock").status_code == 200
        refused = raise_query(http, labs, form_id="labs", visit_id="SCR", item_id="platelets")
        assert refused.status_code == 409 and "unlock" in refused.json()["detail"]
        assert http.get(queries_of(labs)).json()["total"] == 0


def test_a_form_with_an_unresolved_query_cannot_be_locked(server, open_query):
    subject_id, query = open_query
    form_url = path(subject_id, "labs", "SCR")
    with server.client("monitor", "S01") as http:
        assert http.post(form_url + "/verify").status_code == 200
    with server.client("investigator", "S01") as http:
        assert http.post(form_url + "/sign", json={"meaning": "approved"}).status_code == 200
        assert http.post(f"/api/v1/queries/{query['id']}/answer", json={"text": "checked"}).status_code == 200
    with server.client("data_manager") as http:
        refused = http.post(form_url + "/lock")
        assert refused.status_code == 409 and "1 unresolved query" in refused.json()["detail"]
        assert http.get(form_url).json()["status"] == "signed"
    with server.client("monitor", "S01") as http:
        assert http.post(f"/api/v1/queries/{query['id']}/close").status_code == 200
    with server.client("data_manager") as http:
        assert http.post(form_url + "/lock").json()["status"] == "locked"


def test_wrong_transitions_are_409_with_a_clear_message(server, open_query):
    _, query = open_query
    url = f"/api/v1/queries/{query['id']}"
    with server.client("monitor", "S01") as http:
        reopened = http.post(url + "/reopen", json={"text": "again"})
        assert reopened.status_code == 409 and "only a closed query can be reopened" in reopened.json()["detail"]
    with server.client("investigator", "S01") as http:
        assert errors_of(http.post(url + "/answer", json={"text": "  "})) == {("text", "required")}
        assert http.post(url + "/answer", json={"text": "fine"}).status_code == 200
    with server.client("monitor", "S01") as http:
        assert http.post(url + "/reopen", json={"text": "again"}).status_code == 409
        assert http.post(url + "/close").status_code == 200
        closed_again = http.post(url + "/close", json={"text": "twice"})
        assert closed_again.status_code == 409 and "already closed" in closed_again.json()["detail"]
        assert errors_of(http.post(url + "/reopen", json={"text": ""})) == {("text", "required")}
    with server.client("coordinator", "S01") as http:
        late = http.post(url + "/answer", json={"text": "one more thing"})
        assert late.status_code == 409 and "reopen" in late.json()["detail"]
        assert http.post("/api/v1/queries/no-such-query/answer", json={"text": "x"}).status_code == 404
    with server.client("monitor", "S01") as http:
        view = http.get(url).json()
    assert view["status"] == "closed" and [m["action"] for m in view["messages"]] == ["raise", "answer", "close"]


def test_lists_page_and_filter_by_site_status_form_visit_and_item(server):
    with server.client("coordinator", "S02") as http:
        subject = enrol(http, site="S02")["id"]
    with server.client("monitor") as http:  # no sites claim: every site
        before = http.get("/api/v1/queries", params={"site": "S02", "limit": 500}).json()
        created = [
            raise_query(http, subject, f"question {n}", form_id="labs", visit_id=visit).json()["id"]
            for n, visit in enumerate(("SCR", "M1", "M1", "M3", "M6"))
        ]
        created.append(raise_query(http, subject, "history?", form_id="history", item_id="mi_date").json()["id"])
        assert http.post(f"/api/v1/queries/{created[0]}/close").status_code == 200
        pages = [http.get(queries_of(subject), params={"offset": offset, "limit": 2}).json() for offset in (0, 2, 4)]
        assert [p["total"] for p in pages] == [6, 6, 6] and [p["limit"] for p in pages] == [2, 2, 2]
        assert [q["id"] for p in pages for q in p["items"]] == created  # oldest first, no overlap, no gap
        after = http.get("/api/v1/queries", params={"site": "S02", "limit": 500}).json()
        assert after["total"] == before["total"] + 6 and {q["site"] for q in after["items"]} == {"S02"}
        assert [q["id"] for q in after["items"]][-6:] == created

        def listed(**params):
            return [q["id"] for q in http.get(queries_of(subject), params=params).json()["items"]]

        assert listed(status="closed") == created[:1]
        assert listed(status="open") == created[1:]
        assert listed(status="unresolved") == created[1:]
        assert listed(status="answered") == []
        assert listed(form="", visit="") == created
        assert listed(form="history") == created[5:]
        assert listed(form="labs", visit="M1") == created[1:3]
        assert listed(item="mi_date", status="open") == created[5:]
        every = http.get("/api/v1/queries", params={"form": "history", "status": "open", "limit": 500}).json()
        assert created[5] in {q["id"] for q in every["items"]}
        assert all(q["form_id"] == "history" and q["status"] == "open" for q in every["items"])
        assert errors_of(http.get("/api/v1/queries", params={"form": "nosuchform"})) == {("form", "unknown_form")}
        assert http.get("/api/v1/queries", params={"status": "pending"}).status_code == 422
        assert http.get("/api/v1/queries", params={"limit": 0}).status_code == 422
    with server.client("monitor", "S01") as http:
        assert http.get("/api/v1/queries", params={"site": "S02"}).json()["total"] == 0
        mine = http.get("/api/v1/queries", params={"limit": 500}).json()["items"]
        assert {q["site"] for q in mine} <= {"S01"} and not set(created) & {q["id"] for q in mine}
    with server.client("investigator", "S02") as http:
        assert http.get("/api/v1/queries", params={"site": "S02", "limit": 500}).json()["total"] == after["total"]


def test_query_text_never_reaches_the_application_log(server, labs, caplog):
    marker = f"PHI-{uuid.uuid4().hex}"
    caplog.set_level(logging.DEBUG)
    with server.client("monitor", "S01") as http:
        query = raise_query(http, labs, f"patient {marker} said", form_id="labs", visit_id="SCR").json()
        http.post(f"/api/v1/queries/{query['id']}/close", json={"text": marker})
        http.post(f"/api/v1/queries/{query['id']}/close", json={"text": marker})  # a refusal too
        http.post(f"/api/v1/queries/{query['id']}/reopen", json={"text": marker})
    with server.client("investigator", "S01") as http:
        http.post(f"/api/v1/queries/{query['id']}/answer", json={"text": marker})
    assert any("queries" in record.getMessage() for record in caplog.records)  # the request log is captured
    assert marker not in caplog.text
