"""Which scopes a token request is granted: what it asks for, within what its client is registered for.

Requested scopes are read in SMART v1 (`system/Observation.read`, `.write`, `.*`) and v2 (`system/Observation.rs`,
`.cruds`) syntax and granted in v2 syntax, permission by permission: `system/*.read` asked by a client
registered for `system/Observation.rs system/Patient.rs` is granted those two. Scopes that grant nothing
here (malformed, unknown resource types, `patient/`, `user/`, `?` constraints, `launch`, ...) are dropped;
nothing granted is `invalid_scope`.
"""

from functools import lru_cache

from ecrf.auth import scopes as smart_scopes

PERMISSIONS = smart_scopes.PERMISSIONS


@lru_cache(maxsize=512)
def is_resource_type(name: str) -> bool:
    if name == "*":
        return True
    try:
        from fhir.resources.R4B import get_fhir_model_class
        from fhir.resources.R4B.resource import Resource

        return issubclass(get_fhir_model_class(name), Resource)
    except (ValueError, KeyError, ImportError):
        return False


def parse_all(scope_text: str) -> list[smart_scopes.Grant]:
    grants = []
    for scope in scope_text.split():
        grant = smart_scopes.parse(scope)
        if grant is not None and is_resource_type(grant.resource_type):
            grants.append(grant)
    return grants


def grant(requested: str, registered: str) -> list[str]:
    """The v2 scopes granted, in a stable order ('*' first, then types by name)."""
    allowed = parse_all(registered)
    result: dict[str, set[str]] = {}
    for asked in parse_all(requested):
        for have in allowed:
            if asked.resource_type == "*":
                target = have.resource_type
            elif have.resource_type in ("*", asked.resource_type):
                target = asked.resource_type
            else:
                continue
            letters = set(asked.permissions) & set(have.permissions)
            if letters:
                result.setdefault(target, set()).update(letters)
    if "*" in result:  # a type's grant that the wildcard already covers is not repeated
        for name in [name for name in result if name != "*"]:
            result[name] -= result["*"]
            if not result[name]:
                del result[name]
    order = sorted(result, key=lambda name: (name != "*", name))
    asked_v1 = {scope for scope in requested.split() if scope.rsplit(".", 1)[-1] in smart_scopes.V1_PERMISSIONS}
    granted = []
    for name in order:
        letters = "".join(p for p in PERMISSIONS if p in result[name])
        # asked in v1 syntax and granted exactly its meaning: answered in the same syntax (clients compare them)
        v1 = next(
            (
                f"system/{name}.{action}"
                for action, meaning in smart_scopes.V1_PERMISSIONS.items()
                if meaning == letters and f"system/{name}.{action}" in asked_v1
            ),
            None,
        )
        granted.append(v1 or f"system/{name}.{letters}")
    return granted


def valid_registration(scope_text: str) -> list[str]:
    """Registered scopes that would grant nothing (to refuse a registration naming them)."""
    return [
        scope
        for scope in scope_text.split()
        if (parsed := smart_scopes.parse(scope)) is None or not is_resource_type(parsed.resource_type)
    ]
