"""Define-XML 2.1 describing exactly the SDTM datasets produced: an ItemGroupDef per dataset (with its files), an
ItemDef per variable with its length as written and its def:Origin (Collected from an eCRF item and FHIR element,
Derived by a MethodDef, Assigned), the MethodDefs of the derived values and the SEX codelist."""

from datetime import datetime
from pathlib import Path
from typing import Any

from lxml import etree

from ecrf.cdisc.mapping import Mapping
from ecrf.cdisc.sdtm import METHODS, Dataset
from study_model.definitions import StudyDef

ODM_NS = "http://www.cdisc.org/ns/odm/v1.3"
DEF_NS = "http://www.cdisc.org/ns/def/v2.1"
XLINK_NS = "http://www.w3.org/1999/xlink"
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
NSMAP = {None: ODM_NS, "def": DEF_NS, "xlink": XLINK_NS}
DATA_TYPES = {"string": "text", "integer": "integer", "double": "float", "date": "date"}


def _o(tag: str, **attributes: Any) -> etree._Element:
    return etree.Element(f"{{{ODM_NS}}}{tag}", {k: str(v) for k, v in attributes.items() if v is not None})


def _d(name: str) -> str:
    return f"{{{DEF_NS}}}{name}"


def _text(parent: etree._Element, tag: str, text: str) -> etree._Element:
    node = etree.SubElement(parent, f"{{{ODM_NS}}}{tag}")
    translated = etree.SubElement(node, f"{{{ODM_NS}}}TranslatedText", {XML_LANG: "en"})
    translated.text = text
    return node


def write(
    path: Path,
    study: StudyDef,
    mapping: Mapping,
    produced: list[tuple[Dataset, list[int]]],
    created: datetime,
    mdv: str,
    deidentified: bool,
) -> None:
    """`produced`: each dataset with the lengths its character columns have in the files."""
    root = _o(
        "ODM",
        FileType="Snapshot",
        FileOID=f"{study.id}.define",
        ODMVersion="1.3.2",
        CreationDateTime=created.strftime("%Y-%m-%dT%H:%M:%S"),
        Originator="ecrf",
        SourceSystem="ecrf",
        SourceSystemVersion="0.1.0",
    )
    root.attrib[_d("Context")] = "Submission"
    root = etree.Element(root.tag, root.attrib, nsmap=NSMAP)
    study_node = etree.SubElement(root, f"{{{ODM_NS}}}Study", OID=study.id)
    globals_ = etree.SubElement(study_node, f"{{{ODM_NS}}}GlobalVariables")
    for tag, text in (("StudyName", study.id), ("StudyDescription", study.title), ("ProtocolName", study.id)):
        etree.SubElement(globals_, f"{{{ODM_NS}}}{tag}").text = text
    version = etree.SubElement(
        study_node,
        f"{{{ODM_NS}}}MetaDataVersion",
        {
            "OID": mdv,
            "Name": f"{study.id} SDTM" + (" (de-identified)" if deidentified else ""),
            _d("DefineVersion"): "2.1.0",
        },
    )
    standards = etree.SubElement(version, _d("Standards"))
    etree.SubElement(
        standards,
        _d("Standard"),
        OID="STD.SDTMIG",
        Name="SDTMIG",
        Type="IG",
        Version=str(mapping.spec.get("sdtmig", "3.4")),
        Status="Final",
    )
    etree.SubElement(
        standards,
        _d("Standard"),
        OID="STD.CT",
        Name="CDISC/NCI",
        Type="CT",
        PublishingSet="SDTM",
        Version=str(mapping.spec.get("ct_version", "")),
        Status="Final",
    )
    items, methods = [], set()
    for dataset, lengths in produced:
        name = dataset.name.lower()
        group = etree.SubElement(
            version,
            f"{{{ODM_NS}}}ItemGroupDef",
            {
                "OID": f"IG.{dataset.name}",
                "Name": dataset.name,
                "Domain": dataset.name[4:] if dataset.name.startswith("SUPP") else dataset.name,
                "SASDatasetName": dataset.name,
                "Repeating": "No" if dataset.name == "DM" else "Yes",
                "IsReferenceData": "No",
                "Purpose": "Tabulation",
                _d("Structure"): dataset.structure,
                _d("StandardOID"): "STD.SDTMIG",
                _d("ArchiveLocationID"): f"LF.{dataset.name}",
            },
        )
        _text(group, "Description", dataset.label)
        for number, column in enumerate(dataset.columns, start=1):
            method = f"MT.{column.method}" if column.method else None
            attributes = {
                "ItemOID": f"IT.{dataset.name}.{column.name}",
                "OrderNumber": str(number),
                "Mandatory": "Yes" if column.name in dataset.keys else "No",
            }
            if column.name in dataset.keys:
                attributes["KeySequence"] = str(dataset.keys.index(column.name) + 1)
            if method:
                attributes["MethodOID"] = method
                methods.add(column.method)
            etree.SubElement(group, f"{{{ODM_NS}}}ItemRef", attributes)
            items.append((dataset, column, lengths[number - 1]))
        etree.SubElement(group, _d("Class"), Name=dataset.klass)
        leaf = etree.SubElement(group, _d("leaf"), {"ID": f"LF.{dataset.name}", f"{{{XLINK_NS}}}href": f"{name}.xpt"})
        etree.SubElement(leaf, _d("title")).text = f"{name}.xpt"
    for dataset, column, length in items:
        data_type = DATA_TYPES[column.data_type]
        attributes = {
            "OID": f"IT.{dataset.name}.{column.name}",
            "Name": column.name,
            "DataType": data_type,
            "SASFieldName": column.name,
        }
        if data_type in ("text", "integer", "float"):
            attributes["Length"] = str(length if data_type == "text" else 8)
        item = etree.SubElement(version, f"{{{ODM_NS}}}ItemDef", attributes)
        _text(item, "Description", column.label)
        if column.name == "SEX":
            etree.SubElement(item, f"{{{ODM_NS}}}CodeListRef", CodeListOID="CL.SEX")
        origin = etree.SubElement(
            item,
            _d("Origin"),
            Type=column.origin,
            **(
                {"Source": "Investigator"}
                if column.origin == "Collected"
                else {"Source": "Sponsor"}
                if column.origin == "Assigned"
                else {}
            ),
        )
        if column.origin == "Collected":
            _text(
                origin,
                "Description",
                f"eCRF item {column.source}"
                if column.source
                else "eCRF item or FHIR resource (see SUPP-- QNAM FHIRREF)",
            )
    codelist = etree.SubElement(version, f"{{{ODM_NS}}}CodeList", OID="CL.SEX", Name="Sex", DataType="text")
    for code, decode in (("F", "Female"), ("M", "Male")):
        term = etree.SubElement(codelist, f"{{{ODM_NS}}}CodeListItem", CodedValue=code)
        _text(term, "Decode", decode)
    for key in sorted(methods):
        method = etree.SubElement(version, f"{{{ODM_NS}}}MethodDef", OID=f"MT.{key}", Name=key, Type="Computation")
        _text(method, "Description", METHODS[key])
    etree.ElementTree(root).write(str(path), xml_declaration=True, encoding="UTF-8", pretty_print=True)
