"""What a sponsor receives is de-identified: no name, MRN, address, phone, email, birth date, real event
date or free text leaves, in NDJSON or CSV; clinical values and intervals do; pseudonyms are stable."""

import csv
import hashlib
import io
from datetime import date, timedelta

import pytest
from sqlalchemy import text

from ecrf.export.deidentify import Deidentifier, completed_years, load_profile
from tests.conftest import running_server
from tests.crf_support import SURGERY, day, save
from tests.fhir_builders import MRN
from tests.test_export_protocol import STUDY, ASYNC, download, export, export_settings
from testkit.databases import fresh_database

PEOPLE = [
    {
        "site": "S01",
        "mrn": "MRN-ZQ-730215",
        "family": "Quackenbush",
        "given": "Zebediah",
        "born": "1931-02-17",
        "line": "742 Evergreen Terrace",
        "city": "Springfield",
        "postal": "49007",
        "phone": "+1-555-0100-7731",
        "email": "zeb.quack@example.org",
        "note": "Zebediah mentioned his divorce and new job at the mill",
    },
    {
        "site": "S02",
        "mrn": "MRN-PC-118842",
        "family": "Cartwright",
        "given": "Philomena",
        "born": "1965-08-09",
        "line": "12 Rue des Lilas",
        "city": "Marseille",
        "postal": "13008",
        "phone": "+33 4 91 55 12 34",
        "email": "p.cartwright@example.net",
        "note": "Philomena called from her daughter's house in Toulon",
    },
]
EVENT_DAYS = {"PREOP": -3, "surgery": 0, "POD7": 7, "consent": 14, "SCR": 21, "ehr": 25}
LOCAL_EXT = "http://hospital.example.org/fhir/StructureDefinition/home-village"


def _load(server) -> list[dict]:
    loaded = []
    for person in PEOPLE:
        with server.client("investigator", person["site"]) as http:
            response = http.post(
                "/api/v1/subjects",
                json={"site": person["site"], "mrn": person["mrn"], "consent_date": day(EVENT_DAYS["consent"])},
            )
            assert response.status_code == 201, response.text
            subject = response.json()
            for form in ("surgery", "labs", "ctc", "baseline"):
                assert save(http, subject["id"], form).status_code == 201
            demographics = {
                "birth_date": person["born"],
                "sex": "female",
                "consent_date": day(EVENT_DAYS["consent"]),
                "weight": 61.5,
                "height": 158,
                "wocbp": False,
                "tissue_consent": True,
            }
            assert save(http, subject["id"], "demographics", demographics).status_code == 201
        with server.client("ehr", person["site"]) as http:
            patient_url = f"/fhir/Patient/{subject['patient_id']}"
            link = {"resourceType": "Patient", "identifier": [{"system": MRN[person["site"]], "value": person["mrn"]}]}
            assert http.post("/fhir/Patient", json=link).status_code == 200  # the ehr sees the Patients it pushed
            patient = http.get(patient_url).json()
            patient.update(
                {
                    "name": [
                        {
                            "family": person["family"],
                            "given": [person["given"]],
                            "text": f"{person['given']} {person['family']}",
                        }
                    ],
                    "telecom": [
                        {"system": "phone", "value": person["phone"]},
                        {"system": "email", "value": person["email"]},
                    ],
                    "address": [
                        {
                            "line": [person["line"]],
                            "city": person["city"],
                            "postalCode": person["postal"],
                            "state": "IL",
                        }
                    ],
                    "extension": [{"url": LOCAL_EXT, "valueString": person["city"]}],
                }
            )
            assert http.put(patient_url, json=patient).status_code == 200
            observation = {
                "resourceType": "Observation",
                "status": "final",
                "text": {
                    "status": "generated",
                    "div": f'<div xmlns="http://www.w3.org/1999/xhtml">{person["given"]} {person["family"]}</div>',
                },
                "code": {
                    "coding": [{"system": "http://loinc.org", "code": "718-7", "display": "Hemoglobin"}],
                    "text": f"Hb of {person['family']}",
                },
                "subject": {"reference": f"Patient/{subject['patient_id']}", "display": person["family"]},
                "effectiveDateTime": f"{day(EVENT_DAYS['ehr'])}T09:15:00Z",
                "valueQuantity": {"value": 12.4, "unit": "g/dL", "system": "http://unitsofmeasure.org", "code": "g/dL"},
                "note": [{"text": person["note"]}],
                "identifier": [{"system": "urn:oid:2.16.840.1.113883.3.9999.1.77", "value": person["mrn"] + "-LAB"}],
            }
            response = http.post("/fhir/Observation", json=observation)
            assert response.status_code == 201, response.text
        loaded.append({**person, **subject, "ehr_observation": response.json()["id"]})
    return loaded


