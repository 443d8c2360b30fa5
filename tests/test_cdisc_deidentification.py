"""What a sponsor receives as CDISC is de-identified (issue 19): no MRN, birth date, real date, subject or resource
id, user name, reason, query text or signature meaning in the ODM archive, the SDTM datasets (JSON, NDJSON, XPT)
or the define.xml; a sponsor asking for identified CDISC data gets 403."""

import re
from datetime import UTC, date, datetime

import orjson
import pytest

from tests.cdisc_support import (
    RANDOMISED,
    adverse_event,
    cdisc_export,
    exposure,
    files,
    log_entry,
    medication,
    on_day,
    randomised_subject,
)
from tests.conftest import running_server
from tests.crf_support import path, save
from tests.test_export_protocol import ASYNC, export_settings
from testkit.databases import fresh_database

MRN = "MRN-QX-558812"
BORN = "1931-02-17"
REASON = "Quackenbush said the tube was mislabelled"
QUERY = "Zebediah's ANC looks odd"
MEANING = "Signed by Dr Philomena Cartwright"
# issue 15: the log forms' free text (type text) is kept at the site
VERBATIM = "Ms Ottoline Vandersteen's palms blistered after the Fairhaven clinic visit"
MEDICATION = "Grandma Hortensia's herbal tincture"
INDICATION = "insomnia since the Brimblecombe Street flat fire"
RANDOMISED_MRN = "MRN-QX-771203"


