"""The form lifecycle holds whichever door writes: a store write guard for resources that forms own.

A resource a form's save wrote (form_resource) may be changed or deleted through /fhir too. When its form
is locked the write is refused; when the form is verified or signed the write goes through and, in the
same transaction, drops SDV and signature as an eCRF edit does, with an audit entry; otherwise the form's
version (its ETag) moves. The form's own saves (the eCRF door) apply the lifecycle themselves and pass.
"""

from collections.abc import Callable
from datetime import UTC, datetime

from sqlmodel import select

from ecrf.common.errors import FormLocked
from ecrf.crf import lifecycle
from ecrf.crf.describe import missing_items
from ecrf.crf.models import FormInstance, FormResource
from ecrf.crf.schedule import day_zero
from ecrf.crf.values import form_values
from ecrf.store.models import ResourceHead
from ecrf.store.service import ClinicalStore, WriteContext, WriteGuard
from study_model.definitions import StudyDef

SIGNED_OFF = frozenset({"verified", "signed"})


def lifecycle_guard(study: StudyDef) -> WriteGuard:
    def guard(
        store: ClinicalStore, resource_type: str, resource_id: str, context: WriteContext
    ) -> Callable[[], None] | None:
        owner = store.session.get(FormResource, (resource_type, resource_id))
        if owner is None:
            return None
        instance = store.session.exec(
            select(FormInstance).where(FormInstance.id == owner.instance_id).with_for_update()
        ).one_or_none()
        if instance is None or _own_save(instance, context):
            return None
        reference = f"{resource_type}/{resource_id}"
        if instance.status == "locked":
            raise FormLocked(
                f"{reference} is data of form {instance.form_id} at visit {instance.visit_id} of subject "
                f"{instance.subject_id}, which is locked: a data manager must unlock it first; "
                "nothing was written",
                location=reference,
            )
        if instance.status not in SIGNED_OFF:
            return lambda: _new_version(store, instance)
        return lambda: _drop_sign_off(store, study, instance, reference, context)

    return guard


def _own_save(instance: FormInstance, context: WriteContext) -> bool:
    return context.source == "form" and (context.form_id, context.visit_id) == (instance.form_id, instance.visit_id)


def _new_version(store: ClinicalStore, instance: FormInstance) -> None:
    """The form's data changed: its version (the eCRF door's ETag) moves, so a save based on what was read
    before gets 412 instead of silently undoing the change."""
    instance.version += 1
    store.session.add(instance)
    store.session.flush()


def _drop_sign_off(
    store: ClinicalStore, study: StudyDef, instance: FormInstance, reference: str, context: WriteContext
) -> None:
    """After the new version is in place: SDV and signature no longer cover the form's data."""
    form = study.form(instance.form_id)
    zero = day_zero(store.session, study, instance.patient_id)
    items, _ = form_values(store.session, study, form, instance.visit_id, instance.patient_id, instance, zero)
    old_status, now, actor = instance.status, datetime.now(UTC), store.actor
    lifecycle.changed(instance, lifecycle.status_after_edit(not missing_items(form, items)), actor, now)
    store.session.add(instance)
    store.session.flush()
    head = store.session.get(ResourceHead, tuple(reference.split("/", 1)))
    change = "deleted" if head is not None and head.deleted else "changed"
    reason = f"{reference} {change} through {context.source}" + (f": {context.reason}" if context.reason else "")
    lifecycle.record(store, instance, "form.status", old_status, instance.status, reason, source=context.source)
