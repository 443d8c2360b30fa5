"""Search as clients use it (issue 12, item 3): _include / _revinclude (:iterate), _elements, chained parameters,
:missing and :not, site scoping of everything included."""

from fhir.resources.R4B import get_fhir_model_class

from tests.fhir_builders import FHIR_JSON, MRN, bundle, lab, patient, post, urn


def _subject_with_labs(server, site: str = "S01", labs: int = 2):
    person, patient_url, subject_url = patient(site=site), urn(), urn()
    subject = {
        "resourceType": "ResearchSubject",
        "status": "candidate",
        "study": {"reference": "ResearchStudy/NCT04163237"},
        "individual": {"reference": patient_url},
    }
    entries = [post(person, patient_url), post(subject, subject_url)]
    entries += [post(lab(patient_url, "718-7", 12 + i / 10, "g/dL", f"2026-05-{1 + i:02d}")) for i in range(labs)]
    entries.append(post({**lab(patient_url, "777-3", 210, "10*3/uL"), "status": "preliminary"}))
    with server.client("ehr", site) as http:
        response = http.post("/fhir", json=bundle(entries), headers=FHIR_JSON)
    assert response.status_code == 200, response.text
    ids = [entry["response"]["location"].split("/")[1] for entry in response.json()["entry"]]
    return {
        "patient": ids[0],
        "subject": ids[1],
        "labs": ids[2:-1],
        "platelets": ids[-1],
        "mrn": person["identifier"][0]["value"],
    }


def _by_mode(found: dict) -> dict[str, list[str]]:
    modes: dict[str, list[str]] = {}
    for entry in found.get("entry", []):
        resource = entry["resource"]
        modes.setdefault(entry["search"]["mode"], []).append(f"{resource['resourceType']}/{resource.get('id')}")
    return modes


def test_include_revinclude_and_iterate(server):
    data = _subject_with_labs(server)
    pid = data["patient"]
    with server.client("ehr", "S01") as http:

        def get(resource_type, **params):
            response = http.get(f"/fhir/{resource_type}", params=params, headers={"Prefer": "handling=strict"})
            assert response.status_code == 200, response.text
            get_fhir_model_class("Bundle").model_validate(response.json())
            return response.json()

        found = get("Observation", subject=f"Patient/{pid}", code="718-7", _include="Observation:subject")
        assert sorted(_by_mode(found)["match"]) == sorted(f"Observation/{i}" for i in data["labs"])
        assert _by_mode(found)["include"] == [f"Patient/{pid}"]  # once, though both labs name it
        assert found["total"] == 2  # includes are not counted
        assert _by_mode(get("Observation", subject=f"Patient/{pid}", _include="Observation:patient:Patient"))[
            "include"
        ] == [f"Patient/{pid}"]

        reverse = get("Patient", _id=pid, _revinclude="Observation:subject")
        assert _by_mode(reverse)["match"] == [f"Patient/{pid}"]
        assert len(_by_mode(reverse)["include"]) == 3
        both = get("Patient", _id=pid, _revinclude=["Observation:patient", "ResearchSubject:individual"])
        assert f"ResearchSubject/{data['subject']}" in _by_mode(both)["include"]

        iterated = http.get(
            "/fhir/ResearchSubject",
            params=[
                ("_id", data["subject"]),
                ("_include", "ResearchSubject:individual"),
                ("_revinclude:iterate", "Observation:subject"),
            ],
        ).json()
        included = _by_mode(iterated)["include"]
        assert f"Patient/{pid}" in included and len([r for r in included if r.startswith("Observation/")]) == 3
        assert (
            "_include=ResearchSubject%3Aindividual"
            in {link["relation"]: link["url"] for link in iterated["link"]}["self"]
        )

        strict = {"Prefer": "handling=strict"}
        for bad in (
            {"_include": "Observation:code"},
            {"_include": "Patient:subject"},
            {"_include": "Observation:subject:Specimen"},
            {"_include": "Observation"},
        ):
            assert http.get("/fhir/Observation", params=bad, headers=strict).status_code == 400, bad
    with server.client("ehr", "S02") as other:  # another site's data are never included
        found = other.get("/fhir/Patient", params={"_id": pid, "_revinclude": "Observation:subject"}).json()
        assert found["total"] == 0 and not [e for e in found.get("entry", []) if e["search"]["mode"] != "outcome"]


