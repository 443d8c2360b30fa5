"""Resources an EHR pushes through /fhir land in the log forms, as entries (`source: fhir`).

A store derived hook, so it runs in the transaction of the write (single create/update/delete and Bundles,
transaction and batch alike). For every touched patient who is a subject of the study, each current resource
whose version came through /fhir, that no form owns (form_resource) and that matches a log form's anchor,
becomes an entry of that form: a form_instance owning the resource, dated by the form's date item as read
from the resource (the existing from_fhir paths give the values), with the lifecycle of any entry. A delete of
an entry's anchor resource through /fhir withdraws the entry (entered_in_error; its history stays); an update
re-dates it.

Which log form: from the form definitions only. A form's anchors are its `resource` items that carry the
form's date item (the entry's own record; e.g. adverse_event.ctcae_term -> AdverseEvent); an anchor whose
`fixed` has a coded element (`code`, `medicationCodeableConcept`: a CodeableConcept with `coding`) takes only
resources with one of those codes, and is preferred to an anchor of the same type without codes (a
MedicationStatement LOCAL#sorafenib goes to a form fixing that medication, any other to conmed). An anchor item
whose resource type depends on its value has one anchor per variant (`_variants`).
"""

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import orjson
from sqlmodel import select

from ecrf.crf import lifecycle
from ecrf.crf.describe import missing_items
from ecrf.crf.locate import LOG_VISIT, derived_id
from ecrf.crf.models import WITHDRAWN, FormInstance, FormResource
from ecrf.crf.schedule import day_zero, place
from ecrf.crf.subject_checks import deviation_of_landed
from ecrf.crf.values import form_values, owned_resources
from ecrf.responses import FHIR_PREFIX
from ecrf.store.models import ResourceHead, ResourceVersion
from ecrf.store.service import ClinicalStore, WriteContext
from fhir_mappings.from_fhir import is_void
from study_model.definitions import FormDef, ItemDef, StudyDef

FHIR = "fhir"
CHUNK = 500


def _coding_keys(concept: Any) -> frozenset[tuple[str, str]]:
    if not isinstance(concept, dict):
        return frozenset()
    return frozenset(
        (c.get("system"), c.get("code")) for c in concept.get("coding") or [] if isinstance(c, dict) and c.get("code")
    )


@dataclass(frozen=True)
class Anchor:
    """One kind of resource that is the record of one entry of a log form (or of a repeating form)."""

    form: FormDef
    slot: str  # the entry's slot for the resource: the resource item's id (a repeating form: its ehr_entries slot)
    resource_type: str
    codes: tuple[tuple[str, frozenset[tuple[str, str]]], ...] = ()  # (element, codings): one must be there
    repeating: bool = False  # an entry of a repeating form, placed at the visit whose window holds its date

    def matches(self, resource: dict[str, Any]) -> bool:
        if resource.get("resourceType") != self.resource_type:
            return False
        return all(_coding_keys(resource.get(element)) & keys for element, keys in self.codes)


def anchors_of(study: StudyDef, form: FormDef) -> tuple[Anchor, ...]:
    """The anchors of a log form: its resource items carrying the form's date (else its first resource item);
    of a repeating form: its `ehr_entries`."""
    if form.repeating:
        return tuple(
            Anchor(form, ehr.slot, ehr.resource_type, (("code", frozenset(c.key for c in ehr.codes)),), True)
            for ehr in form.ehr_entries
        )
    if form.kind != "log":
        return ()
    owners = [item for item in form.items if item.fhir.kind == "resource"]
    dated = [
        item
        for item in owners
        if form.date_item
        and (item.id == form.date_item or form.date_item in {d.id for d in study.dependents_of(form, item.id)})
    ]
    chosen = dated or owners[:1]
    return tuple(
        Anchor(
            form,
            item.id,
            resource_type,
            tuple((element, _coding_keys(value)) for element, value in sorted(fixed.items()) if _coding_keys(value)),
        )
        for item in chosen
        for resource_type, fixed in _variants(study, item)
    )


