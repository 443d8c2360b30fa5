"""Search as clients use it (issue 12, item 3, first part): lenient handling by default, strict on request,
POST [type]/_search form-encoded, _count=0, _summary=count and _total."""

from urllib.parse import parse_qsl, urlsplit

from fhir.resources.R4B import get_fhir_model_class

from tests.fhir_builders import FHIR_JSON, bundle, lab, patient, post, urn

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def _patient_with_labs(server, count: int) -> str:
    patient_url = urn()
    labs = [lab(patient_url, "718-7", 12 + i / 10, "g/dL", f"2026-01-{1 + i:02d}") for i in range(count)]
    with server.client("ehr", "S01") as http:
        response = http.post("/fhir", json=bundle([post(patient(), patient_url), *map(post, labs)]), headers=FHIR_JSON)
    assert response.status_code == 200, response.text
    return response.json()["entry"][0]["response"]["location"].split("/")[1]


def _links(found: dict) -> dict[str, str]:
    return {link["relation"]: link["url"] for link in found["link"]}


def test_unknown_parameters_are_ignored_named_in_an_outcome_entry_and_left_out_of_self(server):
    pid = _patient_with_labs(server, 3)
    with server.client("ehr", "S01") as http:
        response = http.get(
            "/fhir/Observation",
            params={"subject": f"Patient/{pid}", "colour": "red", "_totalMethod": "count", "code:banana": "718-7"},
        )
        assert response.status_code == 200, response.text
        found = response.json()
        get_fhir_model_class("Bundle").model_validate(found)
        assert found["total"] == 3
        matches = [e for e in found["entry"] if e["search"]["mode"] == "match"]
        [outcome] = [e for e in found["entry"] if e["search"]["mode"] == "outcome"]
        assert len(matches) == 3
        assert outcome["resource"]["resourceType"] == "OperationOutcome"
        said = " ".join(issue["diagnostics"] for issue in outcome["resource"]["issue"])
        assert "'colour'" in said and "'_totalMethod'" in said and ":banana" in said
        assert {issue["severity"] for issue in outcome["resource"]["issue"]} == {"warning"}
        self_params = dict(parse_qsl(urlsplit(_links(found)["self"]).query))
        assert self_params["subject"] == f"Patient/{pid}"
        assert not {"colour", "_totalMethod", "code:banana", "code"} & set(self_params)

        lenient = http.get(
            "/fhir/Observation",
            params={"subject": f"Patient/{pid}", "colour": "red"},
            headers={"Prefer": "handling=lenient"},
        )
        assert lenient.status_code == 200 and lenient.json()["total"] == 3
        strict = http.get(
            "/fhir/Observation",
            params={"subject": f"Patient/{pid}", "colour": "red"},
            headers={"Prefer": "handling=strict"},
        )
        assert strict.status_code == 400 and "colour" in strict.json()["issue"][0]["diagnostics"]
        clean = http.get("/fhir/Observation", params={"subject": f"Patient/{pid}"}).json()
        assert all(e["search"]["mode"] == "match" for e in clean["entry"])


def test_count_zero_and_summary_count_answer_the_total_only_without_next(server):
    pid = _patient_with_labs(server, 4)
    with server.client("ehr", "S01") as http:
        for params in ({"_count": "0"}, {"_summary": "count"}, {"_summary": "count", "_count": "2"}):
            found = http.get("/fhir/Observation", params={"subject": f"Patient/{pid}", **params}).json()
            assert found["total"] == 4 and found.get("entry", []) == [], params
            assert set(_links(found)) == {"self"}, params
        paged = http.get("/fhir/Observation", params={"subject": f"Patient/{pid}", "_count": "2"}).json()
        assert "next" in _links(paged) and len(paged["entry"]) == 2
        assert (
            "total" not in http.get("/fhir/Observation", params={"subject": f"Patient/{pid}", "_total": "none"}).json()
        )
        for mode in ("estimate", "accurate"):
            assert (
                http.get("/fhir/Observation", params={"subject": f"Patient/{pid}", "_total": mode}).json()["total"] == 4
            )
        assert http.get("/fhir/Observation", params={"_total": "some"}).status_code == 400


def test_post_search_takes_form_encoded_parameters_in_the_body_and_the_url(server):
    pid = _patient_with_labs(server, 5)
    with server.client("ehr", "S01") as http:
        response = http.post(
            "/fhir/Observation/_search", content=f"subject=Patient%2F{pid}&date=ge2026-01-03", headers=FORM
        )
        assert response.status_code == 200, response.text
        assert response.json()["total"] == 3
        mixed = http.post(
            f"/fhir/Observation/_search?subject=Patient/{pid}", data={"date": "le2026-01-02", "_count": "1"}
        )
        assert mixed.status_code == 200, mixed.text
        page = mixed.json()
        assert page["total"] == 2 and len(page["entry"]) == 1
        next_page = http.get(_links(page)["next"]).json()
        assert next_page["total"] == 2 and next_page["entry"][0]["resource"]["id"] != page["entry"][0]["resource"]["id"]
        assert http.post("/fhir/Observation/_search", json={"subject": pid}).status_code == 415
        strict = http.post("/fhir/Observation/_search", data={"colour": "red"}, headers={"Prefer": "handling=strict"})
        assert strict.status_code == 400
        control = http.post("/fhir/Observation/_search", content="subject=%01x", headers=FORM)
        assert control.status_code == 400
    with server.client("ehr", "S02") as other:  # site scoping holds as for GET
        assert other.post("/fhir/Observation/_search", data={"subject": f"Patient/{pid}"}).json()["total"] == 0
    with server.client() as anonymous:
        assert anonymous.post("/fhir/Observation/_search", data={"subject": pid}).status_code == 401
