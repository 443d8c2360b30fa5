"""Subjects: a ResearchSubject of the study and its Patient, both kept in the clinical store.

A subject enrolled here has one id in both doors (ResearchSubject id == Patient id); one pushed by an
EHR through /fhir keeps its own Patient id and is resolved through ResearchSubject.individual.
"""

from dataclasses import dataclass
from datetime import date
from typing import Any

import orjson
from sqlalchemy import func
from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from ecrf.auth.policy import can
from ecrf.common.clock import latest_allowed_date
from ecrf.common.errors import Conflict, EditCheckFailed, Forbidden, Gone, NotFound
from ecrf.store.indexing import patient_of
from ecrf.store.models import ResourceHead, ResourceVersion, SearchToken
from ecrf.store.service import ClinicalStore, Stored, WriteContext, new_id
from study_model.definitions import StudyDef


@dataclass(frozen=True)
class Subject:
    research_subject: Stored
    patient_id: str

    @property
    def id(self) -> str:
        return self.research_subject.resource_id

    @property
    def site(self) -> str | None:
        return self.research_subject.site


def study_reference(study: StudyDef) -> str:
    return f"ResearchStudy/{study.id}"


def resolve(store: ClinicalStore, study: StudyDef, subject_id: str) -> Subject:
    """The subject, or 404 when unknown, of another study, or at a site the caller may not see."""
    try:
        stored = store.read("ResearchSubject", subject_id)
    except Gone as error:
        raise NotFound(f"subject {subject_id} is not known") from error
    except NotFound as error:
        raise NotFound(f"subject {subject_id} is not known") from error
    patient_id = patient_of(stored.content)
    if (stored.content.get("study") or {}).get("reference") != study_reference(study) or patient_id is None:
        raise NotFound(f"subject {subject_id} is not known")
    return Subject(stored, patient_id)


def _patients_with_mrn(store: ClinicalStore, system: str, mrn: str) -> list[str]:
    return list(
        store.session.exec(
            select(SearchToken.resource_id).where(
                SearchToken.resource_type == "Patient",
                SearchToken.param == "identifier",
                SearchToken.system == system,
                SearchToken.code == mrn,
            )
        ).all()
    )


def _subjects_of_patient(store: ClinicalStore, study: StudyDef, patient_id: str) -> list[str]:
    individual = select(SearchToken.resource_id).where(
        SearchToken.resource_type == "ResearchSubject",
        SearchToken.param == "individual",
        SearchToken.value == f"Patient/{patient_id}",
    )
    return list(
        store.session.exec(
            select(SearchToken.resource_id).where(
                SearchToken.resource_type == "ResearchSubject",
                SearchToken.param == "study",
                SearchToken.value == study_reference(study),
                SearchToken.resource_id.in_(individual),
            )
        ).all()
    )


def _names_patient(store: ClinicalStore, subject_id: str, patient_id: str) -> bool:
    """Whether the subject, as stored and whoever may see it, still names the patient as its individual, in any
    form of the reference (relative, absolute, versioned): only a subject that does not may lose its key."""
    head = store.session.get(ResourceHead, ("ResearchSubject", subject_id))
    if head is None or head.deleted:
        return False
    content = orjson.loads(store.session.get(ResourceVersion, head.version_pk).content)
    reference = (content.get("individual") or {}).get("reference")
    if not isinstance(reference, str):
        return False
    reference = reference.split("/_history/", 1)[0]
    return reference == f"Patient/{patient_id}" or reference.endswith(f"/Patient/{patient_id}")


def subject_key(study: StudyDef, patient_id: str) -> str:
    """The conditional_key criteria that makes (study, individual) of a ResearchSubject unique."""
    return f"one-subject {study_reference(study)} Patient/{patient_id}"


def claim_subject(store: ClinicalStore, study: StudyDef, patient_id: str, subject_id: str) -> str | None:
    """Reserve the patient's one subject of the study for `subject_id`, or answer the other subject that
    already is it (nothing claimed). The reservation is a row of conditional_key, unique in the database, so
    of two concurrent enrolments one fails on the key (IntegrityError) and, retried, finds the other."""
    key = subject_key(study, patient_id)
    # The key first: whatever committed it committed its subject too, so the reads after it see that subject.
    owner = store.conditional_owner("ResearchSubject", key)
    current = _subjects_of_patient(store, study, patient_id)
    if (
        owner is not None
        and owner != subject_id
        and owner not in current
        and not _names_patient(store, owner, patient_id)
    ):
        store.release_conditional("ResearchSubject", key, owner)  # its subject was deleted, or names another patient
        owner = None
    other = owner or next((found for found in current if found != subject_id), None)
    if other is not None and other != subject_id:
        return other
    if owner is None:
        store.claim_conditional("ResearchSubject", key, subject_id)
    return None


