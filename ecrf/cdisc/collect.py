"""What a CDISC export reads: the study's subjects (site-scoped), subject by subject, with each form's values
per visit as the eCRF shows them, and the item-level audit trail. Memory holds one subject."""
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from sqlalchemy import select
from sqlmodel import Session

from ecrf.audit.models import AuditEntry
from ecrf.crf.models import FormInstance
from ecrf.crf.schedule import day_zero
from ecrf.crf.schedule import UNSCHEDULED
from ecrf.crf.values import form_values, unscheduled_values
from ecrf.eligibility.models import EligibilityState
from ecrf.export.deidentify import parse_date
from ecrf.export.form_csv import _subject_heads
from ecrf.store.indexing import patient_of
from ecrf.store.service import ClinicalStore
from fhir_mappings.definitions import FormDef, StudyDef


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

    def value(self, item_id: str) -> dict[str, Any] | None:
        """The subject's value of an item at its first visit holding one (subject-level items)."""
        for record in self.forms:
            entry = record.values.get(item_id)
            if entry is not None and entry.get("value") is not None:
                return entry
        return None


def subjects(store: ClinicalStore, study: StudyDef, site: str | None = None) -> Iterator[SubjectRecord]:
    """Every study subject the store's actor may see (at `site` when given), in subject id order."""
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
            yield _subject(session, study, subject.resource_id, subject.site, patient_id)
        session.expunge_all()


def _subject(session: Session, study: StudyDef, subject_id: str, site: str | None, patient_id: str) -> SubjectRecord:
    zero = day_zero(session, study, patient_id)
    record = SubjectRecord(subject_id, patient_id, site, zero, eligibility=session.get(EligibilityState, subject_id))
    instances = {(i.form_id, i.visit_id): i for i in session.execute(
        select(FormInstance).where(FormInstance.patient_id == patient_id)).scalars()}
    for form in study.forms:
        for visit_id in form.visits:
            instance = instances.get((form.id, visit_id))
            values, _ = form_values(session, study, form, visit_id, patient_id, instance, zero)
            if not values and instance is None:
                continue
            when = instance.visit_date if instance else min(
                (d for d in (parse_date(e.get("effective")) for e in values.values()) if d), default=None)
            record.forms.append(FormRecord(form, visit_id, instance, values, when))
        for result in unscheduled_values(session, study, form, patient_id, zero):  # EHR results outside every window
            record.forms.append(FormRecord(form, UNSCHEDULED, None, result["items"], parse_date(result["date"])))
    return record


def audit_trail(session: Session, patient_id: str) -> list[AuditEntry]:
    """The subject's audit entries in chain order (item values, form status, signatures, queries)."""
    return list(session.execute(select(AuditEntry).where(AuditEntry.patient_id == patient_id)
                                .order_by(AuditEntry.seq)).scalars())
