"""What a CDISC export reads: the study's subjects (site-scoped), subject by subject, with each form's values
per visit as the eCRF shows them, and the item-level audit trail. Memory holds one subject."""

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from sqlalchemy import select
from sqlmodel import Session

from ecrf.audit.models import AuditEntry
from ecrf.crf.locate import derived_id
from ecrf.crf.models import WITHDRAWN, FormInstance
from ecrf.crf.schedule import EVERY_VISIT, UNSCHEDULED, day_zero, place
from ecrf.crf.values import SUBJECT_LEVEL_KINDS, ShownFact, _facts, _pick, fact_date, form_values, owned_resources
from ecrf.eligibility.models import EligibilityState
from ecrf.export.deidentify import parse_date
from ecrf.export.form_csv import _subject_heads
from ecrf.randomisation.models import RandomisationAllocation
from ecrf.store.indexing import patient_of
from ecrf.store.service import ClinicalStore
from study_model.definitions import FormDef, StudyDef


@dataclass
class FormRecord:
    form: FormDef
    visit_id: str
    instance: FormInstance | None
    values: dict[str, dict[str, Any]]
    visit_date: date | None


@dataclass
class SubjectRecord:
    subject_id: str
    patient_id: str
    site: str | None
    zero: date | None
    forms: list[FormRecord] = field(default_factory=list)
    eligibility: EligibilityState | None = None
    allocation: dict[str, Any] | None = None  # the system's allocation (randomisation_allocation), if any
    entries: list[FormRecord] = field(default_factory=list)  # entries of log/repeating forms, withdrawn left out
    # resource id (of a resource an entry wrote or landed from, or FormInstance id) -> (visit key, entry id), for
    # every entry, withdrawn ones included: where the audit trail's entries go in the ODM archive
    entry_keys: dict[str, tuple[str, str]] = field(default_factory=dict)

    def value(self, item_id: str) -> dict[str, Any] | None:
        """The subject's value of an item at its first visit holding one (subject-level items)."""
        for record in self.forms:
            entry = record.values.get(item_id)
            if entry is not None and entry.get("value") is not None:
                return entry
        return None


def subjects(
    store: ClinicalStore, study: StudyDef, site: str | None = None, *, values: bool = True
) -> Iterator[SubjectRecord]:
    """Every study subject the store's actor may see (at `site` when given), in subject id order; with their
    forms' values unless `values` is False (the ODM archive reads the audit trail instead)."""
    session = store.session
    after = None
    while True:
        heads = _subject_heads(session, study, store.actor, after)
        if not heads:
            return
        after = heads[-1].resource_id
        for subject in store.current(heads):
            patient_id = patient_of(subject.content)
            if patient_id is None or (site is not None and subject.site != site):
                continue
            if values:
                yield _subject(session, study, subject.resource_id, subject.site, patient_id)
            else:
                yield SubjectRecord(
                    subject.resource_id,
                    patient_id,
                    subject.site,
                    None,
                    entry_keys=entry_keys(session, study, patient_id),
                )
        session.expunge_all()


def _subject(session: Session, study: StudyDef, subject_id: str, site: str | None, patient_id: str) -> SubjectRecord:
    zero = day_zero(session, study, patient_id)
    record = SubjectRecord(
        subject_id,
        patient_id,
        site,
        zero,
        eligibility=session.get(EligibilityState, subject_id),
        allocation=allocation_of(session, study, subject_id),
    )
    every = list(
        session.execute(
            select(FormInstance)
            .where(FormInstance.patient_id == patient_id)
            .order_by(FormInstance.created_at, FormInstance.id)
        ).scalars()
    )
    instances = {(i.form_id, i.visit_id): i for i in every if not i.entry_id}  # the visits' own forms
    entries = [i for i in every if i.entry_id]
    for form in study.forms:
        mine = {visit_id: instance for (form_id, visit_id), instance in instances.items() if form_id == form.id}
        theirs = [instance for instance in entries if instance.form_id == form.id]
        placed = _placed_once(session, study, form, patient_id, mine, zero, theirs)
        for instance in theirs:  # an entry shows only what it holds; a withdrawn one holds nothing any more
            if instance.status != WITHDRAWN:
                values, _ = form_values(session, study, form, instance.visit_id, patient_id, instance, zero)
                record.entries.append(FormRecord(form, instance.visit_id, instance, values, instance.visit_date))
        for visit_id in form.visits:
            instance = mine.get(visit_id)
            here, everywhere = placed.get(visit_id, {}), placed.get(EVERY_VISIT, {})
            values, _ = _pick(
                form,
                {
                    item_id: here.get(item_id, []) + everywhere.get(item_id, [])
                    for item_id in here.keys() | everywhere.keys()
                },
            )
            if not values and instance is None:
                continue
            when = (
                instance.visit_date
                if instance
                else min((d for d in (parse_date(e.get("effective")) for e in values.values()) if d), default=None)
            )
            record.forms.append(FormRecord(form, visit_id, instance, values, when))
        unscheduled: dict[date | None, dict[str, list[ShownFact]]] = {}
        for item_id, shown in placed.get(None, {}).items():
            for one in shown:
                unscheduled.setdefault(fact_date(one.fact), {}).setdefault(item_id, []).append(one)
        for day in sorted(unscheduled, key=lambda d: (d is None, d or date.min)):  # EHR results outside every window
            values, _ = _pick(form, unscheduled[day])
            record.forms.append(FormRecord(form, UNSCHEDULED, None, values, day))
    return record