@pytest.fixture(scope="module")
def study(database_url, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("cdisc-deid")
    with fresh_database(database_url, tmp_path) as url:
        with running_server(export_settings(url, tmp_path)) as server:
            with server.client("investigator", "S01", sub="philomena.cartwright") as http:
                # both subjects on one timeline (its dates span 25 days, every shift is at least 60): no
                # subject's shifted date can be another's real one
                response = http.post("/api/v1/subjects", json={"site": "S01", "mrn": MRN, "consent_date": on_day(14)})
                assert response.status_code == 201, response.text
                subject = response.json()
                for form in ("surgery", "labs", "ctc"):
                    _, visit_date, items = RANDOMISED[form]
                    assert save(http, subject["id"], form, items, visit_date=visit_date).status_code == 201
                demographics = {**RANDOMISED["demographics"][2], "birth_date": BORN}
                assert (
                    save(
                        http, subject["id"], "demographics", demographics, visit_date=RANDOMISED["demographics"][1]
                    ).status_code
                    == 201
                )
                labs = {**RANDOMISED["labs"][2], "platelets": 191}
                assert (
                    save(http, subject["id"], "labs", labs, reason=REASON, visit_date=RANDOMISED["labs"][1]).status_code
                    == 200
                )
                randomised, allocation = randomised_subject(http, mrn=RANDOMISED_MRN)  # v2: by the system
                log_entry(http, randomised["id"], "adverse_event", adverse_event(VERBATIM, ctcae_term="other"))
                log_entry(http, randomised["id"], "conmed", medication(MEDICATION, INDICATION))
                log_entry(http, randomised["id"], "exposure", exposure())  # an infusion on the randomisation day
                sorafenib = exposure(drug="sorafenib", route="oral", frequency="bid", dose=400)
                log_entry(
                    http, randomised["id"], "exposure", {**sorafenib, "start_date": on_day(20), "end_date": on_day(21)}
                )
            with server.client("monitor", "S01", sub="monty.monitor") as http:
                assert http.post(path(subject["id"], "labs", "SCR") + "/verify").status_code == 200
                assert (
                    http.post(
                        f"/api/v1/subjects/{subject['id']}/queries",
                        json={"form_id": "labs", "visit_id": "SCR", "item_id": "anc", "text": QUERY},
                    ).status_code
                    == 201
                )
            with server.client("investigator", "S01", sub="philomena.cartwright") as http:
                assert (
                    http.post(path(subject["id"], "labs", "SCR") + "/sign", json={"meaning": MEANING}).status_code
                    == 200
                )
                resources = [
                    entry["resource"].split("/")[1]
                    for entry in http.get(path(subject["id"], "labs", "SCR")).json()["items"].values()
                ]
            yield server, subject, resources, (randomised, allocation)


def test_no_identifier_reaches_a_sponsor_in_any_cdisc_file(study):
    server, subject, resources, (randomised, allocation) = study
    started = datetime.now(UTC)
    with server.client("sponsor") as http:
        content = files(http, cdisc_export(http, "odm"))
        content.update(files(http, cdisc_export(http, "odm", mode="snapshot")))
        content.update(files(http, cdisc_export(http, "sdtm")))
    assert {"odm-archive.xml", "odm-snapshot.xml", "define.xml", "dm.json", "dm.ndjson", "dm.xpt", "lb.xpt"} <= set(
        content
    )
    assert all(" " not in name for name in content)
    everything = b"\n".join(content.values()).decode("latin-1")
    # the files' own creation time and the metadata's effective date (the export's moment, in UTC) are no subject's
    # date; between 16:00 and 24:00 UTC their date is the day before the site's date and so one of the planted
    # timeline dates: taken out, once checked to be the export's
    created = r'(CreationDateTime="|"datasetJSONCreationDateTime":"|EffectiveDate=")([0-9T:.Z-]+)'
    stamps = [stamp for _, stamp in re.findall(created, everything)]
    assert stamps and all(stamp[:10] in (started.date().isoformat(), date.today().isoformat()) for stamp in stamps)
    everything = re.sub(created, r"\1<created>", everything)
    everything = re.sub(r'(FileOID="[^"]*\.odm\.)\d{8}T\d{6}', r"\1<created>", everything)
    assert "HGB" in everything and "IT.labs.platelets" in everything  # the data are there ...
    assert {"ae.json", "ae.xpt", "cm.ndjson", "suppdm.json", "ex.json", "ex.xpt", "suppex.ndjson"} <= set(content)
    assert "RANDOMIZED" in everything and "NERVOUS SYSTEM" in everything and "STRATUM" in everything
    assert "SORAFENIB" in everything and "INTRAVENOUS" in everything
    planted = [
        MRN,
        BORN,
        REASON,
        QUERY,
        MEANING,
        "Quackenbush",
        "Zebediah",
        "Cartwright",
        "philomena",
        "monty",
        subject["id"],
        subject["patient_id"],
        *resources,
        VERBATIM,
        MEDICATION,
        INDICATION,
        "Ottoline",
        "Vandersteen",
        "Fairhaven",
        "Hortensia",
        "tincture",
        "Brimblecombe",
        RANDOMISED_MRN,
        randomised["id"],
        randomised["patient_id"],
        allocation["randomisation_number"],
        *(on_day(offset) for offset in (-3, 0, 7, 14, 15, 16, 20, 21)),
    ]
    leaked = [value for value in planted if value in everything]
    assert leaked == []  # ... and nothing identifying
    # the randomisation date is today's, which the files' creation stamps hold: it is shifted in every record
    dm = orjson.loads(content["dm.json"])
    starts = [row[[c["name"] for c in dm["columns"]].index("RFSTDTC")] for row in dm["rows"]]
    assert [start for start in starts if start] and on_day(22) not in starts
    ex = orjson.loads(content["ex.json"])
    names = [c["name"] for c in ex["columns"]]
    shifted = sorted((row[names.index("EXSTDTC")], row[names.index("EXENDTC")]) for row in ex["rows"])
    assert len(shifted) == 2 and all(start and end for start, end in shifted)  # there, and shifted (planted above)
    assert sorted((row[names.index("EXSTDY")], row[names.index("EXENDY")]) for row in ex["rows"]) == [(-2, -1), (1, 1)]
    for name in ("ds.ndjson", "ae.ndjson", "cm.ndjson", "sv.ndjson", "ex.ndjson"):
        assert on_day(22) not in b"\n".join(content[name].splitlines()[1:]).decode(), name  # the rows


def test_a_sponsor_cannot_ask_for_identified_cdisc(study):
    server, _, _, _ = study
    with server.client("sponsor") as http:
        for kind in ("odm", "sdtm"):
            assert http.get(f"/api/v1/exports/{kind}", params={"deidentify": "false"}, headers=ASYNC).status_code == 403
    with server.client("investigator", "S01") as http:
        assert http.get("/api/v1/exports/odm", params={"site": "S01"}, headers=ASYNC).status_code == 403
