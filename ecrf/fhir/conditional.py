"""Conditional create/update: one resource per criteria, guaranteed by the conditional_key unique key.

Two identical requests racing both try to insert the same (type, criteria) key; the loser's insert
fails, its whole unit of work is retried, and on the retry it finds the winner's resource.
"""

import hashlib
from typing import Any
from urllib.parse import parse_qsl

from ecrf.search import engine as search
from ecrf.common.outcome import FhirError
from ecrf.store.service import ClinicalStore

MAX_KEY = 512


def normalised(criteria: str) -> str:
    """Criteria with parameters sorted, so the same search written differently gives one key."""
    pairs = sorted(parse_qsl(criteria.lstrip("?"), keep_blank_values=True))
    if any(search.CONTROL_CHARACTER.search(name + value) for name, value in pairs):
        raise FhirError.one(400, "the conditional criteria contain a control character")
    return "&".join(f"{name}={value}" for name, value in pairs)


def key(site: str | None, criteria: str) -> str:
    """The key of criteria at one site (the site the resource is at; `*` for one of no site): another site's
    identical criteria never meet this one's resource, and the client's other sites play no part."""
    scope = site or "*"
    text = f"{scope} {normalised(criteria)}"
    if len(text) > MAX_KEY:
        text = f"{scope} sha256:{hashlib.sha256(text.encode()).hexdigest()}"
    return text


def keys(store: ClinicalStore, criteria: str) -> list[str]:
    """The keys a client looks its criteria up by: one per site it may see (a study-wide client: `*` only)."""
    sites = sorted(store.actor.sites) if store.actor.sites is not None else [None]
    return [key(site, criteria) for site in sites]


def lock_text(resource_type: str, criteria: str) -> str:
    """What concurrent conditional creates are serialised on: the criteria normalised, with every token's
    system left out (`identifier=urn:rt|V` and `identifier=V` may name the same resource: a token without a
    system matches that code in any system), and without the client's site scope (tokens for [S01] and
    [S01, S02] may both see it). Coarser than the key on purpose: it only makes twins wait for each other."""
    pairs = []
    for name, value in parse_qsl(normalised(criteria), keep_blank_values=True):
        alternatives = [
            part.rsplit("|", 1)[1] if "|" in part and not part.endswith("|") else part for part in value.split(",")
        ]
        pairs.append((name, ",".join(sorted(alternatives))))
    return f"{resource_type}?" + "&".join(f"{name}={value}" for name, value in sorted(pairs))


def find(
    store: ClinicalStore, resource_type: str, criteria: str, *, location: str | None, creating: bool = False
) -> str | None:
    """The one resource the criteria name among those the client sees, None when there is none; 412 when
    several match. When a miss would create (`creating`), a match the client may not see (an ehr client sees
    only its own pushes) is a 409: that resource is neither shown to it nor made a second time.

    A create first waits for any concurrent create of equivalent criteria (`lock_text`; a PostgreSQL
    advisory lock held to the end of the transaction), so it then sees the twin's resource and matches it
    instead of making a second one, however each client wrote the criteria and whatever its other sites."""
    if creating:
        store.serialise(lock_text(resource_type, criteria))
    site_wide = store.site_view()
    for criteria_key in keys(store, criteria):
        owner = store.conditional_owner(resource_type, criteria_key)
        if owner is None:
            continue
        head = site_wide.head(resource_type, owner)
        if head is None or head.deleted:
            store.release_conditional(resource_type, criteria_key, owner)
        elif store.sees(head):
            return owner
        elif creating:
            raise _unseen_match(resource_type, criteria, location)
    matches = search.matching_ids(store, resource_type, criteria)
    if len(matches) > 1:
        raise FhirError.one(
            412,
            f"{resource_type}?{criteria} matches more than one resource",
            code="multiple-matches",
            location=location,
        )
    if (
        not matches
        and creating
        and site_wide is not store
        and search.matching_ids(site_wide, resource_type, criteria, 1)
    ):
        raise _unseen_match(resource_type, criteria, location)
    return matches[0] if matches else None


def _unseen_match(resource_type: str, criteria: str, location: str | None) -> FhirError:
    return FhirError.one(
        409,
        f"{resource_type}?{criteria} matches a resource of this site that this client did not "
        "push: it is not shown to this client, and not created a second time",
        code="duplicate",
        location=location,
    )


def claim(store: ClinicalStore, resource_type: str, criteria: str, resource_id: str, site: str | None) -> None:
    """Reserve the criteria for a new resource at `site`; raises IntegrityError/Conflict when a twin got there
    first."""
    store.claim_conditional(resource_type, key(site, criteria), resource_id)


KEPT = frozenset({"resourceType", "id", "meta", "identifier"})


def merged(existing: dict[str, Any], pushed: dict[str, Any]) -> dict[str, Any]:
    """A conditional update that merges: the pushed elements win; id, meta and the existing identifiers stay
    (pushed identifiers not yet there are added)."""
    result = {**existing, **{name: value for name, value in pushed.items() if name not in KEPT}}
    identifiers = list(existing.get("identifier") or [])
    seen = {(i.get("system"), i.get("value")) for i in identifiers if isinstance(i, dict)}
    for identifier in pushed.get("identifier") or []:
        if isinstance(identifier, dict) and (identifier.get("system"), identifier.get("value")) not in seen:
            seen.add((identifier.get("system"), identifier.get("value")))
            identifiers.append(identifier)
    if identifiers:
        result["identifier"] = identifiers
    return result


def same_content(one: dict[str, Any], other: dict[str, Any]) -> bool:
    """Equal but for meta (version and instant), so an unchanged push makes no new version."""
    return {k: v for k, v in one.items() if k != "meta"} == {k: v for k, v in other.items() if k != "meta"}
