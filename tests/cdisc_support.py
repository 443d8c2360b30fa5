"""Shared helpers of the CDISC export tests: kick off an ODM or SDTM export, wait, download; the schemas."""
import os
from pathlib import Path

from lxml import etree
import odmlib

from tests.test_export_protocol import ASYNC, wait_for_manifest

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "cdisc"
PACKAGED = Path(odmlib.__file__).parent / "schemas"
DATASET_JSON = Path(__file__).parent / "data" / "cdisc"  # copies of ../shared/cdisc/dataset-json (MIT, CDISC)


def odm_schema() -> etree.XMLSchema:
    """The ODM 1.3.2 XSD of ../shared/cdisc when it is there (CI has it), else the copy odmlib ships."""
    shared = SHARED / "odm-1.3.2" / "ODM1-3-2.xsd"
    if os.environ.get("CI") == "true":
        assert shared.is_file(), f"{shared} is missing"
    return etree.XMLSchema(etree.parse(str(shared if shared.is_file() else PACKAGED / "odm" / "1.3.2" / "ODM1-3-2.xsd")))


def define_schema() -> etree.XMLSchema:
    return etree.XMLSchema(etree.parse(str(PACKAGED / "define" / "2.1" / "define2-1-0.xsd")))


def cdisc_export(http, kind: str, **params) -> dict:
    response = http.get(f"/api/v1/exports/{kind}", params=params, headers=ASYNC)
    assert response.status_code == 202, response.text
    return wait_for_manifest(http, response.headers["Content-Location"])


def files(http, manifest: dict) -> dict[str, bytes]:
    out = {}
    for entry in manifest["output"]:
        response = http.get(entry["url"])
        assert response.status_code == 200, response.text
        out[entry["url"].rsplit("/", 1)[1]] = response.content
    return out
