"""The rows a new resource version adds beside itself: search tokens, item facts, item-level audit entries.

One place for both ways of writing (one version at a time, or many new resources in bulk), so they cannot
drift apart.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ecrf.store.indexing import Fact, search_tokens

if TYPE_CHECKING:
    from ecrf.store.service import Stored, WriteContext

FactKey = tuple[str, str]  # (form id, item id)


def token_rows(stored: Stored) -> list[dict[str, Any]]:
    resource_type, resource_id = stored.resource_type, stored.resource_id
    return [
        {
            "resource_type": resource_type,
            "resource_id": resource_id,
            "param": token.param,
            "system": cut(token.system),
            "code": cut(token.code),
            "value": cut(token.value),
            "moment": token.moment,
            "text": cut(token.text),
        }
        for token in search_tokens(stored.content)
    ]


def fact_rows(
    stored: Stored, facts: dict[FactKey, Fact], context: WriteContext, before: dict[FactKey, Any]
) -> list[dict[str, Any]]:
    """The facts of the new version; a value this version did not change keeps the provenance (source and
    version) of the write that set it, so a derived status update does not claim a clinician's value."""
    rows = []
    for key, fact in facts.items():
        old = before.get(key)
        if old is not None and shown(old) == shown(fact):
            source, set_in = old.source or context.source, old.set_in_version or old.version_id
        else:
            source, set_in = context.source, stored.version_id
        rows.append(
            {
                "resource_type": stored.resource_type,
                "resource_id": stored.resource_id,
                "version_id": stored.version_id,
                "patient_id": stored.patient_id,
                "form_id": fact.form_id,
                "item_id": fact.item_id,
                "value_number": fact.value_number,
                "value_text": fact.value_text,
                "unit": fact.unit,
                "original_value": cut(fact.original_value, 64),
                "original_unit": cut(fact.original_unit, 64),
                "uln": fact.uln,
                "effective": fact.effective,
                "effective_date": fact.effective_date,
                "error": fact.error,
                "source": source,
                "set_in_version": set_in,
            }
        )
    return rows


def audit_entries(
    stored: Stored, context: WriteContext, before: dict[FactKey, Any], after: dict[FactKey, Fact]
) -> list[dict[str, Any]]:
    """One entry per item whose shown value changed (old and new); one for the version when none did."""
    action = "delete" if stored.deleted else ("create" if stored.version_id == 1 else "update")
    common = dict(
        action=action,
        source=context.source,
        patient_id=stored.patient_id,
        visit_id=context.visit_id,
        reason=context.reason,
        resource=stored.reference,
        resource_version=stored.version_id,
    )
    entries = []
    for key in sorted(before.keys() | after.keys()):
        old_value, new_value = shown(before.get(key)), shown(after.get(key))
        if old_value != new_value:
            entries.append(
                {**common, "form_id": key[0], "item_id": key[1], "old_value": old_value, "new_value": new_value}
            )
    return entries or [{**common, "form_id": context.form_id}]


def shown(fact: Any) -> str | None:
    """A fact as the audit trail shows it: value, unit, ULN."""
    if fact is None:
        return None
    text = fact.value_text if fact.value_text is not None else fact.original_value
    unit = f" {fact.unit}" if fact.unit else ""
    uln = f" (ULN {fact.uln:g})" if fact.uln is not None else ""
    return f"{text}{unit}{uln}"


def cut(text: str | None, limit: int = 255) -> str | None:
    return text if text is None or len(text) <= limit else text[:limit]