def _variants(study: StudyDef, item: ItemDef) -> list[tuple[str, dict[str, Any]]]:
    """(resource type, fixed elements) of the resources an anchor item writes: one, unless its target chooses
    them by the item's value (`resource_type_by_value`, `fixed_by_value`: exposure, whose drug decides between
    MedicationAdministration and MedicationStatement). A variant's value coded at a top-level element (exposure:
    medicationCodeableConcept LOCAL#sorafenib) is one of its fixed codes: only resources of that code land."""
    target = item.fhir
    if not target.resource_type_by_value:
        return [(target.resource_type, target.fixed)]
    variants = []
    for value, resource_type in target.resource_type_by_value.items():
        fixed = {**target.fixed, **(target.fixed_by_value.get(value) or {})}
        path = target.path_in(resource_type) or ""
        if item.type == "code" and path.isidentifier() and not target.as_code:
            fixed[path] = {"coding": [study.value_coding(item, value).fhir()]}
        variants.append((resource_type, fixed))
    return variants


def study_anchors(study: StudyDef) -> dict[str, tuple[Anchor, ...]]:
    """Anchors by resource type, the ones with codes (more specific) first, then in study order."""
    found: dict[str, list[Anchor]] = {}
    for form in study.forms:
        for anchor in anchors_of(study, form):
            found.setdefault(anchor.resource_type, []).append(anchor)
    return {
        resource_type: tuple(sorted(anchors, key=lambda a: not a.codes)) for resource_type, anchors in found.items()
    }


def anchor_for(anchors: dict[str, tuple[Anchor, ...]], resource: dict[str, Any]) -> Anchor | None:
    for anchor in anchors.get(resource.get("resourceType", ""), ()):
        if anchor.matches(resource):
            return anchor
    return None


SafetyHook = Callable[[ClinicalStore, FormInstance, dict[str, Any]], None]


@dataclass(frozen=True)
class Written:
    """Of a resource's current version: through which door, why, which version."""

    source: str
    reason: str | None
    version_id: int


def ehr_entries_hook(study: StudyDef, after_landing: SafetyHook | None = None):
    """The derived hook (ClinicalStore.derived_hooks) that lands EHR pushes in the log forms."""
    anchors = study_anchors(study)

    def hook(store: ClinicalStore, patient_ids: set[str]) -> None:
        touched = {key for key in store.touched_resources if key[0] in anchors}
        store.touched_resources -= touched  # each write is looked at once (derived writes come round again)
        if not touched or not patient_ids:
            return
        subjects = _subjects(store, study, patient_ids)
        if not subjects:
            return  # not a subject of the study (not enrolled): nothing lands
        rows = []
        for resource_type in sorted({key[0] for key in touched}):
            ids = sorted(resource_id for kind, resource_id in touched if kind == resource_type)
            for start in range(0, len(ids), CHUNK):
                rows += store.session.exec(  # the version's content is read only for what may land
                    select(
                        ResourceHead,
                        ResourceVersion.source,
                        ResourceVersion.reason,
                        ResourceVersion.version_id,
                        FormResource.instance_id,
                    )
                    .join(ResourceVersion, ResourceVersion.pk == ResourceHead.version_pk)
                    .outerjoin(
                        FormResource,
                        (FormResource.resource_type == ResourceHead.resource_type)
                        & (FormResource.resource_id == ResourceHead.resource_id),
                    )
                    .where(
                        ResourceHead.resource_type == resource_type,
                        ResourceHead.resource_id.in_(ids[start : start + CHUNK]),
                    )
                ).all()
        rows = [row for row in rows if row[0].patient_id in subjects]
        rows.sort(key=lambda row: (row[0].last_updated, row[0].resource_type, row[0].resource_id))
        candidates = [row[0].version_pk for row in rows if row[4] is None and not row[0].deleted and row[1] == FHIR]
        contents: dict[int, str] = {}
        for start in range(0, len(candidates), CHUNK):
            contents.update(
                store.session.exec(
                    select(ResourceVersion.pk, ResourceVersion.content).where(
                        ResourceVersion.pk.in_(candidates[start : start + CHUNK])
                    )
                ).all()
            )
        for head, source, reason, version_id, instance_id in rows:
            written = Written(source, reason, version_id)
            if instance_id is None:
                if head.version_pk not in contents:
                    continue  # deleted, or not written through /fhir
                resource = orjson.loads(contents[head.version_pk])
                anchor = anchor_for(anchors, resource)
                if anchor is not None and anchor.repeating and is_void(resource):
                    continue  # refuted / entered in error (CRF-SPEC 9.3): not an entry
                if anchor is not None:
                    _land(store, study, subjects[head.patient_id], anchor, head, written, after_landing)
            else:
                _follow(store, study, instance_id, head, written)
        store.session.flush()

    return hook


