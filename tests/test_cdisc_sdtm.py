"""SDTM datasets (issue 19): Dataset-JSON 1.1 (JSON, NDJSON) valid against CDISC's schemas, XPT v5 read back by
pyreadstat equal to the Dataset-JSON, define.xml valid against Define-XML 2.1 and describing exactly the datasets,
and spot checks against hand-derived rows (DM of a randomised subject, LB with a converted unit and a defaulted
ULN, DS for the randomisation)."""

import io
import json
import zipfile
from datetime import timedelta

import jsonschema
import orjson
import pyreadstat
import pytest
from lxml import etree

from tests.cdisc_support import (
    DATASET_JSON,
    RANDOMISED,
    RANDOMISED_SURGERY,
    cdisc_export,
    define_schema,
    files,
    adverse_event,
    exposure,
    log_entry,
    medication,
    on_day,
    randomised_subject,
)
from tests.conftest import running_server
from tests.crf_support import VALID, enrol, save
from tests.test_export_protocol import export_settings
from testkit.databases import fresh_database

STUDY = "NCT04163237"
ODM = {"odm": "http://www.cdisc.org/ns/odm/v1.3", "def": "http://www.cdisc.org/ns/def/v2.1"}


def _load(server) -> dict:
    with server.client("investigator", "S01") as http:
        labs = {**RANDOMISED["labs"][2], "bilirubin": {"value": 1.2, "unit": "mg/dL"}}
        labs.pop("ast_uln")  # AST's ULN is then the study's default (40 U/L)
        subject, allocation = randomised_subject(http, changes={"labs": labs})  # v2: the system allocates
        log_entry(http, subject["id"], "adverse_event", adverse_event("sore red palms"))
        log_entry(
            http,
            subject["id"],
            "adverse_event",
            adverse_event("typed into the wrong subject", grade=1, serious=False, seriousness_criteria=None),
            withdraw="another subject's event",
        )
        log_entry(
            http,
            subject["id"],
            "adverse_event",
            adverse_event(
                None,
                ctcae_term="diarrhea",
                grade=2,
                serious=False,
                seriousness_criteria=None,
                resolution_date=None,
                outcome="recovering",
                action_taken="none",
            ),
        )
        log_entry(http, subject["id"], "conmed", medication("Paracetamol 1 g", "fever"))
        log_entry(
            http,
            subject["id"],
            "conmed",
            medication("Loperamide", "diarrhoea", atc="A", ongoing=False, end_date=on_day(19)),
        )
        log_entry(http, subject["id"], "exposure", exposure())  # an infusion: no end date
        log_entry(
            http,
            subject["id"],
            "exposure",
            exposure(
                drug="sorafenib",
                start_date=on_day(20),  # before the randomisation: a deviation, accepted
                end_date=on_day(22),
                dose=400,  # without a unit: the item's (mg)
                route="oral",
                frequency="bid",
                modification="reduced",
                modification_reason="adverse_event",
            ),
        )
        log_entry(http, subject["id"], "exposure", exposure(dose={"value": 999, "unit": "mg"}), withdraw="typo")
        log_entry(
            http,
            subject["id"],
            "exposure",
            exposure(frequency="other", modification="interrupted", modification_reason="other"),
        )
        ehr = {
            "resourceType": "Observation",
            "status": "final",
            "effectiveDateTime": on_day(-50),
            "code": {"coding": [{"system": "http://loinc.org", "code": "718-7"}]},
            "subject": {"reference": f"Patient/{subject['patient_id']}"},
            "valueQuantity": {"value": 12.4, "unit": "g/dL", "system": "http://unitsofmeasure.org", "code": "g/dL"},
        }
        assert http.post("/fhir/Observation", json=ehr).status_code == 201  # outside every window: unscheduled
        ineligible = enrol(http)
        assert save(http, ineligible["id"], "surgery").status_code == 201
        assert save(http, ineligible["id"], "baseline", {**VALID["baseline"][2], "ecog": 3}).status_code == 201
        eligibility = http.get(f"/api/v1/subjects/{ineligible['id']}/eligibility").json()
        assert eligibility["status"] == "ineligible"
        waiting = enrol(http)  # consented, neither randomised nor ineligible
    return {
        **subject,
        "allocation": allocation,
        "ineligible": ineligible,
        "ineligible_r": eligibility["reference_date"],
        "waiting": waiting,
    }