def test_elements_chained_missing_and_not(server):
    data = _subject_with_labs(server)
    pid = data["patient"]
    other = _subject_with_labs(server, "S02")
    with server.client("ehr", "S01") as http:

        def ids(resource_type, **params):
            response = http.get(f"/fhir/{resource_type}", params=params, headers={"Prefer": "handling=strict"})
            assert response.status_code == 200, response.text
            return sorted(e["resource"]["id"] for e in response.json().get("entry", []))

        shown = http.get("/fhir/Observation", params={"_id": data["labs"][0], "_elements": "status,code"}).json()
        [resource] = [e["resource"] for e in shown["entry"]]
        assert set(resource) == {"resourceType", "id", "meta", "status", "code"}
        assert {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"} in resource[
            "meta"
        ]["tag"]
        assert "_elements=status%2Ccode" in shown["link"][0]["url"]

        every = sorted([*data["labs"], data["platelets"]])
        identifier = f"{MRN['S01']}|{data['mrn']}"
        assert ids("Observation", **{"subject.identifier": identifier}) == every
        assert ids("Observation", **{"subject:Patient.identifier": identifier}) == every
        assert ids("Observation", **{"patient.identifier": identifier, "code": "777-3"}) == [data["platelets"]]
        assert ids("ResearchSubject", **{"individual.identifier": identifier}) == [data["subject"]]
        assert ids("Observation", **{"subject.identifier": f"{MRN['S02']}|{other['mrn']}"}) == []  # another site
        assert ids("Observation", **{"subject:Patient": pid}) == every

        assert ids("Observation", subject=f"Patient/{pid}", **{"status:not": "final"}) == [data["platelets"]]
        assert ids("Observation", subject=f"Patient/{pid}", **{"code:not": "http://loinc.org|718-7"}) == [
            data["platelets"]
        ]
        assert ids("Observation", subject=f"Patient/{pid}", **{"date:missing": "false"}) == every
        assert ids("Observation", subject=f"Patient/{pid}", **{"date:missing": "true"}) == []
        assert ids("Patient", _id=pid, **{"identifier:missing": "true"}) == []
        assert ids("Patient", _id=pid, **{"identifier:missing": "false"}) == [pid]
        assert http.get("/fhir/Observation", params={"date:missing": "maybe"}).status_code == 400
        strict = {"Prefer": "handling=strict"}
        for bad in (
            {"subject.subject.identifier": "x"},
            {"code.identifier": "x"},
            {"subject.colour": "x"},
            {"date:not": "2026"},
        ):
            assert http.get("/fhir/Observation", params=bad, headers=strict).status_code == 400, bad


def test_text_modifier_searches_the_text_of_codes(server):
    """`:text` on a token parameter: the coding's display or the CodeableConcept's text, as a string search
    (starts with, case- and accent-insensitive)."""
    person, patient_url = patient(), urn()
    shown = {
        **lab(patient_url, "718-7", 13.2, "g/dL"),
        "code": {
            "coding": [{"system": "http://loinc.org", "code": "718-7", "display": "Hémoglobine [Mass/volume] in Blood"}]
        },
    }
    typed = {**lab(patient_url, "zz-local", 1, "1"), "code": {"text": "Serum ferritin (local test)"}}
    with server.client("ehr", "S01") as http:
        response = http.post(
            "/fhir", json=bundle([post(person, patient_url), post(shown), post(typed)]), headers=FHIR_JSON
        )
        assert response.status_code == 200, response.text
        ids = [entry["response"]["location"].split("/")[1] for entry in response.json()["entry"]]
        pid = ids[0]

        def found(text: str) -> set[str]:
            reply = http.get(
                "/fhir/Observation",
                params={"subject": f"Patient/{pid}", "code:text": text},
                headers={"Prefer": "handling=strict"},
            )
            assert reply.status_code == 200, reply.text
            return {entry["resource"]["id"] for entry in reply.json().get("entry", [])}

        assert found("hemoglobine") == {ids[1]} and found("HÉMO") == {ids[1]}
        assert found("serum ferr") == {ids[2]} and found("hemo,serum") == {ids[1], ids[2]}
        assert found("blood") == set()  # starts with, as string search
        assert found("nothing") == set()


