"""SMART on FHIR resource scopes from a token's `scope` claim: a narrowing of the role, never a widening.

Granting scopes (case-sensitive, as SMART writes them):
- v2 `system/<Type|*>.<permissions>`: a non-empty subset of `c r u d s`, in that order (`cruds`, `rs`, `cu`);
- v1 `system/<Type|*>.read|write|*`, read as v2: `read` -> `rs`, `write` -> `cud`, `*` -> `cruds`.

Everything else grants nothing here, on purpose:
- a scope with a query suffix (`system/Observation.rs?category=laboratory`): the constraint is not
  enforced by this server, and honouring the scope without it would widen it;
- `patient/` and `user/` scopes: this server has no SMART app launch (no patient context, no user-level
  delegation), so a client presenting them gains nothing;
- garbled resource scopes (`system/Observation.xyz`, permissions out of order, not a type name).

A token carries SMART resource scopes when any of its scope strings starts with `system/`, `patient/` or
`user/` (in any letter case, so a mis-cased scope meant to restrict still restricts). Then every FHIR
interaction needs a granting scope as well as the role's permission. A token without any decides by its
role alone; other scope strings (`openid`, `fhirUser`, `offline_access`, `launch/patient`, an identity
provider's own) are not resource scopes and change nothing.
"""

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

PERMISSIONS = "cruds"
RESOURCE_CONTEXTS = ("system/", "patient/", "user/")
V1_PERMISSIONS = {"read": "rs", "write": "cud", "*": "cruds"}
_SCOPE = re.compile(r"system/(?P<type>\*|[A-Z][A-Za-z]{0,63})\.(?P<permissions>[a-z]+|\*)")
_V2 = re.compile(r"c?r?u?d?s?")


@dataclass(frozen=True)
class Grant:
    resource_type: str  # a FHIR type name, or "*" for every type
    permissions: str  # letters of "cruds", in that order

    def covers(self, resource_type: str) -> bool:
        return self.resource_type in ("*", resource_type)


def is_resource_scope(scope: str) -> bool:
    return scope.lower().startswith(RESOURCE_CONTEXTS)


@lru_cache(maxsize=1024)
def parse(scope: str) -> Grant | None:
    """What one scope string grants on this server, or None when it grants nothing."""
    found = _SCOPE.fullmatch(scope)
    if found is None:
        return None
    permissions = found["permissions"]
    permissions = V1_PERMISSIONS.get(permissions, permissions)
    if not permissions or not _V2.fullmatch(permissions):
        return None
    return Grant(found["type"], permissions)


def restricts(scopes: Iterable[str]) -> bool:
    """True when the token carries SMART resource scopes, so they must grant every FHIR interaction."""
    return any(is_resource_scope(scope) for scope in scopes)


def granted(scopes: Iterable[str], resource_type: str) -> str:
    """The permissions the scopes grant on one resource type, in `cruds` order."""
    letters = {
        letter
        for scope in scopes
        if (grant := parse(scope)) and grant.covers(resource_type)
        for letter in grant.permissions
    }
    return "".join(letter for letter in PERMISSIONS if letter in letters)


def missing(scopes: Iterable[str], resource_type: str, permissions: str) -> str:
    """Which of `permissions` the scopes do not grant on `resource_type` ("" when allowed, or unrestricted)."""
    scopes = tuple(scopes)
    if not restricts(scopes):
        return ""
    have = granted(scopes, resource_type)
    return "".join(letter for letter in PERMISSIONS if letter in permissions and letter not in have)


def allows(scopes: Iterable[str], resource_type: str, permissions: str) -> bool:
    return not missing(scopes, resource_type, permissions)
