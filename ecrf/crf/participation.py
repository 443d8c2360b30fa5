"""Subject status from the data (CRF-SPEC 7.5): the live entry of the form that `ends_participation`
(end_of_study) sets ResearchSubject.status and period.end, and Patient.deceasedDateTime from the death
date, as derived state in the transaction of every write that touches the patient, whichever door wrote.

Withdrawing the entry (entered in error) undoes it: on-study again once randomised, else the status
eligibility gives. Randomised is read from the ResearchSubject itself (its `assignedArm`, which the
allocation writes and randomisation's write guard keeps), never from randomisation's table: randomisation
saves its form through crf, so crf reads nothing of it. A deceasedDateTime the EHR sent that differs from the form's death date is left as
sent (a conflict the endpoints report), never overwritten.
"""

from collections.abc import Callable
from typing import Any

import orjson
from sqlmodel import select

from ecrf.crf.models import WITHDRAWN, FormInstance
from ecrf.crf.values import form_values
from ecrf.eligibility.models import EligibilityState
from ecrf.eligibility.service import SUBJECT_STATUS
from ecrf.store.models import ResourceHead, ResourceVersion
from ecrf.store.service import ClinicalStore, WriteContext
from study_model.definitions import FormDef, StudyDef

ENDED = ("off-study", "withdrawn", "ineligible")


def participation_hook(study: StudyDef) -> Callable[[ClinicalStore, set[str]], None] | None:
    forms = [form for form in study.forms if form.ends_participation is not None]
    if not forms:
        return None

    def follow(store: ClinicalStore, patient_ids: set[str]) -> None:
        for form in forms:
            _follow(store, study, form, patient_ids)

    return follow


def _follow(store: ClinicalStore, study: StudyDef, form: FormDef, patient_ids: set[str]) -> None:
    if not patient_ids:
        return
    instances = store.session.exec(
        select(FormInstance).where(
            FormInstance.form_id == form.id,
            FormInstance.entry_id != "",
            FormInstance.patient_id.in_(sorted(patient_ids)),
        )
    ).all()
    by_subject: dict[str, list[FormInstance]] = {}
    for instance in instances:
        by_subject.setdefault(instance.subject_id, []).append(instance)
    for subject_id, entries in sorted(by_subject.items()):
        live = [e for e in entries if e.status != WITHDRAWN]
        _apply(store, study, form, subject_id, live[0] if live else None)


def _content(store: ClinicalStore, resource_type: str, resource_id: str) -> dict[str, Any] | None:
    head = store.session.get(ResourceHead, (resource_type, resource_id))
    if head is None or head.deleted:
        return None
    return orjson.loads(store.session.get(ResourceVersion, head.version_pk).content)


def _day(entry: dict[str, Any] | None) -> str | None:
    value = (entry or {}).get("value")
    return str(value)[:10] if value is not None else None


def _apply(store: ClinicalStore, study: StudyDef, form: FormDef, subject_id: str, live: FormInstance | None) -> None:
    ends = form.ends_participation
    subject = _content(store, "ResearchSubject", subject_id)
    if subject is None:
        return
    randomised = bool(subject.get("assignedArm"))  # randomisation's guard keeps the allocated arm there
    wanted = dict(subject)
    death = None
    if live is not None:
        items, _ = form_values(store.session, study, form, live.visit_id, live.patient_id, live, None)
        reason = (items.get(ends.status_item) or {}).get("value")
        status = "off-study"
        if not randomised and reason in ends.screen_failure_values:
            eligibility = store.session.get(EligibilityState, subject_id)
            status = "ineligible" if eligibility is not None and eligibility.status == "ineligible" else "withdrawn"
        wanted["status"] = status
        end = _day(items.get(ends.end_date_item))
        period = {k: v for k, v in (subject.get("period") or {}).items() if k != "end"}
        if end:
            period["end"] = end
        wanted["period"] = period
        death = _day(items.get(ends.death_date_item)) if ends.death_date_item else None
    elif subject.get("status") in ENDED and (subject.get("period") or {}).get("end"):
        eligibility = store.session.get(EligibilityState, subject_id)
        wanted["status"] = (
            "on-study"
            if randomised
            else SUBJECT_STATUS.get(eligibility.status if eligibility is not None else "", "candidate")
        )
        wanted["period"] = {k: v for k, v in subject["period"].items() if k != "end"}
    if not wanted.get("period"):
        wanted.pop("period", None)
    if wanted != subject:
        store.update(
            "ResearchSubject",
            subject_id,
            wanted,
            WriteContext(source="system", reason=f"{form.id}: status {wanted.get('status')}"),
        )
    if death and live is not None:
        _record_death(store, live.patient_id, death, form)


def _record_death(store: ClinicalStore, patient_id: str, death: str, form: FormDef) -> None:
    patient = _content(store, "Patient", patient_id)
    if patient is None or patient.get("deceasedDateTime") is not None:
        return  # the same date, or the EHR's other one (a conflict for the endpoints): never overwritten
    updated = {k: v for k, v in patient.items() if k != "deceasedBoolean"}  # deceased[x]: the date replaces a boolean
    updated["deceasedDateTime"] = death
    store.update("Patient", patient_id, updated, WriteContext(source="system", reason=f"{form.id}: death date"))
