"""Conditional create/update: one resource per criteria, guaranteed by the conditional_key unique key.

Two identical requests racing both try to insert the same (type, criteria) key; the loser's insert
fails, its whole unit of work is retried, and on the retry it finds the winner's resource.
"""
import hashlib
from urllib.parse import parse_qsl

from ecrf.fhir import search
from ecrf.fhir.outcome import FhirError
from ecrf.store.service import ClinicalStore

MAX_KEY = 512


def normalised(criteria: str) -> str:
    """Criteria with parameters sorted, so the same search written differently gives one key."""
    pairs = sorted(parse_qsl(criteria.lstrip("?"), keep_blank_values=True))
    return "&".join(f"{name}={value}" for name, value in pairs)


def key(store: ClinicalStore, criteria: str) -> str:
    """The key is per site scope: another site's identical criteria never meet this one's resource."""
    scope = ",".join(sorted(store.actor.sites)) if store.actor.sites is not None else "*"
    text = f"{scope} {normalised(criteria)}"
    if len(text) > MAX_KEY:
        text = f"{scope} sha256:{hashlib.sha256(text.encode()).hexdigest()}"
    return text


def find(store: ClinicalStore, resource_type: str, criteria: str, *, location: str | None) -> str | None:
    """The one resource the criteria name, None when there is none; 412 when several match."""
    criteria_key = key(store, criteria)
    owner = store.conditional_owner(resource_type, criteria_key)
    if owner is not None:
        head = store.head(resource_type, owner)
        if head is not None and not head.deleted:
            return owner
        store.release_conditional(resource_type, criteria_key)
    matches = search.matching_ids(store, resource_type, criteria)
    if len(matches) > 1:
        raise FhirError.one(412, f"{resource_type}?{criteria} matches more than one resource",
                            code="multiple-matches", location=location)
    return matches[0] if matches else None


def claim(store: ClinicalStore, resource_type: str, criteria: str, resource_id: str) -> None:
    """Reserve the criteria for a new resource; raises IntegrityError/Conflict when a twin got there first."""
    store.claim_conditional(resource_type, key(store, criteria), resource_id)