def test_quantity_search_with_prefixes_in_the_canonical_unit_and_converted_exactly(server):
    data = _subject_with_labs(server)  # hemoglobin 12.0 and 12.1 g/dL (120, 121 g/L); platelets 210 10*3/uL
    pid = data["patient"]
    with server.client("ehr", "S01") as http:

        def ids(value, **params):
            response = http.get(
                "/fhir/Observation",
                params={"subject": f"Patient/{pid}", "value-quantity": value, **params},
                headers={"Prefer": "handling=strict"},
            )
            assert response.status_code == 200, response.text
            return sorted(e["resource"]["id"] for e in response.json().get("entry", []))

        ucum = "http://unitsofmeasure.org"
        assert ids(f"ge200|{ucum}|10*9/L") == [data["platelets"]]
        assert ids(f"ge200000|{ucum}|/uL") == [data["platelets"]]  # 200000 /uL = 200 10*9/L, exactly
        assert ids(f"gt210|{ucum}|10*9/L") == [] and ids(f"eq210|{ucum}|10*9/L") == [data["platelets"]]
        assert ids(f"210|{ucum}|10*3/uL") == [data["platelets"]]
        assert ids(f"ge120.5|{ucum}|g/L") == [data["labs"][1]]
        assert ids(f"le12.05|{ucum}|g/dL") == [data["labs"][0]]
        assert ids(f"ap121|{ucum}|g/L", code="718-7") == sorted(data["labs"])
        assert ids(f"ne120|{ucum}|g/L", code="718-7") == [data["labs"][1]]
        assert ids(f"ge1|{ucum}|mmol/L") == []  # a unit no item of the study accepts matches nothing
        assert http.get("/fhir/Observation", params={"value-quantity": "ge|x"}).status_code == 400
        assert (
            http.get("/fhir/Observation", params={"value-quantity": "ge1|http://snomed.info/sct|mg"}).status_code == 400
        )


def test_patient_name_family_given_birthdate_gender_for_roles_that_may_read_identifiers(server):
    person = {
        **patient(),
        "name": [{"family": "Nakamura-Ødegård", "given": ["Aiko", "Mei"]}],
        "birthDate": "1957-07-08",
        "gender": "female",
    }
    with server.client("coordinator", "S01") as http:
        created = http.post("/fhir/Patient", json=person, headers=FHIR_JSON)
        assert created.status_code == 201, created.text
        pid = created.json()["id"]

        def ids(**params):
            response = http.get(
                "/fhir/Patient", params={"_count": 500, **params}, headers={"Prefer": "handling=strict"}
            )
            assert response.status_code == 200, response.text
            return [e["resource"]["id"] for e in response.json().get("entry", [])]

        assert pid in ids(family="nakamura") and pid in ids(name="AIKO") and pid in ids(given="mei")
        assert pid in ids(**{"family:exact": "Nakamura-Ødegård"}) and pid not in ids(
            **{"family:exact": "nakamura-ødegård"}
        )
        assert pid in ids(**{"name:contains": "ødeg"}) and pid not in ids(family="ødegård")
        assert pid in ids(family="Nakamura", birthdate="1957-07-08", gender="female")
        assert pid not in ids(family="Nakamura", birthdate="1957-07-09")
        observation = http.post("/fhir/Observation", json=lab(f"Patient/{pid}", "718-7", 13, "g/dL"), headers=FHIR_JSON)
        found = http.get("/fhir/Observation", params={"subject.family": "nakamura", "code": "718-7"}).json()
        assert observation.json()["id"] in [e["resource"]["id"] for e in found["entry"]]
    with server.client("coordinator", "S02") as other:
        assert pid not in [
            e["resource"]["id"]
            for e in other.get("/fhir/Patient", params={"family": "nakamura"}).json().get("entry", [])
        ]
    with server.client("ehr", "S01") as ehr:  # an ehr client may not read identifiers: refused, not ignored
        for params in (
            {"family": "nakamura"},
            {"name": "aiko"},
            {"birthdate": "1957-07-08"},
            {"gender": "female"},
            {"given:exact": "Aiko"},
        ):
            refused = ehr.get("/fhir/Patient", params=params)
            assert refused.status_code == 403, params
            assert refused.json()["issue"][0]["code"] == "forbidden"
        assert ehr.get("/fhir/Observation", params={"subject.family": "nakamura"}).status_code == 403
        assert ehr.get("/fhir/Patient", params={"identifier": f"{MRN['S01']}|x"}).status_code == 200


