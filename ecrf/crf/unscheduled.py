"""The unscheduled pseudo-visit of a form (CRF-SPEC 2: a result outside every window is kept as an
unscheduled result of that form): read only, since EHR results belong to no form instance."""

from typing import Any

from ecrf.common.errors import EditCheckFailed, NotFound
from ecrf.crf.schedule import UNSCHEDULED, day_zero
from ecrf.crf.values import unscheduled_values
from ecrf.store.service import ClinicalStore
from ecrf.subjects.service import resolve
from study_model.definitions import StudyDef


def is_unscheduled(study: StudyDef, visit_id: str) -> bool:
    """A study that names a visit UNS keeps it: the pseudo-visit never hides a real one."""
    return visit_id == UNSCHEDULED and all(visit.id != UNSCHEDULED for visit in study.visits)


def read(store: ClinicalStore, study: StudyDef, subject_id: str, form_id: str) -> dict[str, Any]:
    subject = resolve(store, study, subject_id)
    try:
        form = study.form(form_id)
    except KeyError:
        raise NotFound(f"form {form_id} is not a form of study {study.id}") from None
    zero = day_zero(store.session, study, subject.patient_id)
    return {
        "subject_id": subject.id,
        "form_id": form.id,
        "visit_id": UNSCHEDULED,
        "status": "unscheduled",
        "day_zero": zero.isoformat() if zero else None,
        "results": unscheduled_values(store.session, study, form, subject.patient_id, zero),
    }


def refuse_entry(form_id: str) -> EditCheckFailed:
    message = (
        f"{UNSCHEDULED} holds the unscheduled EHR results of {form_id}, read only: "
        "enter data at a visit of the schedule"
    )
    return EditCheckFailed([{"item": "visit_id", "rule": "visit", "message": message}], message)
