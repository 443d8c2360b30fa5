"""References inside resources: found anywhere (nested included), rewritten from urn:uuid to Type/id."""

from collections.abc import Iterator
from typing import Any


def reference_holders(node: Any) -> Iterator[dict[str, Any]]:
    """Every Reference object (a dict with a string `reference`) in the resource, at any depth."""
    stack = [node]
    pop, push = stack.pop, stack.append
    while stack:
        current = pop()
        if type(current) is dict:
            if type(current.get("reference")) is str:
                yield current
            for value in current.values():
                if type(value) is dict or type(value) is list:
                    push(value)
        else:
            for value in current:
                if type(value) is dict or type(value) is list:
                    push(value)


def path_to(node: Any, target: dict[str, Any], path: str) -> str | None:
    """The FHIRPath of `target` inside `node` (only computed to report a problem)."""
    if node is target:
        return path
    if isinstance(node, dict):
        children = ((f"{path}.{name}", value) for name, value in node.items())
    elif isinstance(node, list):
        children = ((f"{path}[{i}]", value) for i, value in enumerate(node))
    else:
        return None
    for child_path, child in children:
        found = path_to(child, target, child_path)
        if found:
            return found
    return None


def local_target(reference: str, base_url: str) -> str | None:
    """'Type/id' for a relative or own-server absolute literal reference (version dropped), else None."""
    if reference.startswith(base_url + "/"):
        reference = reference[len(base_url) + 1 :]
    if reference.startswith(("urn:", "#", "http://", "https://")) or "?" in reference:
        return None
    parts = reference.split("/")
    if len(parts) == 4 and parts[2] == "_history":
        parts = parts[:2]
    if len(parts) != 2 or not parts[0][:1].isupper() or not parts[1]:
        return None
    return "/".join(parts)