def test_name_tokens_of_patients_stored_before_come_with_the_migration(tmp_path):
    from alembic import command
    from sqlalchemy import create_engine, text

    from ecrf.store.migrate import alembic_config, upgrade

    engine = create_engine(f"sqlite:///{tmp_path / 'names.db'}")
    upgrade(engine, "0012_patient_tokens")
    content = '{"resourceType": "Patient", "id": "p1", "name": [{"family": "Okafor", "given": ["Ada", "N"]}]}'
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO resource_version (pk, resource_type, resource_id, version_id, last_updated, deleted, content, "
                "author_sub, author_role, source) VALUES (1, 'Patient', 'p1', 1, '2026-01-01', 0, :c, 's', 'ehr', 'fhir')"
            ),
            {"c": content},
        )
        connection.execute(
            text(
                "INSERT INTO resource_head (resource_type, resource_id, version_id, version_pk, last_updated, deleted) "
                "VALUES ('Patient', 'p1', 1, 1, '2026-01-01', 0)"
            )
        )

    def tokens() -> set[tuple[str, str]]:
        with engine.connect() as connection:
            return set(
                connection.execute(text("SELECT param, code FROM search_token WHERE resource_type = 'Patient'")).all()
            )

    upgrade(engine)
    assert tokens() == {
        ("name", "Okafor"),
        ("name", "Ada"),
        ("name", "N"),
        ("family", "Okafor"),
        ("given", "Ada"),
        ("given", "N"),
    }
    command.downgrade(alembic_config(engine), "0030_patient_name_tokens-1")
    assert tokens() == set()
    engine.dispose()


def test_every_search_parameter_the_capability_statement_lists_is_r4s_and_works(server):
    from fhir_mappings.search_parameters import r4_search_parameters

    published = r4_search_parameters()
    assert {"Encounter", "DiagnosticReport", "MedicationRequest", "AdverseEvent"} <= set(published)
    with server.client() as anonymous:
        statement = anonymous.get("/fhir/metadata").json()
    get_fhir_model_class("CapabilityStatement").model_validate(statement)
    with server.client("coordinator", "S01") as http:
        for resource in statement["rest"][0]["resource"]:
            for param in resource.get("searchParam", []):
                name = param["name"]
                if name.startswith("_"):
                    continue
                r4 = published[resource["type"]][name]
                assert param["type"] == r4["type"] and param["definition"] == r4["url"], (resource["type"], name)
                value = {"date": "ge2000-01-01", "reference": "Patient/x", "quantity": "ge0", "string": "a"}.get(
                    param["type"], "x"
                )
                response = http.get(
                    f"/fhir/{resource['type']}", params={name: value}, headers={"Prefer": "handling=strict"}
                )
                assert response.status_code == 200, (resource["type"], name, response.text)
            for include in resource.get("searchInclude", []) + resource.get("searchRevInclude", []):
                kind = "_include" if include in resource.get("searchInclude", []) else "_revinclude"
                response = http.get(
                    f"/fhir/{resource['type']}", params={kind: include}, headers={"Prefer": "handling=strict"}
                )
                assert response.status_code == 200, (resource["type"], include, response.text)
