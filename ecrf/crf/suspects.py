"""AdverseEvent.suspectEntity instances (CRF-SPEC 7.2): the subject's exposure resource of the suspected drug.

The mapping (fhir_mappings/to_fhir.py, kind `suspect_entity`) writes each suspect entity with the study
extension naming the drug and, as its instance, a contained Medication of that drug (valid R4 when the subject
has no exposure to point at: a CodeableConcept is no Reference). At an eCRF save this points the instance at the
subject's exposure resource of that drug instead (the latest whose date is on or before the event's, else the
latest), and drops the contained Medication no entity references any more. Which resources are "of that drug"
comes from the form definitions: the `resource` items whose value coding is the suspect entity's medication
(exposure.drug pd1 -> LOCAL#pd1-antibody), found through the item facts of the store (any door).
"""

from datetime import date
from typing import Any

from sqlmodel import Session, select

from ecrf.store.models import ItemFact
from study_model.definitions import FormDef, ItemDef, StudyDef
from fhir_mappings.to_fhir import contained_id


def _drug_items(study: StudyDef, key: tuple[str, str]) -> list[tuple[FormDef, ItemDef, str]]:
    """(form, item, value) of the resource items whose value is coded as the drug `key`."""
    found = []
    for form, item in study.items_of_kind("resource"):
        for value in item.values or ():
            if study.value_coding(item, value).key == key:
                found.append((form, item, value))
    return found


def _exposure_of(
    study: StudyDef, session: Session, patient_id: str, key: tuple[str, str], on_or_before: date | None
) -> str | None:
    rows = []
    for form, item, value in _drug_items(study, key):
        rows += session.exec(
            select(ItemFact).where(
                ItemFact.patient_id == patient_id,
                ItemFact.form_id == form.id,
                ItemFact.item_id == item.id,
                ItemFact.value_text == value,
                ItemFact.error.is_(None),
            )
        ).all()
    if not rows:
        return None
    rows.sort(key=lambda fact: (fact.effective_date or date.min, fact.pk or 0))
    before = [fact for fact in rows if on_or_before is None or (fact.effective_date or date.min) <= on_or_before]
    chosen = (before or rows)[-1]
    return f"{chosen.resource_type}/{chosen.resource_id}"


def link_suspects(
    study: StudyDef,
    session: Session,
    form: FormDef,
    patient_id: str,
    resources: list[tuple[str, dict[str, Any]]],
    entry_date: date | None,
) -> None:
    """Point the suspect entities of the entry's resources at the subject's exposure resources (in place)."""
    suspects = [item for item in form.items if item.fhir.kind == "suspect_entity"]
    if not suspects:
        return
    for _, resource in resources:
        entities = resource.get("suspectEntity") or []
        for item in suspects:
            local = f"#{contained_id(item.fhir.medication)}"
            reference = None
            for entity in entities:
                if (entity.get("instance") or {}).get("reference") != local:
                    continue
                reference = reference or _exposure_of(study, session, patient_id, item.fhir.medication.key, entry_date)
                if reference is not None:
                    entity["instance"] = {"reference": reference}
        used = {(e.get("instance") or {}).get("reference") for e in entities}
        if "contained" in resource:
            resource["contained"] = [c for c in resource["contained"] if f"#{c.get('id')}" in used]
            if not resource["contained"]:
                del resource["contained"]
