"""One form as CSV: a row per subject and visit, a column per item (canonical units, unit in the header),
columns in the form definition's order; unscheduled EHR results follow, a row per date with visit UNS.
A form with entries (a log form, a repeating form) has an `entry` column and a row per entry (a log entry's
visit is LOG; withdrawn entries, entered in error, are left out). A `codes` item is one cell, its codes sorted
and joined with ';'. Rows are built subject batch by subject batch and streamed."""

import csv
import hashlib
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from sqlalchemy import func, select
from sqlmodel import Session

from ecrf.auth.actor import Actor
from ecrf.crf.models import FormInstance
from ecrf.crf.schedule import UNSCHEDULED, day_zero
from ecrf.crf.values import form_values, unscheduled_values
from ecrf.export.deidentify import Deidentifier, parse_date, site_only
from ecrf.store.indexing import patient_of
from ecrf.store.models import ResourceHead, ResourceVersion, SearchToken
from ecrf.store.service import ClinicalStore
from study_model.definitions import FormDef, ItemDef, StudyDef

FIXED_COLUMNS = ("subject", "site", "visit", "visit_date", "study_day")
ENTRY_COLUMN = "entry"  # forms with entries: the entry's id ('' on a repeating form's visit row)
CODES_SEPARATOR = ";"
WITHDRAWN = "entered_in_error"
SUBJECT_BATCH = 200
CHUNK_BYTES = 64 * 1024


@dataclass
class Tally:
    """What the manifest states about a CSV: computed while it streams, the same way both times."""

    rows: int = 0
    subjects: int = 0
    digest: Any = field(default_factory=hashlib.sha256)
    patients: list[str] = field(default_factory=list)  # whose rows were written, in order (for the access log)

    @property
    def sha256(self) -> str:
        return self.digest.hexdigest()


@dataclass(frozen=True)
class Column:
    header: str
    item: ItemDef
    age: bool = False  # an identifier-bearing date (birth date) shown as an age at the visit


def columns(form: FormDef, deid: Deidentifier | None) -> list[Column]:
    result = []
    for item in form.items:
        if deid is not None and site_only(item):
            if item.identifier_bearing and item.type == "date":
                result.append(Column("age [a]", item, age=True))
            continue  # never leaves de-identified
        result.append(Column(f"{item.id} [{item.unit}]" if item.unit else item.id, item))
    return result


def fixed_columns(form: FormDef) -> tuple[str, ...]:
    return (*FIXED_COLUMNS, ENTRY_COLUMN) if form.has_entries else FIXED_COLUMNS


def data_version(session: Session) -> int:
    """The newest stored version: every clinical write makes one, so equal versions mean equal data."""
    return session.execute(select(func.max(ResourceVersion.pk))).scalar() or 0


def _subject_heads(session: Session, study: StudyDef, actor: Actor, after: str | None) -> list[ResourceHead]:
    query = (
        select(ResourceHead)
        .where(
            ResourceHead.resource_type == "ResearchSubject",
            ResourceHead.deleted == False,  # noqa: E712
            ResourceHead.resource_id.in_(
                select(SearchToken.resource_id).where(
                    SearchToken.resource_type == "ResearchSubject",
                    SearchToken.param == "study",
                    SearchToken.value == f"ResearchStudy/{study.id}",
                )
            ),
        )
        .order_by(ResourceHead.resource_id)
        .limit(SUBJECT_BATCH)
    )
    if actor.sites is not None:
        query = query.where(ResourceHead.site.in_(sorted(actor.sites)))
    if after is not None:
        query = query.where(ResourceHead.resource_id > after)
    return list(session.execute(query).scalars())


def rows(
    store: ClinicalStore, study: StudyDef, form: FormDef, deid: Deidentifier | None, tally: Tally
) -> Iterator[list[str]]:
    session = store.session
    cols = columns(form, deid)
    after = None
    while True:
        heads = _subject_heads(session, study, store.actor, after)
        if not heads:
            return
        after = heads[-1].resource_id
        for subject in store.current(heads):
            patient_id = patient_of(subject.content)
            if patient_id is None:
                continue
            emitted = False
            for row in _subject_rows(session, study, form, cols, deid, subject.resource_id, subject.site, patient_id):
                if not emitted:  # counted with its first row, so a chunk's patients are known when it is taken
                    emitted = True
                    tally.patients.append(patient_id)
                yield row
            tally.subjects += emitted
        session.expunge_all()


