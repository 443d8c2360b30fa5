"""Every FHIR interaction asks the one policy (`can`) with its resource type and SMART permissions.

REST reads and searches call `require` before they read; every write and every Bundle entry passes
through `Engine.run` (ecrf/fhir/interactions.py), which asks `refusals` before it does anything, so a
transaction with one refused entry stores nothing and a batch fails only that entry.

Permissions per interaction (SMART v2): create `c`, read/vread/history `r`, update `u` (an update that
creates the resource with the client's id is an update), delete `d`, search `s`. A conditional create,
update or delete also searches, so it needs `s` as well, and so does a conditional reference
(`Patient?identifier=…`) on the type it searches; a Patient pushed with its site's MRN is a conditional
create (it answers the stored Patient when the MRN is known).
"""

from collections.abc import Callable
from typing import Any

from ecrf.auth import scopes
from ecrf.auth.actor import Actor
from ecrf.auth.policy import can
from ecrf.common.outcome import issue
from ecrf.fhir.references import reference_holders
from ecrf.search.types import WRITABLE_TYPES
from ecrf.common.errors import Forbidden

PERMISSION_OF = {"create": "c", "read": "r", "vread": "r", "history": "r", "update": "u", "delete": "d", "search": "s"}


def refusal(actor: Actor, action: str, resource_type: str, permissions: str, what: str) -> str | None:
    """Why `actor` may not do `what` (needing `permissions` on `resource_type`), or None when it may."""
    if can(actor, action, resource_type=resource_type, permissions=permissions):
        return None
    if not can(actor, action):
        return f"{what}: role {actor.role} may not {action}"
    lacking = scopes.missing(actor.scopes, resource_type, permissions)
    return (
        f"{what} needs the SMART scope system/{resource_type}.{lacking} (or system/*.{lacking}), "
        f"which this token's scopes do not grant"
    )


def require(actor: Actor, action: str, resource_type: str, interaction: str) -> None:
    """Raise 403 unless the role and the token's scopes allow `interaction` on `resource_type`."""
    reason = refusal(actor, action, resource_type, PERMISSION_OF[interaction], f"{interaction} {resource_type}")
    if reason is not None:
        raise Forbidden(reason, location=resource_type)


def refusals(actor: Actor, entry: Any, conditional_create: Callable[[Any], bool]) -> list[dict[str, Any]]:
    """The 403 issues of one entry (REST call or Bundle entry), one per resource type it is refused on.
    `conditional_create(entry)` tells whether a POST searches first (asked only of a scoped token)."""
    action = "fhir.read" if entry.method == "GET" else "fhir.write"
    where = entry.location.removesuffix(".request")
    what = f"{entry.method} {entry.resource_type}"
    if where.startswith("Bundle.entry["):
        what = f"{where} ({what})"
    if not scopes.restricts(actor.scopes):  # the role decides alone: no need to look into the entry
        reason = refusal(actor, action, entry.resource_type, "", what)
        return [] if reason is None else [issue(reason, code="forbidden", location=entry.location)]
    needs: dict[str, str] = {}
    for resource_type, letters in _needs(entry, entry.method == "POST" and conditional_create(entry)):
        needs[resource_type] = needs.get(resource_type, "") + letters
    problems = []
    for resource_type, letters in needs.items():
        searching = (
            "" if resource_type == entry.resource_type else f", searching {resource_type} for a conditional reference,"
        )
        reason = refusal(actor, action, resource_type, letters, what + searching)
        if reason is not None:
            problems.append(issue(reason, code="forbidden", location=entry.location))
    return problems


def _needs(entry: Any, conditional_create: bool) -> list[tuple[str, str]]:
    conditional = entry.criteria is not None
    if entry.method == "GET":
        return [(entry.resource_type, "s" if entry.resource_id is None else "r")]
    if entry.method == "DELETE":
        return [(entry.resource_type, "ds" if conditional else "d")]
    if entry.method == "POST":
        needs = [(entry.resource_type, "cs" if conditional_create else "c")]
    else:
        needs = [(entry.resource_type, "us" if conditional else "u")]
    for holder in reference_holders(entry.content() or {}):
        reference = holder["reference"]
        searched = reference.partition("?")[0]
        if "?" in reference and not reference.startswith(("http:", "https:")) and searched in WRITABLE_TYPES:
            needs.append((searched, "s"))
    return needs