RESOURCE_KINDS = frozenset({"observation", "procedure", "condition", "resource"})  # items that own a resource


def entry_keys(session: Session, study: StudyDef, patient_id: str) -> dict[str, tuple[str, str]]:
    """Resource id -> (visit key, entry id) of every entry of the patient's subject: the resources each entry
    holds, the ids an eCRF entry's slots are written under (so a withdrawn entry's deleted resources still
    map), and the entry's own FormInstance id (its status changes)."""
    keys: dict[str, tuple[str, str]] = {}
    for instance in session.execute(
        select(FormInstance).where(FormInstance.patient_id == patient_id, FormInstance.entry_id != "")
    ).scalars():
        key = (instance.visit_id, instance.entry_id)
        keys[instance.id] = key
        forms = {form.id: form for form in study.forms}
        if instance.form_id in forms:
            for item in forms[instance.form_id].items:
                if item.fhir.kind in RESOURCE_KINDS:
                    keys[
                        derived_id(
                            instance.subject_id,
                            instance.form_id,
                            instance.visit_id,
                            "entry",
                            instance.entry_id,
                            item.id,
                        )
                    ] = key
        for reference in owned_resources(instance).values():
            keys[reference.split("/", 1)[1]] = key
    return keys


def allocation_of(session: Session, study: StudyDef, subject_id: str) -> dict[str, Any] | None:
    """The subject's allocation by the system (issue 14): arm, number, stratum, date; None if it has none."""
    row = (
        session.execute(
            select(RandomisationAllocation).where(
                RandomisationAllocation.study_id == study.id, RandomisationAllocation.subject_id == subject_id
            )
        )
        .scalars()
        .first()
    )
    if row is None:
        return None
    return {
        "method": "system",
        "arm": row.arm,
        "randomisation_number": row.number,
        "stratum": row.stratum,
        "randomisation_date": row.randomisation_date,
    }


def _placed_once(
    session: Session,
    study: StudyDef,
    form: FormDef,
    patient_id: str,
    instances: dict[str, FormInstance],
    zero: date | None,
    entries: list[FormInstance] = (),
) -> dict[str | None, dict[str, list[ShownFact]]]:
    """Where each of the form's facts shows (visit, EVERY_VISIT or None: unscheduled), read once for all visits:
    the placement of ecrf.crf.values (an instance's own facts at its visit, subject-level facts at every visit,
    EHR facts by their date), which reads the facts again per visit."""
    owner = {
        reference: visit_id
        for visit_id, instance in instances.items()
        for reference in owned_resources(instance).values()
    }
    entries_own = {reference for instance in entries for reference in owned_resources(instance).values()}
    items = {item.id: item for item in form.items}
    placed: dict[str | None, dict[str, list[ShownFact]]] = {}
    for shown in _facts(session, patient_id, form.id):
        fact = shown.fact
        item = items.get(fact.item_id)
        if item is None or f"{fact.resource_type}/{fact.resource_id}" in entries_own:  # an entry's: its own
            continue
        visit_id = owner.get(f"{fact.resource_type}/{fact.resource_id}")
        if visit_id is not None:
            shown, where = ShownFact(fact, "form", shown.author, own=True), visit_id
        elif item.fhir.kind in SUBJECT_LEVEL_KINDS:
            where = EVERY_VISIT
        else:
            where = place(study, form, zero, fact_date(fact))
        placed.setdefault(where, {}).setdefault(item.id, []).append(shown)
    return placed


def audit_trail(session: Session, patient_id: str) -> list[AuditEntry]:
    """The subject's audit entries in chain order (item values, form status, signatures, queries)."""
    return list(
        session.execute(
            select(AuditEntry).where(AuditEntry.patient_id == patient_id).order_by(AuditEntry.seq)
        ).scalars()
    )