def _subjects(store: ClinicalStore, study: StudyDef, patient_ids: set[str]) -> dict[str, tuple[str, str | None]]:
    """patient id -> (subject id, site) of the study's live ResearchSubjects of these patients."""
    from ecrf.subjects.service import study_reference

    found: dict[str, tuple[str, str | None]] = {}
    ids = sorted(patient_ids)
    for start in range(0, len(ids), CHUNK):
        rows = store.session.exec(
            select(ResourceHead.resource_id, ResourceHead.patient_id, ResourceHead.site, ResourceVersion.content)
            .join(ResourceVersion, ResourceVersion.pk == ResourceHead.version_pk)
            .where(
                ResourceHead.resource_type == "ResearchSubject",
                ResourceHead.deleted == False,  # noqa: E712
                ResourceHead.patient_id.in_(ids[start : start + CHUNK]),
            )
            .order_by(ResourceHead.resource_id)
        ).all()
        for subject_id, patient_id, site, text in rows:
            if (orjson.loads(text).get("study") or {}).get("reference") == study_reference(study):
                found.setdefault(patient_id, (subject_id, site))
    return found


def _view(store: ClinicalStore, study: StudyDef, form: FormDef, instance: FormInstance) -> tuple[dict[str, Any], date]:
    """The entry's item values (read back from its resource) and its date: the form's date item, else the
    date it already has."""
    zero = day_zero(store.session, study, instance.patient_id)
    items, _ = form_values(store.session, study, form, instance.visit_id, instance.patient_id, instance, zero)
    return items, _item_date(form, items) or instance.visit_date


def _item_date(form: FormDef, items: dict[str, Any]) -> date | None:
    value = (items.get(form.date_item) or {}).get("value") if form.date_item else None
    try:
        return date.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None


def _audit(
    store: ClinicalStore, instance: FormInstance, action: str, old: str | None, new: str | None, reason: str | None
) -> None:
    lifecycle.record(store, instance, action, old, new, reason, source=FHIR)


def _land(
    store: ClinicalStore,
    study: StudyDef,
    subject: tuple[str, str | None],
    anchor: Anchor,
    head: ResourceHead,
    version: Written,
    after_landing: SafetyHook | None,
) -> None:
    subject_id, site = subject
    entry_id = secrets.token_hex(8)
    reference = f"{head.resource_type}/{head.resource_id}"
    now, actor = datetime.now(UTC), store.actor
    instance = FormInstance(
        id=derived_id(subject_id, anchor.form.id, LOG_VISIT, "entry", entry_id),  # a repeating form's: below
        subject_id=subject_id,
        patient_id=head.patient_id,
        site=site,
        form_id=anchor.form.id,
        visit_id=LOG_VISIT,
        entry_id=entry_id,
        source=FHIR,
        status="draft",
        version=1,
        visit_date=study.today_at(site),
        resources=orjson.dumps({anchor.slot: reference}).decode(),
        created_at=now,
        created_by=actor.sub,
        updated_at=now,
        updated_by=actor.sub,
        updated_role=actor.role,
    )
    items, instance.visit_date = _view(store, study, anchor.form, instance)
    if anchor.repeating:
        # at the visit whose window holds its date (overlap: the nearest target day), as EHR results are placed;
        # outside every window (or before day 0 is known) it is no entry: the endpoints still read the resource
        zero = day_zero(store.session, study, head.patient_id)
        visit_id = place(study, anchor.form, zero, _item_date(anchor.form, items))
        if visit_id is None:
            return
        instance.visit_id = visit_id
        instance.id = derived_id(subject_id, anchor.form.id, visit_id, "entry", entry_id)
    instance.status = lifecycle.status_after_edit(not missing_items(anchor.form, items))
    # the cross-form checks never refuse a push: a finding of a deviation check flags the landed entry
    instance.deviation = deviation_of_landed(
        study, store.session, anchor.form, head.patient_id, items, instance.visit_date
    )
    store.session.add(instance)
    store.session.add(
        FormResource(resource_type=head.resource_type, resource_id=head.resource_id, instance_id=instance.id)
    )
    store.session.flush()
    _audit(
        store,
        instance,
        "form.status",
        None,
        instance.status,
        f"{reference} (version {version.version_id}) pushed through /fhir landed in "
        + (f"form {anchor.form.id} at {instance.visit_id}" if anchor.repeating else f"log form {anchor.form.id}"),
    )
    if instance.deviation:
        _audit(store, instance, "form.deviation", None, instance.deviation, f"{reference} pushed through /fhir")
    if after_landing is not None:
        after_landing(store, instance, {item_id: entry.get("value") for item_id, entry in items.items()})


