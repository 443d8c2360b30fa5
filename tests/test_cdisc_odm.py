"""CDISC ODM 1.3.2 export (issue 19): the archive holds every version of every value with who, when and why,
agrees with the audit chain, and validates against the ODM XSD; the snapshot holds the current values."""

import pytest
from lxml import etree
from sqlalchemy import text

from tests.cdisc_support import cdisc_export, files, odm_schema, randomised_subject, shared_odm_schema
from tests.conftest import running_server
from tests.crf_support import VALID, day, enrol, path, save
from tests.test_export_protocol import export_settings
from testkit.databases import fresh_database

NS = {"odm": "http://www.cdisc.org/ns/odm/v1.3"}


def _load(server) -> dict:
    with server.client("investigator", "S01", sub="dr-who") as http:
        subject = enrol(http)
        for form in ("surgery", "demographics", "labs"):
            assert save(http, subject["id"], form).status_code == 201
        labs = {**VALID["labs"][2], "platelets": 190}
        assert save(http, subject["id"], "labs", labs, reason="transcription error").status_code == 200
        ehr = {
            "resourceType": "Observation",
            "status": "final",
            "effectiveDateTime": day(-50),
            "code": {"coding": [{"system": "http://loinc.org", "code": "718-7"}]},
            "subject": {"reference": f"Patient/{subject['patient_id']}"},
            "valueQuantity": {"value": 12.4, "unit": "g/dL", "system": "http://unitsofmeasure.org", "code": "g/dL"},
        }
        assert http.post("/fhir/Observation", json=ehr).status_code == 201
    with server.client("monitor", "S01", sub="mon-1") as http:
        assert http.post(path(subject["id"], "labs", "SCR") + "/verify").status_code == 200
        query = http.post(
            f"/api/v1/subjects/{subject['id']}/queries",
            json={"form_id": "labs", "visit_id": "SCR", "item_id": "anc", "text": "please confirm ANC"},
        )
        assert query.status_code == 201, query.text
    with server.client("investigator", "S01", sub="dr-who") as http:
        assert http.post(f"/api/v1/queries/{query.json()['id']}/answer", json={"text": "confirmed"}).status_code == 200
        signed = http.post(path(subject["id"], "labs", "SCR") + "/sign", json={"meaning": "I approve these results"})
        assert signed.status_code == 200, signed.text
    with server.client(
        "investigator", "S01", sub="dr-who"
    ) as http:  # log-form entries: typed, edited, withdrawn, pushed
        entries = f"/api/v1/subjects/{subject['id']}/forms"
        ae = {"ctcae_term": "rash", "onset_date": day(40), "grade": 1, "serious": False, "outcome": "recovering"}
        typed = http.post(f"{entries}/adverse_event/entries", json={"items": ae})
        assert typed.status_code == 201, typed.text
        assert (
            http.put(
                f"{entries}/adverse_event/entries/{typed.json()['id']}",
                json={"items": {**ae, "grade": 2}, "reason": "grade per the source"},
            ).status_code
            == 200
        )
        conmed = http.post(
            f"{entries}/conmed/entries",
            json={"items": {"medication": "Omeprazole 20 mg", "atc": "A", "start_date": day(30), "ongoing": True}},
        )
        assert conmed.status_code == 201, conmed.text
        assert (
            http.post(
                f"{entries}/conmed/entries/{conmed.json()['id']}/withdraw", json={"reason": "wrong subject"}
            ).status_code
            == 200
        )
        pushed = {
            "resourceType": "AdverseEvent",
            "actuality": "actual",
            "date": day(45),
            "subject": {"reference": f"Patient/{subject['patient_id']}"},
            "event": {"coding": [{"system": "http://example.org/fhir/CodeSystem/nct04163237", "code": "ae-fatigue"}]},
            "seriousness": {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/adverse-event-seriousness", "code": "non-serious"}
                ]
            },
        }
        assert http.post("/fhir/AdverseEvent", json=pushed).status_code == 201
        listed = http.get(f"{entries}/adverse_event/entries").json()
        log = {"adverse_event": {e["source"]: e["id"] for e in listed}, "conmed": conmed.json()["id"]}
    with server.client("investigator", "S02") as http:
        other = enrol(http, "S02")
        assert save(http, other["id"], "surgery").status_code == 201
    with server.client("investigator", "S01", sub="dr-rand") as http:
        randomised, allocation = randomised_subject(http)  # v2: the system allocates, writing the form
    return {"subject": subject, "other": other, "randomised": randomised, "allocation": allocation, "log": log}


