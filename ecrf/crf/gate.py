"""The randomisation gate: a form that assigns the arm is saved only for an eligible subject."""

from ecrf.common.errors import Blocked
from ecrf.responses import dumps
from ecrf.services import Services
from ecrf.store.service import ClinicalStore
from ecrf.subjects.service import Subject
from study_model.definitions import FormDef


def assigns_arm(form: FormDef) -> bool:
    return any(item.fhir.kind == "research_subject" and item.fhir.path == "assignedArm" for item in form.items)


def eligibility_gate(runtime: Services, store: ClinicalStore, subject: Subject) -> str:
    """Eligibility before a randomisation is saved (the form's or the allocation's), as JSON: the basis kept
    with the form.

    `runtime.eligibility(store, patient_id)` gives {"overall": "eligible"|"ineligible"|"incomplete",
    "criteria": [{"id", "kind", "outcome", "reason"}, ...]}; anything but eligible refuses the save (409,
    listing the blocking criteria), and the unit of work rolls back what was written.
    """
    result = runtime.eligibility(store, subject.patient_id)
    if result.get("overall") != "eligible":
        blocking = [
            {"item": c["id"], "rule": c.get("outcome", "unknown"), "message": c.get("reason") or c["id"]}
            for c in result.get("criteria", [])
            if (c.get("kind") == "inclusion" and c.get("outcome") != "met")
            or (c.get("kind") == "exclusion" and c.get("outcome") != "not_met")
        ]
        raise Blocked(f"randomisation needs eligibility 'eligible', the subject is {result.get('overall')}", blocking)
    return dumps(result).decode()  # the one JSON encoder: a Decimal stays an exact number, not a string
