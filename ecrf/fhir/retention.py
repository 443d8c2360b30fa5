"""Minimum necessary: what a Bundle carries beyond the study's kept types is validated, then not retained.

An entry whose resource is a valid R4 resource of a type `forms/study.yaml` does not keep
(`kept_resource_types`) is answered with an OperationOutcome of severity information naming the type and why,
and nothing of it is stored. A kept resource's references to what is not retained (an entry held back, named by
its fullUrl or Type/id, or a conditional `Type?criteria` of a type not kept, which nothing here can resolve)
are removed from the version stored, never left dangling:
the Reference loses its `reference` (its `display` or `identifier`, when there, stay), and an element left
empty goes with it. Each removal is listed in the referring entry's outcome, in the outcome of the entry it
referred to, and in the write's audit entries.
"""

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from ecrf.audit import service as audit
from ecrf.common.outcome import FhirError, issue, validation_issues
from ecrf.fhir.references import local_target
from ecrf.fhir.validation import READ_ONLY_TYPES, WRITABLE_TYPES, model_of

SERVED_TYPES = frozenset((*WRITABLE_TYPES, *READ_ONLY_TYPES, "Questionnaire"))  # a reference to these stays
KEPT = ", ".join(WRITABLE_TYPES)


@dataclass(slots=True)
class Removal:
    path: str  # FHIRPath of the removed reference, in the request
    reference: str  # as sent
    target_type: str
    referent: int | None  # index of the entry it named, when in this Bundle


@dataclass
class Retention:
    """What one unit of work holds back, and the references it removes."""

    held_back: dict[str, tuple[int, str]] = field(default_factory=dict)  # fullUrl or Type/id -> (index, type)

    def hold_back(self, entries: list[Any]) -> None:
        for entry in entries:
            value = (entry.index, entry.resource_type)
            if entry.full_url:
                self.held_back[entry.full_url] = value
            if entry.resource_id:
                self.held_back[f"{entry.resource_type}/{entry.resource_id}"] = value

    def not_retained(self, reference: str, base_url: str) -> tuple[str, int | None] | None:
        """(type, entry index or None) when `reference` names something not retained, else None."""
        if reference in self.held_back:
            index, resource_type = self.held_back[reference]
            return resource_type, index
        if reference.startswith(("urn:", "#")):
            return None
        if "?" in reference and not reference.startswith(("http:", "https:")):
            resource_type = reference.partition("?")[0]
            return (resource_type, None) if resource_type not in SERVED_TYPES else None
        target = local_target(reference, base_url)
        if target is not None and target in self.held_back:
            index, resource_type = self.held_back[target]
            return resource_type, index
        return None  # a literal reference is kept as sent (another server's, or one this Bundle does not hold)


def remove(resource: dict[str, Any], holder: dict[str, Any]) -> None:
    """Take the reference out of its Reference; a Reference (and any element) left with nothing goes too."""
    chain = _chain(resource, holder)
    holder.pop("reference", None)
    if set(holder) - {"type"}:
        return  # display or identifier still say what it was
    holder.clear()
    for container, key in reversed(chain):
        child = container[key]
        if isinstance(child, (dict, list)) and not child:
            del container[key]
        else:
            break


def _chain(node: Any, target: dict[str, Any]) -> list[tuple[Any, Any]]:
    """(container, key) pairs from the resource down to `target`."""
    stack: list[tuple[Any, list[tuple[Any, Any]]]] = [(node, [])]
    while stack:
        current, chain = stack.pop()
        if current is target:
            return chain
        items = (
            current.items() if isinstance(current, dict) else enumerate(current) if isinstance(current, list) else ()
        )
        for key, child in items:
            if isinstance(child, (dict, list)):
                stack.append((child, [*chain, (current, key)]))
    return []


def check_after_removal(entry: Any) -> None:
    """A kept resource must still be valid once its references are removed (a required element may have
    held nothing else): else the entry is refused, saying which removal made it so."""
    try:
        model_of(entry.resource_type).model_validate(entry.content())
    except ValidationError as error:
        removed = ", ".join(f"{r.path} ({r.reference}, {r.target_type})" for r in entry.removed.values())
        problems = validation_issues(error.errors(include_url=False, include_input=False), entry.resource_location)
        lead = issue(
            f"the references to resources that are not retained ({removed}) were removed, and without them "
            f"this {entry.resource_type} is not valid: send the element without that reference, or keep "
            f"the type it names in forms/study.yaml",
            code="business-rule",
            location=entry.resource_location,
        )
        raise FhirError(422, [lead, *problems]) from None


def removal_issue(removal: Removal, where: str) -> dict[str, Any]:
    return issue(
        f"reference {removal.reference!r} to {removal.target_type}, which is not retained, was removed "
        f"from the stored version of {where}",
        code="informational",
        severity="information",
        location=removal.path,
    )


def kept_outcome(entry: Any) -> dict[str, Any] | None:
    """The outcome of a kept entry whose references were removed (None when none was)."""
    if not entry.removed:
        return None
    return {
        "resourceType": "OperationOutcome",
        "issue": [removal_issue(r, "this resource") for r in entry.removed.values()],
    }


def held_back_outcome(entry: Any, referring: list[tuple[Any, Removal]]) -> dict[str, Any]:
    lead = issue(
        f"{entry.resource_type} is not retained: the study keeps only {KEPT} (forms/study.yaml "
        f"kept_resource_types, minimum necessary); this resource was validated as R4 and nothing of it "
        f"was stored",
        code="informational",
        severity="information",
        location=entry.resource_location,
    )
    return {
        "resourceType": "OperationOutcome",
        "issue": [
            lead,
            *(
                removal_issue(removal, f"{other.resource_type} {other.location.removesuffix('.request')}")
                for other, removal in referring
            ),
        ],
    }


def referring(entries: list[Any]) -> dict[int, list[tuple[Any, Removal]]]:
    """Per held-back entry index, the kept entries' removals of references to it."""
    found: dict[int, list[tuple[Any, Removal]]] = {}
    for entry in entries:
        for removal in (entry.removed or {}).values():
            if removal.referent is not None:
                found.setdefault(removal.referent, []).append((entry, removal))
    return found


def audit_entries(held_back: list[Any], kept: list[tuple[Any, Any]]) -> list[dict[str, Any]]:
    """One audit entry naming what was not retained, and one per stored resource whose references were removed
    (`kept`: (entry, Stored) pairs)."""
    entries = []
    if held_back:
        counted = Counter(entry.resource_type for entry in held_back)
        listed = ", ".join(f"{name} ({count})" for name, count in sorted(counted.items()))
        entries.append(
            {
                "action": "not-retained",
                "source": "fhir",
                "reason": f"validated and not retained (not a kept type of the study): {listed}",
            }
        )
    for entry, stored in kept:
        if entry.removed and stored is not None:
            removed = "; ".join(f"{r.path}: {r.reference} ({r.target_type})" for r in entry.removed.values())
            entries.append(
                {
                    "action": "references-removed",
                    "source": "fhir",
                    "patient_id": stored.patient_id,
                    "resource": stored.reference,
                    "resource_version": stored.version_id,
                    "reason": f"references to resources not retained, removed: {removed}",
                }
            )
    return entries


def record(session: Any, actor: Any, held_back: list[Any], kept: list[tuple[Any, Any]]) -> None:
    entries = audit_entries(held_back, kept)
    if entries:
        audit.append_many(session, actor, entries)