@pytest.fixture(scope="module")
def study(database_url, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("export-deid")
    with fresh_database(database_url, tmp_path) as url:
        settings = export_settings(url, tmp_path)
        with running_server(settings) as server:
            yield server, _load(server)


def _identifying(subjects: list[dict]) -> list[str]:
    strings = []
    for subject in subjects:
        strings += [
            subject[key] for key in ("mrn", "family", "given", "line", "city", "postal", "phone", "email", "born")
        ]
        strings += [word for word in subject["note"].split() if len(word) >= 5]
        strings += [subject["id"], subject["patient_id"], subject["ehr_observation"]]
    strings += [day(offset) for offset in EVENT_DAYS.values()]
    return strings


def _csv(http, form_id: str, **params) -> tuple[list[dict], str, dict]:
    response = http.get(f"/api/v1/exports/forms/{form_id}.csv", params=params)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    return list(csv.DictReader(io.StringIO(response.text))), response.text, response.headers


def test_nothing_identifying_reaches_a_sponsor(study):
    server, subjects = study
    with server.client("sponsor") as http:
        manifest = export(http)
        raw = [http.get(entry["url"]).text for entry in manifest["output"]]
        system = export(http, "/fhir/$export")
        raw += [http.get(entry["url"]).text for entry in system["output"]]
        raw += [_csv(http, form_id)[1] for form_id in ("demographics", "labs", "surgery", "ctc", "baseline")]
    everything = "\n".join(raw)
    assert len(everything) > 10_000
    leaked = [value for value in _identifying(subjects) if value in everything]
    assert leaked == []
    for key in ('"div"', '"text"', '"note"', '"display"', '"identifier"', '"name"', '"telecom"', '"birthDate"'):
        assert key not in everything
    assert LOCAL_EXT not in everything


def test_values_and_intervals_survive(study):
    server, subjects = study
    profile = load_profile(server.settings.export_profile)
    deid = Deidentifier(profile, server.settings.study_secret.encode())
    with server.client("sponsor") as http:
        files = download(http, export(http))
        labs, _, _ = _csv(http, "labs")
        demographics, _, _ = _csv(http, "demographics")
    for subject in subjects:
        pseudonym = deid.pseudonym(subject["patient_id"])
        mine = [o for o in files["Observation"] if o["subject"]["reference"] == f"Patient/{pseudonym}"]
        shift = timedelta(days=deid.shift_days(subject["patient_id"]))
        assert abs(shift.days) >= 60
        ehr = [o for o in mine if o["effectiveDateTime"].endswith("T09:15:00Z")]
        assert [o["valueQuantity"]["value"] for o in ehr] == [12.4]
        assert ehr[0]["effectiveDateTime"] == f"{(SURGERY + timedelta(days=25) + shift).isoformat()}T09:15:00Z"
        [surgery] = [p for p in files["Procedure"] if p["subject"]["reference"] == f"Patient/{pseudonym}"]
        surgery_day = date.fromisoformat(surgery["performedDateTime"][:10])
        labs_day = {
            date.fromisoformat(o["effectiveDateTime"][:10]) for o in mine if o["code"]["coding"][0]["code"] == "777-3"
        }
        assert {(d - surgery_day).days for d in labs_day} == {21}  # interval kept, dates moved
        [patient] = [p for p in files["Patient"] if p["id"] == pseudonym]
        assert set(patient) <= {"resourceType", "id", "meta", "gender", "address", "extension"}
        assert patient["address"] == [{"state": "IL"}]
        [age] = [e["valueAge"] for e in patient["extension"]]
        born = date.fromisoformat(subject["born"])
        if born.year < 1935:
            assert (age["value"], age["comparator"]) == (90, ">=")
        else:
            assert age["value"] == completed_years(born, SURGERY + timedelta(days=14)) and "comparator" not in age
        [scr] = [row for row in labs if row["subject"] == pseudonym and row["visit"] == "SCR"]
        assert scr["hemoglobin [g/L]"] == "132.0" and scr["platelets [10*9/L]"] == "180"
        assert scr["study_day"] == "21" and scr["visit_date"] == (SURGERY + timedelta(days=21) + shift).isoformat()
        [demo] = [row for row in demographics if row["subject"] == pseudonym]
        assert "birth_date" not in demo and demo["age [a]"] in (">=90", str(age["value"]))
        assert demo["consent_date"] == (SURGERY + timedelta(days=14) + shift).isoformat()
    subject_ids = {s["reference"] for s in (r["individual"] for r in files["ResearchSubject"])}
    assert subject_ids == {f"Patient/{deid.pseudonym(s['patient_id'])}" for s in subjects}
    assert {r["study"]["reference"] for r in files["ResearchSubject"]} == {f"ResearchStudy/{STUDY}"}


def test_pseudonyms_are_stable_across_exports(study):
    server, _ = study
    with server.client("sponsor") as http:
        first = download(http, export(http))
        second = download(http, export(http))
        csv_first, csv_second = _csv(http, "labs")[1], _csv(http, "labs")[1]
    assert first == second
    assert csv_first == csv_second


def test_csv_columns_follow_the_form_and_the_manifest_matches(study):
    server, subjects = study
    with server.client("data_manager") as http:
        rows, body, headers = _csv(http, "labs", deidentify="false")
        manifest = http.get("/api/v1/exports/forms/labs.csv.manifest", params={"deidentify": "false"}).json()
        sponsor_manifest = http.get("/api/v1/exports/forms/labs.csv.manifest").json()
    header = body.splitlines()[0].split(",")
    assert header[:7] == ["subject", "site", "visit", "visit_date", "study_day", "anc [10*9/L]", "platelets [10*9/L]"]
    assert manifest["columns"] == header and manifest["data_version"] == int(headers["X-Data-Version"])
    assert manifest["sha256"] == hashlib.sha256(body.encode()).hexdigest()
    assert manifest["rows"] == len(rows) == 2 and manifest["subjects"] == 2 and manifest["deidentified"] is False
    assert {row["subject"] for row in rows} == {s["id"] for s in subjects}
    assert sponsor_manifest["profile"] == "safe-harbor/1" and sponsor_manifest["sha256"] != manifest["sha256"]


def test_a_sponsor_reaches_no_identified_endpoint(study):
    server, subjects = study
    subject = subjects[0]
    with server.client("sponsor") as http:
        for url in (
            f"/fhir/Patient/{subject['patient_id']}",
            f"/fhir/Observation?subject=Patient/{subject['patient_id']}",
            f"/api/v1/subjects/{subject['id']}",
            "/api/v1/subjects",
            f"/api/v1/subjects/{subject['id']}/forms/labs/SCR",
            f"/api/v1/subjects/{subject['id']}/audit",
            "/api/v1/exports/forms/labs.csv?deidentify=false",
            "/api/v1/exports/forms/labs.csv.manifest?deidentify=false",
        ):
            assert http.get(url).status_code == 403, url
        for url in ("/fhir/$export", f"/fhir/Group/{STUDY}/$export"):
            assert http.get(url, params={"deidentify": "false"}, headers=ASYNC).status_code == 403


def test_every_export_is_an_audit_entry(study):
    server, _ = study
    with server.client("sponsor", sub="audited-sponsor") as http:
        manifest = export(http, _type="Patient")
        http.get(manifest["output"][0]["url"])
        _csv(http, "surgery")
    with server.runtime.engine.connect() as connection:
        entries = connection.execute(
            text(
                "SELECT action, actor_role, reason, new_value FROM audit_entry WHERE actor_sub = 'audited-sponsor' ORDER BY seq"
            )
        ).all()
    assert [(e.action, e.actor_role, e.reason) for e in entries] == [
        ("export", "sponsor", "safe-harbor/1"),
        ("export.download", "sponsor", "safe-harbor/1"),
        ("export", "sponsor", "safe-harbor/1"),
    ]
    assert '"counts": {"Patient": 2}' in entries[0].new_value
    assert '"rows": 2' in entries[2].new_value and '"form": "surgery"' in entries[2].new_value