@pytest.fixture(scope="module")
def study(database_url, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("cdisc-sdtm")
    with fresh_database(database_url, tmp_path) as url:
        with running_server(export_settings(url, tmp_path)) as server:
            subject = _load(server)
            with server.client("data_manager") as http:
                manifest = cdisc_export(http, "sdtm", deidentify="false")
                content = files(http, manifest)
            yield server, subject, manifest, content


def server_visits():
    from study_model.loader import default_study_dir, load_study

    return {visit.id: visit for visit in load_study(default_study_dir()).visits}.values()


def _json(content: dict[str, bytes], name: str) -> dict:
    return orjson.loads(content[f"{name.lower()}.json"])


def _records(dataset: dict) -> list[dict]:
    names = [column["name"] for column in dataset["columns"]]
    return [dict(zip(names, row)) for row in dataset["rows"]]


def test_every_file_is_valid_and_the_formats_agree(study, tmp_path):
    _, _, manifest, content = study
    schema = json.loads((DATASET_JSON / "dataset.schema.json").read_text())
    names = {entry["type"] for entry in manifest["output"] if entry.get("format") == "json"}
    assert {
        "DM",
        "SUPPDM",
        "AE",
        "SUPPAE",
        "CM",
        "SUPPCM",
        "EX",
        "SUPPEX",
        "DS",
        "IE",
        "SV",
        "PR",
        "VS",
        "LB",
        "SUPPLB",
        "SUPPVS",
    } <= names
    for name in names:
        dataset = _json(content, name)
        jsonschema.validate(dataset, schema)
        assert dataset["records"] == len(dataset["rows"])
        lines = content[f"{name.lower()}.ndjson"].splitlines()
        head = orjson.loads(lines[0])
        # the NDJSON schema CDISC ships has dangling $refs (#/$defs/Column): its metadata line is the JSON's head
        jsonschema.validate(head, schema)
        assert "rows" not in head
        assert [orjson.loads(line) for line in lines[1:]] == dataset["rows"]
        path = tmp_path / f"{name.lower()}.xpt"
        path.write_bytes(content[f"{name.lower()}.xpt"])
        data, meta = pyreadstat.read_xport(str(path), output_format="dict")
        assert meta.table_name == name and list(data) == [c["name"] for c in dataset["columns"]]
        for index, column in enumerate(dataset["columns"]):
            expected = [row[index] for row in dataset["rows"]]
            if column["dataType"] in ("integer", "double"):
                expected = [None if v is None else float(v) for v in expected]
            else:
                expected = ["" if v is None else v for v in expected]
            assert data[column["name"]] == expected, (name, column["name"])
    with zipfile.ZipFile(io.BytesIO(content["sdtm-package.zip"])) as package:
        packed = {name: package.read(name) for name in package.namelist()}
    assert {name: data for name, data in packed.items() if name != "manifest.json"} == {
        name: data for name, data in content.items() if name != "sdtm-package.zip"
    }
    assert [f["file"] for f in orjson.loads(packed["manifest.json"])["files"]] == [
        e["url"].rsplit("/", 1)[1] for e in manifest["output"] if e["type"] != "package"
    ]
    define = etree.fromstring(content["define.xml"])
    validator = define_schema()
    assert validator.validate(define), validator.error_log
    described = {
        g.get("Name"): [etree.QName(r).localname and r.get("ItemOID") for r in g.iterfind("odm:ItemRef", ODM)]
        for g in define.iterfind(".//odm:ItemGroupDef", ODM)
    }
    assert set(described) == names
    for name in names:
        assert described[name] == [c["itemOID"] for c in _json(content, name)["columns"]]
    [age] = define.xpath("//odm:ItemDef[@OID='IT.DM.AGE']", namespaces=ODM)
    assert age.find("def:Origin", ODM).get("Type") == "Derived"
    assert define.xpath("//odm:ItemRef[@ItemOID='IT.DM.AGE']/@MethodOID", namespaces=ODM) == ["MT.AGE"]


def test_dm_of_a_randomised_subject(study):
    """v2: ARMCD/ARM/ACTARMCD/ACTARM and RFSTDTC are the system's allocation (arm, date: the site's date), its
    number and stratum in SUPPDM; a subject without an allocation has ARMNRS instead."""
    server, subject, _, content = study
    allocation = subject["allocation"]
    label = {arm.id: arm.label for arm in server.runtime.study.arms}
    dm = {row["SUBJID"]: row for row in _records(_json(content, "DM"))}
    consent = RANDOMISED_SURGERY + timedelta(days=14)
    assert allocation["randomisation_date"] == on_day(22) and allocation["stratum"] == "S01-BC"
    assert dm[subject["id"]] == {
        "STUDYID": STUDY,
        "DOMAIN": "DM",
        "USUBJID": f"{STUDY}-{subject['id']}",
        "SUBJID": subject["id"],
        "RFSTDTC": on_day(22),
        "RFICDTC": on_day(14),
        "SITEID": "S01",
        "AGE": consent.year - 1970 - (consent.timetuple()[1:3] < (5, 1)),
        "AGEU": "YEARS",
        "SEX": "F",
        "ARMCD": allocation["arm"],
        "ARM": label[allocation["arm"]],
        "ACTARMCD": allocation["arm"],
        "ACTARM": label[allocation["arm"]],
        "ARMNRS": None,
    }
    for other, reason in ((subject["ineligible"], "SCREEN FAILURE"), (subject["waiting"], "NOT ASSIGNED")):
        row = dm[other["id"]]
        assert (row["ARMCD"], row["ARM"], row["ACTARMCD"], row["ACTARM"], row["RFSTDTC"], row["ARMNRS"]) == (
            None,
            None,
            None,
            None,
            None,
            reason,
        )
    supp = [row for row in _records(_json(content, "SUPPDM")) if row["USUBJID"].endswith(subject["id"])]
    assert {row["QNAM"]: (row["QVAL"], row["RDOMAIN"], row["IDVAR"]) for row in supp} == {
        "RANDNO": (allocation["randomisation_number"], "DM", None),
        "STRATUM": ("S01-BC", "DM", None),
    }
    assert not [row for row in _records(_json(content, "SUPPDM")) if row["USUBJID"].endswith(subject["waiting"]["id"])]


def test_ds_for_the_randomisation(study):
    _, subject, _, content = study
    ds = {row["DSDECOD"]: row for row in _records(_json(content, "DS")) if row["USUBJID"].endswith(subject["id"])}
    assert ds["RANDOMIZED"]["DSSTDTC"] == on_day(22) and ds["RANDOMIZED"]["DSSTDY"] == 1
    assert ds["RANDOMIZED"]["DSCAT"] == "PROTOCOL MILESTONE" and ds["RANDOMIZED"]["VISIT"]
    assert ds["INFORMED CONSENT OBTAINED"]["DSSTDTC"] == on_day(14) and ds["INFORMED CONSENT OBTAINED"]["DSSTDY"] == -8
    assert not [
        row
        for row in _records(_json(content, "DS"))
        if row["USUBJID"].endswith(subject["ineligible"]["id"]) and row["DSDECOD"] == "RANDOMIZED"
    ]


def test_lb_converted_unit_defaulted_uln_and_origin(study):
    server, subject, _, content = study
    lb = {
        row["LBTESTCD"]: row
        for row in _records(_json(content, "LB"))
        if row["USUBJID"].endswith(subject["id"]) and row["VISIT"] != "UNSCHEDULED"
    }
    bili = lb["BILI"]
    assert (bili["LBORRES"], bili["LBORRESU"], bili["LBSTRESC"], bili["LBSTRESN"], bili["LBSTRESU"]) == (
        "1.2",
        "mg/dL",
        "20.52",
        20.52,
        "umol/L",
    )
    assert bili["LBSTNRHI"] == 21.0 and bili["LBORNRHI"].startswith("1.22807017")  # 21 umol/L in mg/dL
    assert bili["LBDTC"] == on_day(21) and bili["LBDY"] == -1 and bili["VISIT"] and bili["LBSPEC"] == "SERUM"
    ast = lb["AST"]
    assert (ast["LBORRES"], ast["LBORNRHI"], ast["LBSTNRHI"]) == ("30", "40", 40.0)
    hgb = lb["HGB"]
    assert (hgb["LBORRES"], hgb["LBORRESU"], hgb["LBSTRESN"], hgb["LBSTRESU"]) == ("13.2", "g/dL", 132.0, "g/L")
    supp = [row for row in _records(_json(content, "SUPPLB")) if row["USUBJID"].endswith(subject["id"])]
    by_seq = {(row["IDVARVAL"], row["QNAM"]): row["QVAL"] for row in supp}
    assert by_seq[(str(ast["LBSEQ"]), "ULNSRC")] == "DEFAULT"
    assert by_seq[(str(bili["LBSEQ"]), "ULNSRC")] == "REPORT"
    reference = by_seq[(str(hgb["LBSEQ"]), "FHIRREF")]
    with server.client("investigator", "S01") as http:
        kind, resource_id, _, version = reference.split("/")
        observation = http.get(f"/fhir/{kind}/{resource_id}/_history/{version}").json()
    assert observation["valueQuantity"]["value"] == 13.2 and observation["code"]["coding"][0]["code"] == "718-7"
    [unscheduled] = [
        row
        for row in _records(_json(content, "LB"))
        if row["USUBJID"].endswith(subject["id"]) and row["VISIT"] == "UNSCHEDULED"
    ]
    assert (
        unscheduled["LBTESTCD"],
        unscheduled["LBORRES"],
        unscheduled["LBSTRESN"],
        unscheduled["VISITNUM"],
        unscheduled["LBDTC"],
        unscheduled["LBDY"],
    ) == ("HGB", "12.4", 124.0, None, on_day(-50), -72)
    vs = {row["VSTESTCD"]: row for row in _records(_json(content, "VS")) if row["USUBJID"].endswith(subject["id"])}
    assert (vs["WEIGHT"]["VSSTRESN"], vs["WEIGHT"]["VSSTRESU"], vs["HEIGHT"]["VSSTRESN"]) == (60.0, "kg", 165.0)
    ctc = lb["CTC"]
    assert ctc["LBSTRESN"] == 3.0 and ctc["LBMETHOD"] == "NEG_ENRICHMENT_TPCR"


def test_ie_for_an_ineligible_subject_and_sv(study):
    _, subject, _, content = study
    ineligible = subject["ineligible"]
    ie = [row for row in _records(_json(content, "IE")) if row["USUBJID"] == f"{STUDY}-{ineligible['id']}"]
    assert {row["IETESTCD"]: (row["IECAT"], row["IEORRES"], row["IESTRESC"]) for row in ie} == {
        "I05": ("INCLUSION", "N", "N"),
        "E03": ("EXCLUSION", "Y", "Y"),
    }  # ECOG 3: inclusion ECOG 0-1 fails, exclusion ECOG >= 2 applies
    [e03] = [row for row in ie if row["IETESTCD"] == "E03"]
    assert e03["IEDTC"] == subject["ineligible_r"] and e03["VISIT"] and e03["IETEST"] == "Latest ECOG >= 2"
    assert not [row for row in _records(_json(content, "IE")) if row["USUBJID"].endswith(subject["id"])]  # eligible
    sv = {row["VISIT"]: row for row in _records(_json(content, "SV")) if row["USUBJID"].endswith(subject["id"])}
    pod7 = next(visit.label for visit in server_visits() if visit.id == "POD7")
    assert sv[pod7]["SVSTDTC"] == on_day(7) and sv[pod7]["SVSTDY"] == 7 - 22


def test_ae_and_cm_from_the_log_entries_withdrawn_left_out(study):
    """Issue 15's log forms: one AE/CM record per entry (the withdrawn one is not there), coded through
    forms/sdtm.yaml, relatedness per drug in SUPPAE; identified (data manager), so the free text is there."""
    _, subject, _, content = study
    ae = [row for row in _records(_json(content, "AE")) if row["USUBJID"].endswith(subject["id"])]
    assert [(row["AESEQ"], row["AETERM"], row["AEDECOD"], row["AETOXGR"]) for row in ae] == [
        (1, "sore red palms", "Palmar-plantar erythrodysesthesia syndrome", "3"),
        (2, "Diarrhea", "Diarrhea", "2"),
    ]
    first, second = ae
    assert (first["AESEV"], first["AESER"], first["AEACN"], first["AEOUT"], first["AESHOSP"], first["AESDTH"]) == (
        "SEVERE",
        "Y",
        "DOSE REDUCED",
        "RECOVERED/RESOLVED",
        "Y",
        "N",
    )
    assert (first["AESTDTC"], first["AEENDTC"], first["AESTDY"], first["AEENDY"]) == (on_day(15), on_day(20), -7, -2)
    assert (second["AESER"], second["AESHOSP"], second["AEENDTC"], second["AEOUT"]) == (
        "N",
        None,
        None,
        "RECOVERING/RESOLVING",
    )
    supp = {
        (row["IDVARVAL"], row["QNAM"]): row["QVAL"]
        for row in _records(_json(content, "SUPPAE"))
        if row["USUBJID"].endswith(subject["id"])
    }
    assert (supp[("1", "AERELPD1")], supp[("1", "AERELSOR")], supp[("1", "AEIMMREL")]) == (
        "NOT RELATED",
        "RELATED",
        "N",
    )
    assert supp[("1", "FHIRREF")].startswith("AdverseEvent/")
    cm = [row for row in _records(_json(content, "CM")) if row["USUBJID"].endswith(subject["id"])]
    assert [
        (
            row["CMTRT"],
            row["CMCLAS"],
            row["CMCLASCD"],
            row["CMINDC"],
            row["CMENRTPT"],
            row["CMSTDTC"],
            row["CMENDTC"],
            row["CMSTDY"],
        )
        for row in cm
    ] == [
        ("Paracetamol 1 g", "NERVOUS SYSTEM", "N", "fever", "ONGOING", on_day(16), None, -6),
        ("Loperamide", "ALIMENTARY TRACT AND METABOLISM", "A", "diarrhoea", None, on_day(16), on_day(19), -6),
    ]
    assert not [row for row in _records(_json(content, "AE")) if row["USUBJID"].endswith(subject["ineligible"]["id"])]


def test_ex_from_the_exposure_log(study):
    """CRF-SPEC 7.1 in SDTM EX: one record per live entry (the withdrawn one is not there), the drug, route and
    frequency as CT terms, the dose numeric in mg, an infusion ending the day it
    starts, the modification's reason in EXADJ and the modification itself in SUPPEX, and the FHIR origin."""
    server, subject, _, content = study
    ex = [row for row in _records(_json(content, "EX")) if row["USUBJID"].endswith(subject["id"])]
    assert [
        (
            row["EXSEQ"],
            row["EXTRT"],
            row["EXDOSE"],
            row["EXDOSU"],
            row["EXDOSFRQ"],
            row["EXROUTE"],
            row["EXADJ"],
            row["EXSTDTC"],
            row["EXENDTC"],
            row["EXSTDY"],
            row["EXENDY"],
        )
        for row in ex
    ] == [
        (1, "PD-1 ANTIBODY", 200.0, "mg", "Q3W", "INTRAVENOUS", None, on_day(22), on_day(22), 1, 1),
        (2, "SORAFENIB", 400.0, "mg", "BID", "ORAL", "ADVERSE EVENT", on_day(20), on_day(22), -2, 1),
        (3, "PD-1 ANTIBODY", 200.0, "mg", None, "INTRAVENOUS", "OTHER", on_day(22), on_day(22), 1, 1),
    ]
    supp = {
        (row["IDVARVAL"], row["QNAM"]): (row["QVAL"], row["QLABEL"], row["IDVAR"])
        for row in _records(_json(content, "SUPPEX"))
        if row["USUBJID"].endswith(subject["id"])
    }
    assert [supp[(str(seq), "EXDOSMOD")][0] for seq in (1, 2, 3)] == [
        "DOSE NOT CHANGED",
        "DOSE REDUCED",
        "DRUG INTERRUPTED",
    ]
    assert supp[("1", "EXDOSMOD")][1:] == ("Dose Modification", "EXSEQ")
    kinds = [supp[(str(seq), "FHIRREF")][0].split("/")[0] for seq in (1, 2, 3)]
    assert kinds == ["MedicationAdministration", "MedicationStatement", "MedicationAdministration"]
    with server.client("investigator", "S01") as http:
        kind, resource_id, _, version = supp[("2", "FHIRREF")][0].split("/")
        statement = http.get(f"/fhir/{kind}/{resource_id}/_history/{version}").json()
    assert statement["effectivePeriod"] == {"start": on_day(20), "end": on_day(22)}
    columns = {column["name"]: column for column in _json(content, "EX")["columns"]}
    assert columns["EXDOSE"]["dataType"] == "double" and columns["EXTRT"]["label"] == "Name of Treatment"
    define = etree.fromstring(content["define.xml"])
    [group] = define.xpath("//odm:ItemGroupDef[@Name='EX']", namespaces=ODM)
    assert group.get(f"{{{ODM['def']}}}Structure") == "One record per constant dosing interval per subject"
    [dose] = define.xpath("//odm:ItemDef[@OID='IT.EX.EXDOSE']", namespaces=ODM)
    assert dose.get("DataType") == "float"
    assert not [row for row in _records(_json(content, "EX")) if row["USUBJID"].endswith(subject["ineligible"]["id"])]
