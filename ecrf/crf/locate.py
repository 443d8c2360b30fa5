"""Where a form save or read goes: the subject, the form, the visit and the entry it names (a Target), and
the form instance already there. Instance and resource ids are derived from subject, form, visit and slot,
so a re-save is a new version of the same resource."""

import hashlib
import secrets
from dataclasses import dataclass

from sqlmodel import select

from ecrf.common.errors import Conflict, EditCheckFailed, NotFound
from ecrf.crf.models import WITHDRAWN, FormInstance
from ecrf.store.service import ClinicalStore
from ecrf.subjects.service import Subject, resolve
from study_model.definitions import FormDef, StudyDef, VisitDef

LOG_VISIT = "LOG"  # the visit key of a log form's entries (they belong to no visit)


def derived_id(*parts: str) -> str:
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Target:
    """A visit's own form (entry_id ''), or one entry of a log form (visit None) or of a repeating form."""

    subject: Subject
    form: FormDef
    visit: VisitDef | None
    entry_id: str = ""

    @property
    def visit_key(self) -> str:
        return self.visit.id if self.visit is not None else LOG_VISIT

    @property
    def _key(self) -> tuple[str, ...]:
        return (self.subject.id, self.form.id, self.visit_key) + (("entry", self.entry_id) if self.entry_id else ())

    @property
    def instance_id(self) -> str:
        return derived_id(*self._key)

    def resource_id(self, slot: str) -> str:
        return derived_id(*self._key, slot)

    @property
    def what(self) -> str:
        """The target as messages name it."""
        if self.entry_id:
            return f"entry {self.entry_id} of form {self.form.id}"
        return f"form {self.form.id} at {self.visit_key}"


def locate(
    store: ClinicalStore, study: StudyDef, subject_id: str, form_id: str, visit_id: str, *, writing: bool
) -> Target:
    subject = resolve(store, study, subject_id)
    try:
        form = study.form(form_id)
    except KeyError:
        raise NotFound(f"form {form_id} is not a form of study {study.id}") from None
    try:
        visit = study.visit(visit_id)
    except KeyError:
        raise NotFound(f"visit {visit_id} is not a visit of study {study.id}") from None
    if visit.id not in form.visits:
        message = (
            f"form {form.id} is a log form: its entries are under .../forms/{form.id}/entries"
            if form.kind == "log"
            else f"form {form.id} is not collected at visit {visit.id} (visits: {', '.join(form.visits)})"
        )
        if writing:
            raise EditCheckFailed([{"item": "visit_id", "rule": "visit", "message": message}], message)
        raise NotFound(message)
    return Target(subject, form, visit)


def form_instance(store: ClinicalStore, target: Target, *, for_update: bool) -> FormInstance | None:
    """The instance of a visit's own form, None before its first save."""
    query = select(FormInstance).where(FormInstance.id == target.instance_id)
    return store.session.exec(query.with_for_update() if for_update else query).one_or_none()


def _form_with_entries(study: StudyDef, form_id: str) -> FormDef:
    try:
        form = study.form(form_id)
    except KeyError:
        raise NotFound(f"form {form_id} is not a form of study {study.id}") from None
    if not form.has_entries:
        raise NotFound(
            f"form {form_id} has no entries: it is saved once per visit, at "
            f".../forms/{form_id}/<visit> ({', '.join(form.visits)})"
        )
    return form


def new_entry(store: ClinicalStore, study: StudyDef, subject_id: str, form_id: str, visit_id: str | None) -> Target:
    """Where a new entry goes: a log form takes no visit, a repeating form the visit it is collected at."""
    form = _form_with_entries(study, form_id)
    if form.kind == "log":
        if visit_id is not None:
            raise NotFound(
                f"form {form_id} is a log form: its entries belong to no visit (.../forms/{form_id}/entries)"
            )
        subject = resolve(store, study, subject_id)
        if form.max_entries is not None:
            _refuse_beyond_max_entries(store, subject, form)
        return Target(subject, form, None, secrets.token_hex(8))
    if visit_id is None:
        raise NotFound(
            f"form {form_id} repeats at a visit: add entries at .../forms/{form_id}/<visit>/entries "
            f"({', '.join(form.visits)})"
        )
    target = locate(store, study, subject_id, form_id, visit_id, writing=True)
    return Target(target.subject, form, target.visit, secrets.token_hex(8))