def enrol(store: ClinicalStore, study: StudyDef, site: str, mrn: str, consent_date: date) -> Subject:
    """Create the Patient (MRN in the site's system) and its ResearchSubject with the same id.

    An MRN already enrolled at the site is a 409; a Patient with that MRN that an EHR pushed without
    a ResearchSubject is enrolled as it is.
    """
    problems = []
    site_ids = [s.id for s in study.sites]
    if site not in site_ids:
        problems.append(
            {"item": "site", "rule": "allowed_values", "message": f"site must be one of {', '.join(site_ids)}"}
        )
    if consent_date > latest_allowed_date():
        problems.append(
            {"item": "consent_date", "rule": "future_date", "message": f"consent date {consent_date} is in the future"}
        )
    if not mrn.strip():
        problems.append({"item": "mrn", "rule": "required", "message": "mrn must not be blank"})
    if problems:
        raise EditCheckFailed(problems, "the enrolment is not valid; nothing was stored")
    if not store.actor.may_see_site(site):
        raise Forbidden(f"this client may not enrol at site {site}")
    system = study.site(site).mrn_system
    context = WriteContext(source="form", reason="enrolment", form_id=None, visit_id=None)
    existing = _patients_with_mrn(store, system, mrn)
    for patient_id in existing:
        if _subjects_of_patient(store, study, patient_id) or store.head("Patient", patient_id) is None:
            raise Conflict(f"MRN {mrn} is already enrolled at site {site}", location="mrn")
    if existing:
        patient_id = existing[0]
    else:
        patient_id = new_id()
        try:
            store.claim_conditional("Patient", f"enrol {system}|{mrn}", patient_id)
        except IntegrityError as error:
            raise Conflict(f"MRN {mrn} is being enrolled at site {site} concurrently", location="mrn") from error
        store.create(
            {"resourceType": "Patient", "identifier": [{"system": system, "value": mrn}]},
            context,
            resource_id=patient_id,
            site=site,
        )
    subject_id = patient_id if store.session.get(ResourceHead, ("ResearchSubject", patient_id)) is None else new_id()
    try:
        other = claim_subject(store, study, patient_id, subject_id)
    except IntegrityError as error:
        raise Conflict(f"MRN {mrn} is being enrolled at site {site} concurrently", location="mrn") from error
    if other is not None:
        raise Conflict(f"MRN {mrn} is already enrolled at site {site}", location="mrn")
    stored = store.create(
        {
            "resourceType": "ResearchSubject",
            "status": "candidate",
            "period": {"start": consent_date.isoformat()},
            "study": {"reference": study_reference(study)},
            "individual": {"reference": f"Patient/{patient_id}"},
        },
        context,
        resource_id=subject_id,
    )
    return Subject(stored, patient_id)


def list_subjects(
    store: ClinicalStore, study: StudyDef, *, site: str | None, status: str | None, offset: int, limit: int
) -> tuple[int, list[Subject]]:
    """Subjects of the study the caller may see, in a stable order (by id)."""
    query = select(ResourceHead).where(
        ResourceHead.resource_type == "ResearchSubject",
        ResourceHead.deleted == False,  # noqa: E712
        ResourceHead.resource_id.in_(
            select(SearchToken.resource_id).where(
                SearchToken.resource_type == "ResearchSubject",
                SearchToken.param == "study",
                SearchToken.value == study_reference(study),
            )
        ),
    )
    if store.actor.sites is not None:
        query = query.where(ResourceHead.site.in_(sorted(store.actor.sites)))
    if site:
        query = query.where(ResourceHead.site == site)
    if status:
        query = query.where(
            ResourceHead.resource_id.in_(
                select(SearchToken.resource_id).where(
                    SearchToken.resource_type == "ResearchSubject",
                    SearchToken.param == "status",
                    SearchToken.code == status,
                )
            )
        )
    total = store.session.exec(select(func.count()).select_from(query.subquery())).one()
    heads = store.session.exec(query.order_by(ResourceHead.resource_id).offset(offset).limit(limit)).all()
    subjects = []
    for stored in store.current(heads):
        patient_id = patient_of(stored.content)
        if patient_id:
            subjects.append(Subject(stored, patient_id))
    return total, subjects


def describe(store: ClinicalStore, study: StudyDef, subjects: list[Subject]) -> list[dict[str, Any]]:
    """The JSON view of subjects; the MRN only for roles that may see identifiers."""
    show_mrn = can(store.actor, "identifiers.read")
    heads = [store.head("Patient", subject.patient_id) for subject in subjects]
    patients = {p.resource_id: p.content for p in store.current([h for h in heads if h is not None and not h.deleted])}
    systems = {site.mrn_system for site in study.sites}
    views = []
    for subject in subjects:
        content = subject.research_subject.content
        patient = patients.get(subject.patient_id, {})
        mrn = next((i.get("value") for i in patient.get("identifier") or [] if i.get("system") in systems), None)
        view = {
            "id": subject.id,
            "patient_id": subject.patient_id,
            "site": subject.site,
            "study": study_reference(study),
            "status": content.get("status"),
            "consent_date": (content.get("period") or {}).get("start"),
            "end_date": (content.get("period") or {}).get("end"),  # end of participation (end_of_study), else None
            "arm": content.get("assignedArm"),
            "version": subject.research_subject.version_id,
            "last_updated": subject.research_subject.last_updated.isoformat(),
        }
        if show_mrn:
            view["mrn"] = mrn
        views.append(view)
    return views