@pytest.fixture(scope="module")
def study(database_url, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("cdisc-odm")
    with fresh_database(database_url, tmp_path) as url:
        with running_server(export_settings(url, tmp_path)) as server:
            yield server, _load(server)


def _odm(http, **params) -> tuple[etree._Element, dict]:
    manifest = cdisc_export(http, "odm", **params)
    [entry] = manifest["output"]
    assert entry["type"] == "odm"
    [content] = files(http, manifest).values()
    document = etree.fromstring(content)
    schema = odm_schema()
    assert schema.validate(document), schema.error_log
    return document, manifest


def test_archive_holds_every_version_with_who_when_why(study):
    server, data = study
    subject = data["subject"]
    with server.client("data_manager", sub="dm-1") as http:
        document, manifest = _odm(http, deidentify="false")
    assert document.get("FileType") == "Transactional" and document.get("Archival") == "Yes"
    [mine] = document.xpath("//odm:SubjectData[@SubjectKey=$key]", namespaces=NS, key=subject["id"])
    assert mine.find("odm:SiteRef", NS).get("LocationOID") == "LOC.S01"
    platelets = mine.xpath(".//odm:ItemData[@ItemOID='IT.labs.platelets']", namespaces=NS)
    assert [(i.get("Value"), i.get("TransactionType")) for i in platelets] == [("180", "Insert"), ("190", "Update")]
    reasons = [i.findtext("odm:AuditRecord/odm:ReasonForChange", namespaces=NS) for i in platelets]
    assert reasons == [None, "transcription error"]
    with server.runtime.engine.connect() as connection:
        chain = connection.execute(
            text(
                "SELECT seq, at, actor_site FROM audit_entry WHERE patient_id = :p AND item_id = 'platelets' ORDER BY seq"
            ),
            {"p": subject["patient_id"]},
        ).all()
        head = connection.execute(text("SELECT last_seq, last_hash FROM audit_head")).one()
    sources = [i.findtext("odm:AuditRecord/odm:SourceID", namespaces=NS) for i in platelets]
    assert [s.split()[0] for s in sources] == [f"audit:{row.seq}" for row in chain]
    stamps = [i.findtext("odm:AuditRecord/odm:DateTimeStamp", namespaces=NS) for i in platelets]
    assert [s[:19] for s in stamps] == [str(row.at)[:19].replace(" ", "T") for row in chain]
    users = {u.get("OID"): u.findtext("odm:LoginName", namespaces=NS) for u in document.iterfind(".//odm:User", NS)}
    user = platelets[0].find("odm:AuditRecord/odm:UserRef", NS).get("UserOID")
    assert users[user] == "dr-who"
    form = platelets[0].getparent().getparent()
    signature = form.find("odm:Signature", NS)
    assert users[signature.find("odm:UserRef", NS).get("UserOID")] == "dr-who"
    meaning = document.xpath(
        "//odm:SignatureDef[@OID=$oid]/odm:Meaning/text()",
        namespaces=NS,
        oid=signature.find("odm:SignatureRef", NS).get("SignatureOID"),
    )
    assert meaning == ["I approve these results"]
    notes = " ".join(form.xpath("odm:Annotation/odm:Comment/text()", namespaces=NS))
    assert "form.verify" in notes and "query.raise" in notes and "please confirm ANC" in notes and "confirmed" in notes
    [pushed] = mine.xpath("odm:StudyEventData[@StudyEventOID='SE.UNS']//odm:ItemData", namespaces=NS)
    assert (pushed.get("ItemOID"), pushed.get("Value")) == ("IT.labs.hemoglobin", "124.0")
    assert "door:fhir" in pushed.findtext("odm:AuditRecord/odm:SourceID", namespaces=NS)
    entry = manifest["output"][0]
    assert entry["audit_chain_head"]["seq"] >= chain[-1].seq and entry["count"] == 3  # v2: + the randomised subject
    assert entry["audit_chain_head"]["seq"] <= head.last_seq
    assert len(entry["sha256"]) == 64


def test_metadata_from_the_forms(study):
    server, data = study
    with server.client("data_manager") as http:
        document, _ = _odm(http, deidentify="false", mode="snapshot")
    assert document.get("FileType") == "Snapshot"
    study_def = server.runtime.study
    assert {e.get("OID") for e in document.iterfind(".//odm:StudyEventDef", NS)} == {
        f"SE.{v.id}" for v in study_def.visits
    } | {"SE.UNS", "SE.LOG"}  # LOG: the log forms' entries
    [log] = document.xpath("//odm:StudyEventDef[@OID='SE.LOG']", namespaces=NS)
    assert {r.get("FormOID") for r in log.iterfind("odm:FormRef", NS)} == {
        f"F.{f.id}" for f in study_def.forms if f.kind == "log"
    }
    assert document.xpath("//odm:FormDef[@OID='F.adverse_event']/@Repeating", namespaces=NS) == ["Yes"]
    [anc] = document.xpath("//odm:ItemDef[@OID='IT.labs.anc']", namespaces=NS)
    assert anc.get("DataType") == "float"
    checks = {
        (r.get("Comparator"), r.get("SoftHard"), r.findtext("odm:CheckValue", namespaces=NS))
        for r in anc.iterfind("odm:RangeCheck", NS)
    }
    assert checks == {("GE", "Hard", "0"), ("LE", "Hard", "100"), ("GE", "Soft", "1.8"), ("LE", "Soft", "6.3")}
    assert document.xpath("//odm:CodeList[@OID='CL.demographics.sex']/odm:CodeListItem/@CodedValue", namespaces=NS) == [
        "male",
        "female",
    ]
    assert document.xpath(
        "//odm:ItemRef[@ItemOID='IT.demographics.contraception_agreed']/@CollectionExceptionConditionOID", namespaces=NS
    ) == ["COND.demographics.contraception_agreed"]
    values = document.xpath(
        "//odm:SubjectData[@SubjectKey=$key]//odm:ItemData[@ItemOID='IT.labs.platelets']/@Value",
        namespaces=NS,
        key=data["subject"]["id"],
    )
    assert values == ["190"]  # the snapshot: current values only


def test_a_site_archive_holds_that_site_only_and_its_download_is_in_the_access_log(study):
    server, data = study
    with server.client("data_manager", sub="dm-site-archive") as http:
        document, _ = _odm(http, deidentify="false", site="S02")
    assert document.xpath("//odm:SubjectData/@SubjectKey", namespaces=NS) == [data["other"]["id"]]
    with server.runtime.engine.connect() as connection:
        logged = connection.execute(
            text("SELECT patient_id, kind, interaction FROM access_event WHERE actor_sub = 'dm-site-archive'")
        ).all()
    assert [tuple(row) for row in logged] == [(data["other"]["patient_id"], "identified_export", "export.odm_file")]


def test_an_investigator_takes_its_own_sites_identified_archive_and_nothing_else(study):
    """21 CFR 11.10(b): a site's investigator gets an accurate and complete copy of its own site's records."""
    server, data = study
    with server.client("investigator", "S01", sub="dr-archive") as http:
        document, manifest = _odm(http, deidentify="false", site="S01", mode="archive")
        keys = set(document.xpath("//odm:SubjectData/@SubjectKey", namespaces=NS))
        assert data["subject"]["id"] in keys and data["randomised"]["id"] in keys
        assert data["other"]["id"] not in keys  # S02's subject is not in S01's archive
        assert (
            http.get(
                "/api/v1/exports/odm",
                params={"site": "S02", "deidentify": "false"},
                headers={"Prefer": "respond-async"},
            ).status_code
            == 404
        )
        for params in (
            {"deidentify": "false"},
            {"site": "S01"},
            {"site": "S01", "deidentify": "false", "mode": "snapshot"},
        ):
            refused = http.get("/api/v1/exports/odm", params=params, headers={"Prefer": "respond-async"})
            assert refused.status_code == 403, (params, refused.text)
        assert http.get("/api/v1/exports/sdtm", headers={"Prefer": "respond-async"}).status_code == 403
        assert http.get("/fhir/$export", headers={"Prefer": "respond-async"}).status_code == 403
    job = manifest["output"][0]["url"].split("/$export-file/")[1].split("/")[0]
    with server.client("investigator", "S01", sub="dr-other") as http:  # another investigator: not its job
        assert http.get(f"/fhir/$export-status/{job}").status_code == 404
    with server.runtime.engine.connect() as connection:
        logged = connection.execute(text("SELECT DISTINCT kind FROM access_event WHERE actor_sub = 'dr-archive'")).all()
    assert [row[0] for row in logged] == ["identified_export"]


def test_audit_records_agree_with_the_verified_chain(study):
    server, _ = study
    with server.client("data_manager") as http:
        document, _ = _odm(http, deidentify="false")
        verified = http.get("/api/v1/admin/audit/verify").json()
    assert verified["ok"] is True
    with server.runtime.engine.connect() as connection:
        entries = {
            row.seq: row
            for row in connection.execute(
                text(
                    "SELECT seq, at, actor_sub, form_id, visit_id, item_id, reason FROM audit_entry "
                    "WHERE item_id IS NOT NULL AND form_id IS NOT NULL AND action IN ('create', 'update', 'delete')"
                )
            )
        }
    users = {u.get("OID"): u.findtext("odm:LoginName", namespaces=NS) for u in document.iterfind(".//odm:User", NS)}
    seen = set()
    for data in document.iterfind(".//odm:ItemData", NS):
        record = data.find("odm:AuditRecord", NS)
        seq = int(record.findtext("odm:SourceID", namespaces=NS).split()[0].removeprefix("audit:"))
        entry = entries[seq]
        form_id = data.getparent().getparent().get("FormOID").removeprefix("F.")
        assert data.get("ItemOID") == f"IT.{entry.form_id}.{entry.item_id}" and form_id == entry.form_id
        assert users[record.find("odm:UserRef", NS).get("UserOID")] == entry.actor_sub
        assert record.findtext("odm:DateTimeStamp", namespaces=NS)[:19] == str(entry.at)[:19].replace(" ", "T")
        assert record.findtext("odm:ReasonForChange", namespaces=NS) == entry.reason
        seen.add(seq)
    assert seen == set(entries)  # every item-level entry of the chain is in the archive, and nothing else


def test_the_systems_allocation_is_in_the_archive(study):
    """v2: the randomise action writes the randomisation form (arm, date): the archive has both values, at the
    form's visit, by the investigator who randomised, from the form door."""
    server, data = study
    with server.client("data_manager") as http:
        document, _ = _odm(http, deidentify="false")
    [mine] = document.xpath("//odm:SubjectData[@SubjectKey=$key]", namespaces=NS, key=data["randomised"]["id"])
    users = {u.get("OID"): u.findtext("odm:LoginName", namespaces=NS) for u in document.iterfind(".//odm:User", NS)}
    allocation = data["allocation"]
    for item, value in (("arm", allocation["arm"]), ("randomisation_date", allocation["randomisation_date"])):
        [found] = mine.xpath(f".//odm:ItemData[@ItemOID='IT.randomisation.{item}']", namespaces=NS)
        assert (found.get("Value"), found.get("TransactionType")) == (value, "Insert")
        assert found.getparent().getparent().getparent().get("StudyEventOID") == "SE.SCR"
        assert users[found.find("odm:AuditRecord/odm:UserRef", NS).get("UserOID")] == "dr-rand"


@pytest.mark.parametrize(
    "params",
    [{"deidentify": "false"}, {"deidentify": "false", "mode": "snapshot"}, {}],
    ids=["archive", "snapshot", "sponsor"],
)
def test_the_files_are_valid_against_the_shared_odm_xsd_too(study, params):
    """Besides odmlib's copy (every test above): CDISC's XSD as ../shared/cdisc holds it."""
    server, _ = study
    schema = shared_odm_schema()
    with server.client("sponsor" if not params else "data_manager") as http:
        document, _ = _odm(http, **params)
    assert schema.validate(document), schema.error_log


def test_log_form_entries_are_repeating_forms_of_the_log_event(study):
    """Each entry of a log form is a FormData of SE.LOG with its entry id as FormRepeatKey: in the archive every
    version of its values (the eCRF's edit, the EHR's push, a withdrawn entry's removal) and its status changes;
    in the snapshot the current values of the entries that are data."""
    server, data = study
    log = data["log"]
    with server.client("data_manager") as http:
        archive, _ = _odm(http, deidentify="false")
        snapshot, _ = _odm(http, deidentify="false", mode="snapshot")
    key = data["subject"]["id"]

    def forms(document, form_id):
        return {
            f.get("FormRepeatKey"): f
            for f in document.xpath(
                "//odm:SubjectData[@SubjectKey=$key]/odm:StudyEventData[@StudyEventOID='SE.LOG']"
                "/odm:FormData[@FormOID=$form]",
                namespaces=NS,
                key=key,
                form=f"F.{form_id}",
            )
        }

    def values(form, item_id):
        return [
            (d.get("TransactionType"), d.get("Value"))
            for d in form.xpath(f".//odm:ItemData[@ItemOID='IT.{form.get('FormOID')[2:]}.{item_id}']", namespaces=NS)
        ]

    events = forms(archive, "adverse_event")
    assert set(events) == {log["adverse_event"]["form"], log["adverse_event"]["fhir"]}
    typed, pushed = events[log["adverse_event"]["form"]], events[log["adverse_event"]["fhir"]]
    assert values(typed, "grade") == [("Insert", "1"), ("Update", "2")]
    assert typed.xpath(
        ".//odm:ItemData[@ItemOID='IT.adverse_event.grade'][2]/odm:AuditRecord/odm:ReasonForChange/text()",
        namespaces=NS,
    ) == ["grade per the source"]
    assert values(pushed, "ctcae_term") == [("Insert", "fatigue")]
    assert "door:fhir" in pushed.xpath("string(.//odm:ItemData[1]/odm:AuditRecord/odm:SourceID)", namespaces=NS)
    [withdrawn] = forms(archive, "conmed").values()
    assert withdrawn.get("FormRepeatKey") == log["conmed"]
    assert ("Remove", None) in values(withdrawn, "start_date")
    assert any("form.withdraw" in c for c in withdrawn.xpath(".//odm:Annotation/odm:Comment/text()", namespaces=NS))
    current = forms(snapshot, "adverse_event")
    assert set(current) == set(events) and values(current[log["adverse_event"]["form"]], "grade") == [("Insert", "2")]
    assert forms(snapshot, "conmed") == {}  # withdrawn: no data any more