def _refuse_beyond_max_entries(store: ClinicalStore, subject: Subject, form: FormDef) -> None:
    """A log form with `max_entries` (end_of_study: once per subject) takes no more live entries; a withdrawn
    (entered_in_error) one does not count. The subject's rows are locked so two adds at once take turns."""
    live = [
        instance.entry_id
        for instance in store.session.exec(
            select(FormInstance)
            .where(FormInstance.subject_id == subject.id, FormInstance.form_id == form.id, FormInstance.entry_id != "")
            .with_for_update()
        ).all()
        if instance.status != WITHDRAWN
    ]
    if len(live) >= form.max_entries:
        raise Conflict(
            f"form {form.id} takes at most {form.max_entries} entr{'y' if form.max_entries == 1 else 'ies'} "
            f"per subject and subject {subject.id} has {', '.join(sorted(live))}: edit it, or withdraw "
            f"it as entered in error first"
        )


def _entry_instance(
    store: ClinicalStore, subject: Subject, form: FormDef, entry_id: str, *, for_update: bool
) -> FormInstance:
    query = select(FormInstance).where(
        FormInstance.subject_id == subject.id,
        FormInstance.form_id == form.id,
        FormInstance.entry_id == entry_id,
        FormInstance.entry_id != "",
    )
    instance = store.session.exec(query.with_for_update() if for_update else query).one_or_none()
    if instance is None:
        raise NotFound(f"subject {subject.id} has no entry {entry_id} of form {form.id}")
    return instance


def locate_entry(
    store: ClinicalStore,
    study: StudyDef,
    subject_id: str,
    form_id: str,
    entry_id: str,
    visit_id: str | None = None,
    *,
    for_update: bool = False,
) -> tuple[Target, FormInstance]:
    """An existing entry; with a visit (the repeating form's visit path) it must be an entry of that visit."""
    form = _form_with_entries(study, form_id)
    subject = resolve(store, study, subject_id)
    instance = _entry_instance(store, subject, form, entry_id, for_update=for_update)
    if visit_id is not None and instance.visit_id != visit_id:
        raise NotFound(f"entry {entry_id} of form {form_id} is not an entry of visit {visit_id}")
    visit = None if instance.visit_id == LOG_VISIT else study.visit(instance.visit_id)
    return Target(subject, form, visit, entry_id), instance


def located_entries(
    store: ClinicalStore, study: StudyDef, subject_id: str, form_id: str, visit_id: str | None = None
) -> list[tuple[Target, FormInstance]]:
    """A subject's entries of a form (of one visit, for a repeating form's visit path), oldest first;
    withdrawn ones included."""
    form = _form_with_entries(study, form_id)
    if visit_id is not None:
        subject = locate(store, study, subject_id, form_id, visit_id, writing=False).subject
    else:
        subject = resolve(store, study, subject_id)
    query = select(FormInstance).where(
        FormInstance.subject_id == subject.id, FormInstance.form_id == form.id, FormInstance.entry_id != ""
    )
    if visit_id is not None:
        query = query.where(FormInstance.visit_id == visit_id)
    found = store.session.exec(query.order_by(FormInstance.created_at, FormInstance.id)).all()
    return [
        (Target(subject, form, None if i.visit_id == LOG_VISIT else study.visit(i.visit_id), i.entry_id), i)
        for i in found
    ]


def subject_instances(store: ClinicalStore, subject: Subject) -> list[FormInstance]:
    """The subject's visit forms (entries of log and repeating forms have a lifecycle of their own)."""
    return list(
        store.session.exec(
            select(FormInstance).where(FormInstance.subject_id == subject.id, FormInstance.entry_id == "")
        ).all()
    )