def _follow(store: ClinicalStore, study: StudyDef, instance_id: str, head: ResourceHead, version: Written) -> None:
    """An entry's resource written again outside the entry's own saves: deleted -> the entry is withdrawn;
    an EHR entry whose resource changed date is re-dated."""
    if version.source == "form" and not head.deleted:
        return  # the form's own save (or another form's) keeps its instance in step itself
    instance = store.session.exec(select(FormInstance).where(FormInstance.id == instance_id)).one_or_none()
    if instance is None or not instance.entry_id or instance.status == WITHDRAWN:
        return
    try:
        form = study.form(instance.form_id)
    except KeyError:
        return
    reference = f"{head.resource_type}/{head.resource_id}"
    anchors = {anchor.slot: anchor for anchor in anchors_of(study, form)}
    slots = [slot for slot, ref in owned_resources(instance).items() if ref == reference]
    if not slots or not set(slots) & set(anchors):
        return
    repeating = any(anchors[slot].repeating for slot in slots if slot in anchors)
    if head.deleted:
        if version.source != FHIR:
            return
        reason = f"{reference} deleted through {FHIR_PREFIX}" + (f": {version.reason}" if version.reason else "")
        _withdraw(store, instance, reason, reference if repeating else None)
        return
    if repeating and version.source == FHIR and _void_version(store, head):
        reason = f"{reference} marked refuted or entered in error through {FHIR_PREFIX}"
        _withdraw(store, instance, reason, reference)
        return
    if instance.source != FHIR:
        return
    items, the_date = _view(store, study, form, instance)
    if repeating:
        visit_id = place(study, form, day_zero(store.session, study, instance.patient_id), _item_date(form, items))
        if visit_id is not None and visit_id != instance.visit_id:  # re-placed (outside every window: stays)
            old_visit, instance.visit_id = instance.visit_id, visit_id
            store.session.add(instance)
            store.session.flush()
            _audit(store, instance, "form.visit", old_visit, visit_id, f"{reference} changed through {FHIR_PREFIX}")
    if the_date != instance.visit_date:
        old = instance.visit_date
        instance.visit_date = the_date
        store.session.add(instance)
        store.session.flush()
        _audit(
            store,
            instance,
            "form.visit_date",
            old.isoformat(),
            the_date.isoformat(),
            f"{reference} changed through {FHIR_PREFIX}",
        )
    deviation = deviation_of_landed(study, store.session, form, instance.patient_id, items, the_date)
    if deviation != instance.deviation:  # the cross-form checks again, on the EHR's new version
        old_deviation, instance.deviation = instance.deviation, deviation
        store.session.add(instance)
        store.session.flush()
        _audit(
            store, instance, "form.deviation", old_deviation, deviation, f"{reference} changed through {FHIR_PREFIX}"
        )


def _void_version(store: ClinicalStore, head: ResourceHead) -> bool:
    content = store.session.exec(select(ResourceVersion.content).where(ResourceVersion.pk == head.version_pk)).one()
    return is_void(orjson.loads(content))


def _withdraw(store: ClinicalStore, instance: FormInstance, reason: str, kept: str | None) -> None:
    """The entry withdrawn because the EHR deleted (or voided) its resource. A repeating form's entry that the
    form saved has resources of its own beside the EHR's (`kept`): they are deleted, as a withdrawal through the
    form deletes them, so no evidence of the entry stays live."""
    old_status = instance.status
    lifecycle.changed(instance, WITHDRAWN, store.actor, datetime.now(UTC))
    instance.withdrawn_reason = reason  # its resources stay named (deleted, so they show nothing): the archive
    for row in store.session.exec(select(FormResource).where(FormResource.instance_id == instance.id)).all():
        store.session.delete(row)
    store.session.add(instance)
    store.session.flush()
    if kept is not None:
        context = WriteContext(source="system", reason=reason, form_id=instance.form_id, visit_id=instance.visit_id)
        for reference in sorted(set(owned_resources(instance).values()) - {kept}):
            resource_type, resource_id = reference.split("/", 1)
            head = store.session.exec(
                select(ResourceHead).where(
                    ResourceHead.resource_type == resource_type, ResourceHead.resource_id == resource_id
                )
            ).one_or_none()
            if head is not None and not head.deleted:
                store.delete(resource_type, resource_id, context)
    _audit(store, instance, "form.withdraw", old_status, WITHDRAWN, reason)
