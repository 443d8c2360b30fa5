"""Structure validation with fhir.resources (R4B models), once per resource, as located issues."""
import re
from functools import cache
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from ecrf.errors import issue
from ecrf.fhir.outcome import validation_issues
from ecrf.store.indexing import out_of_range

WRITABLE_TYPES = ("Patient", "ResearchSubject", "Observation", "Condition", "Procedure", "Immunization",
                  "MedicationStatement", "Specimen")
READ_ONLY_TYPES = ("ResearchStudy",)
ID_PATTERN = re.compile(r"^(?!\.+$)[A-Za-z0-9\-.]{1,64}$")  # FHIR's id, but "." and ".." would be path segments


@cache
def model_of(resource_type: str):
    return get_fhir_model_class(resource_type)


def unsupported(resource_type: Any, location: str) -> dict[str, Any]:
    shown = resource_type if isinstance(resource_type, str) else "(no resourceType)"
    return issue(f"resource type {shown} is not supported here; supported: {', '.join(WRITABLE_TYPES)}",
                 code="not-supported", location=location)


def prepare(resource: dict[str, Any]) -> None:
    """Defaults the door fills in before validation."""
    if resource.get("resourceType") == "ResearchSubject" and "status" not in resource:
        resource["status"] = "candidate"


def structure_issues(resource: Any, location: str) -> list[dict[str, Any]]:
    """Issues of a resource body: not an object, unsupported type, or invalid against its R4B model."""
    if not isinstance(resource, dict):
        return [issue("the resource must be a JSON object", code="structure", location=location)]
    resource_type = resource.get("resourceType")
    if resource_type not in WRITABLE_TYPES:
        return [unsupported(resource_type, location)]
    prepare(resource)
    try:
        model_of(resource_type).model_validate(resource)
    except ValidationError as error:
        return validation_issues(error.errors(include_url=False, include_input=False), location)
    resource_id = resource.get("id")
    if resource_id is not None and not ID_PATTERN.match(str(resource_id)):
        return [issue(f"id {resource_id!r} is not a FHIR id", code="value", location=f"{location}.id")]
    return [issue(problem, code="value", location=f"{location}.{path}") for path, problem in out_of_range(resource)]
