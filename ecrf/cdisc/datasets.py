"""Writes SDTM datasets as Dataset-JSON 1.1 (JSON and NDJSON) and SAS XPT v5. Rows go to an NDJSON spool as they
are made (memory: one subject), so the JSON and XPT files are written afterwards by streaming the spool."""

from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from ecrf.cdisc import xpt
from ecrf.cdisc.sdtm import Dataset

VERSION = "1.1.0"
FORMATS = ("json", "ndjson", "xpt")
XPT_MAX_CHARS = 200


class Spool:
    def __init__(self, directory: Path, dataset: Dataset):
        self.dataset = dataset
        self.path = directory / f".{dataset.name.lower()}.spool"
        self.handle = self.path.open("wb")
        self.count = 0
        self.lengths = [1] * len(dataset.columns)

    def add(self, rows: Iterable[list[Any]]) -> None:
        for row in rows:
            for index, (column, value) in enumerate(zip(self.dataset.columns, row)):
                if not column.numeric and value is not None:
                    self.lengths[index] = max(self.lengths[index], len(str(value).encode()))
            self.handle.write(orjson.dumps(row) + b"\n")
            self.count += 1

    def rows(self) -> Iterable[list[Any]]:
        with self.path.open("rb") as lines:
            for line in lines:
                yield orjson.loads(line)


def oid(dataset: Dataset, column: str | None = None) -> str:
    return f"IG.{dataset.name}" if column is None else f"IT.{dataset.name}.{column}"


def header(dataset: Dataset, spool: Spool, study_id: str, created: datetime, mdv: str) -> dict[str, Any]:
    columns = []
    for index, column in enumerate(dataset.columns):
        entry: dict[str, Any] = {
            "itemOID": oid(dataset, column.name),
            "name": column.name,
            "label": column.label,
            "dataType": column.data_type,
        }
        if not column.numeric:
            entry["length"] = spool.lengths[index]
        if column.name in dataset.keys:
            entry["keySequence"] = dataset.keys.index(column.name) + 1
        columns.append(entry)
    return {
        "datasetJSONCreationDateTime": created.strftime("%Y-%m-%dT%H:%M:%S"),
        "datasetJSONVersion": VERSION,
        "fileOID": f"{study_id}/{dataset.name}",
        "originator": "ecrf",
        "sourceSystem": {"name": "ecrf", "version": "0.1.0"},
        "studyOID": study_id,
        "metaDataVersionOID": mdv,
        "metaDataRef": "define.xml",
        "itemGroupOID": oid(dataset),
        "records": spool.count,
        "name": dataset.name,
        "label": dataset.label,
        "columns": columns,
    }


def finish(directory: Path, spool: Spool, study_id: str, created: datetime, mdv: str) -> list[dict[str, Any]]:
    """The dataset's three files; returns their manifest entries (type, format, file, count)."""
    spool.handle.close()
    dataset, name = spool.dataset, spool.dataset.name.lower()
    head = header(dataset, spool, study_id, created, mdv)
    with (directory / f"{name}.json").open("wb") as out:
        out.write(orjson.dumps(head)[:-1] + b',"rows":[')
        for number, row in enumerate(spool.rows()):
            out.write((b"," if number else b"") + orjson.dumps(row))
        out.write(b"]}")
    with (directory / f"{name}.ndjson").open("wb") as out:
        out.write(orjson.dumps(head) + b"\n")
        for row in spool.rows():
            out.write(orjson.dumps(row) + b"\n")
    variables = [
        xpt.Variable(c.name, c.label, c.numeric, 8 if c.numeric else min(spool.lengths[i], XPT_MAX_CHARS))
        for i, c in enumerate(dataset.columns)
    ]
    with (directory / f"{name}.xpt").open("wb") as out:
        xpt.write(out, dataset.name, dataset.label, variables, spool.rows(), created)
    spool.path.unlink()
    return [{"type": dataset.name, "format": fmt, "file": f"{name}.{fmt}", "count": spool.count} for fmt in FORMATS]