def _subject_rows(
    session: Session,
    study: StudyDef,
    form: FormDef,
    cols: list[Column],
    deid: Deidentifier | None,
    subject_id: str,
    site: str | None,
    patient_id: str,
) -> Iterator[list[str]]:
    zero = day_zero(session, study, patient_id)
    found = list(
        session.execute(
            select(FormInstance).where(FormInstance.patient_id == patient_id, FormInstance.form_id == form.id)
        ).scalars()
    )
    instances = {instance.visit_id: instance for instance in found if not instance.entry_id}
    entries = sorted(
        (i for i in found if i.entry_id and i.status != WITHDRAWN),
        key=lambda i: (i.visit_date, i.created_at, i.entry_id),
    )
    days = deid.shift_days(patient_id) if deid else None
    extra = [""] if form.has_entries else []
    for visit_id in form.visits:
        instance = instances.get(visit_id)
        values, _ = form_values(session, study, form, visit_id, patient_id, instance, zero)
        if not values and instance is None:
            continue
        when = (
            instance.visit_date
            if instance
            else min((d for d in (parse_date(entry.get("effective")) for entry in values.values()) if d), default=None)
        )
        yield _row(cols, values, deid, days, subject_id, site, patient_id, visit_id, when, zero, extra)
    for instance in entries:  # a row per entry, with its id
        values, _ = form_values(session, study, form, instance.visit_id, patient_id, instance, zero)
        yield _row(
            cols,
            values,
            deid,
            days,
            subject_id,
            site,
            patient_id,
            instance.visit_id,
            instance.visit_date,
            zero,
            [instance.entry_id],
        )
    for result in unscheduled_values(session, study, form, patient_id, zero):  # a row per date, visit UNS
        yield _row(
            cols,
            result["items"],
            deid,
            days,
            subject_id,
            site,
            patient_id,
            UNSCHEDULED,
            parse_date(result["date"]),
            zero,
            extra,
        )


def _row(
    cols: list[Column],
    values: dict[str, Any],
    deid: Deidentifier | None,
    days: int | None,
    subject_id: str,
    site: str | None,
    patient_id: str,
    visit_id: str,
    when: date | None,
    zero: date | None,
    extra: list[str],
) -> list[str]:
    row = [
        deid.pseudonym(patient_id) if deid else subject_id,
        site or "",
        visit_id,
        _date(when, days, deid),
        "" if when is None or zero is None else str((when - zero).days),
        *extra,
    ]
    for column in cols:
        row.append(_cell(column, values.get(column.item.id), when, days, deid))
    return row


def _date(value: date | None, days: int | None, deid: Deidentifier | None) -> str:
    if value is None:
        return ""
    return deid.shift(value.isoformat(), days) if deid else value.isoformat()


def _cell(
    column: Column, entry: dict[str, Any] | None, when: date | None, days: int | None, deid: Deidentifier | None
) -> str:
    if entry is None or entry.get("value") is None:
        return ""
    value = entry["value"]
    if column.age:
        born = parse_date(value)
        if born is None or when is None:
            return ""
        years, grouped = deid.age(born, when)
        return f">={years}" if grouped else str(years)
    if column.item.type == "date":
        return (deid.shift(str(value), days) or "") if deid else str(value)
    if "exact" in entry:
        return entry["exact"]
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):  # a `codes` item: its set of codes, one stable string
        return CODES_SEPARATOR.join(sorted(str(code) for code in value))
    return str(value)


def chunks(
    store: ClinicalStore, study: StudyDef, form: FormDef, deid: Deidentifier | None, tally: Tally
) -> Iterator[bytes]:
    """The CSV as byte chunks of about 64 KiB, hashed and counted into `tally` as they go."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow([*fixed_columns(form), *(column.header for column in columns(form, deid))])
    # The response's status leaves with its first chunk (the access-log hook holds it until then), so the first
    # chunk is sent early rather than once 64 KiB of rows are found (for a sparse form: after every subject is
    # read): a de-identified CSV starts with its header alone; an identified one with its first row, whose
    # access row is recorded first (a failure to record it is then still a 500, nothing identified sent).
    if deid is not None:
        yield _take(buffer, tally)
    first = deid is None
    for row in rows(store, study, form, deid, tally):
        writer.writerow(row)
        tally.rows += 1
        if first or buffer.tell() >= CHUNK_BYTES:
            first = False
            yield _take(buffer, tally)
    yield _take(buffer, tally)


def _take(buffer: io.StringIO, tally: Tally) -> bytes:
    data = buffer.getvalue().encode()
    buffer.seek(0)
    buffer.truncate()
    tally.digest.update(data)
    return data
