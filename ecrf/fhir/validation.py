"""Structure validation with fhir.resources (R4B models), once per resource, as located issues."""

import re
from functools import cache
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.resource import Resource
from pydantic import ValidationError

from ecrf.common.outcome import issue, validation_issues
from ecrf.fhir.bindings import binding_issues
from ecrf.store.indexing import out_of_range
from ecrf.search.types import WRITABLE_TYPES


READ_ONLY_TYPES = ("ResearchStudy",)
ID_PATTERN = re.compile(r"^(?!\.+$)[A-Za-z0-9\-.]{1,64}$")  # FHIR's id, but "." and ".." would be path segments


@cache
def model_of(resource_type: str):
    return get_fhir_model_class(resource_type)


def is_resource_type(name: Any) -> bool:
    """An R4 resource type (fhir.resources R4B knows it and it is a resource, not a datatype)."""
    if not isinstance(name, str) or not name[:1].isupper():
        return False
    try:
        model = model_of(name)
    except (KeyError, ValueError, AttributeError, ImportError):
        return False
    return issubclass(model, Resource) and name != "Bundle"  # a Bundle inside a Bundle is not taken


def unsupported(resource_type: Any, location: str) -> dict[str, Any]:
    shown = resource_type if isinstance(resource_type, str) else "(no resourceType)"
    return issue(
        f"resource type {shown} is not supported here; supported: {', '.join(WRITABLE_TYPES)}",
        code="not-supported",
        location=location,
    )


def prepare(resource: dict[str, Any]) -> None:
    """Defaults the door fills in before validation."""
    if resource.get("resourceType") == "ResearchSubject" and "status" not in resource:
        resource["status"] = "candidate"


def structure_issues(resource: Any, location: str, *, kept_only: bool = True) -> list[dict[str, Any]]:
    """Issues of a resource body: not an object, unsupported type (`kept_only`), invalid against its R4B
    model, or (a kept type) a code outside a required binding."""
    if not isinstance(resource, dict):
        return [issue("the resource must be a JSON object", code="structure", location=location)]
    resource_type = resource.get("resourceType")
    kept = resource_type in WRITABLE_TYPES
    if not kept and (kept_only or not is_resource_type(resource_type)):
        return [unsupported(resource_type, location)]
    prepare(resource)
    try:
        model_of(resource_type).model_validate(resource)
    except ValidationError as error:
        return validation_issues(error.errors(include_url=False, include_input=False), location)
    if kept:
        problems = binding_issues(resource, location)
        if problems:
            return problems
    resource_id = resource.get("id")
    if resource_id is not None and not ID_PATTERN.match(str(resource_id)):
        return [issue(f"id {resource_id!r} is not a FHIR id", code="value", location=f"{location}.id")]
    return [issue(problem, code="value", location=f"{location}.{path}") for path, problem in out_of_range(resource)]
