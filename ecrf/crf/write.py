"""A form's data written: the resources its mapping gives, in one store call, and the index of which form
instance owns which resource (form_resource), kept in step with the instance's `resources`."""

from ecrf.crf.locate import Target
from ecrf.crf.models import FormInstance, FormResource
from ecrf.crf.values import owned_resources
from ecrf.store.service import ClinicalStore, WriteContext
from fhir_mappings.mapping import FormResources


def write(
    store: ClinicalStore,
    target: Target,
    instance: FormInstance | None,
    mapped: FormResources | None,
    reason: str | None,
) -> dict[str, str]:
    """Write the mapped resources as the target's (None: none, its resources deleted, a withdrawal) and
    index them; returns {slot: "Type/id"}, what the instance owns now."""
    context = WriteContext(source="form", reason=reason, form_id=target.form.id, visit_id=target.visit_key)
    held = owned_resources(instance)
    # an EHR's resource an entry landed from in an `ehr_entries` slot (a recurrence Condition) is the EHR's:
    # the form's save writes its own resources beside it and never rewrites nor deletes it
    ehr_slots = {ehr.slot for ehr in target.form.ehr_entries}
    kept = {slot: reference for slot, reference in held.items() if slot in ehr_slots}
    previous = {slot: reference for slot, reference in held.items() if slot not in ehr_slots}
    patches = (
        []
        if mapped is None
        else [
            ("Patient", target.subject.patient_id, mapped.patient_patch),
            ("ResearchSubject", target.subject.id, mapped.research_subject_patch),
        ]
    )
    owned = store.write_owned(
        [] if mapped is None else mapped.resources, previous, target.resource_id, patches, context
    )
    owned = {**owned, **kept}
    _index_owned(store, instance.id if instance is not None else target.instance_id, held, owned)
    return owned


def _index_owned(store: ClinicalStore, instance_id: str, before: dict[str, str], after: dict[str, str]) -> None:
    """Keep form_resource (resource -> owning instance) in step with the instance's resources."""
    for reference in set(before.values()) - set(after.values()):
        row = store.session.get(FormResource, tuple(reference.split("/", 1)))
        if row is not None:
            store.session.delete(row)
    for reference in sorted(set(after.values()) - set(before.values())):
        resource_type, resource_id = reference.split("/", 1)
        store.session.add(FormResource(resource_type=resource_type, resource_id=resource_id, instance_id=instance_id))
