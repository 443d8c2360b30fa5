"""JSON Patch (RFC 6902) of a FHIR resource, with the `jsonpatch` library."""

import copy
from typing import Any

import jsonpatch
import jsonpointer

from ecrf.common.outcome import FhirError


def patched(content: dict[str, Any], operations: list[Any], resource_type: str) -> dict[str, Any]:
    """The resource after the patch; 422 naming the operation when it cannot apply, 400 when it is not a
    patch, and a patch may not change what the resource is (resourceType, id)."""
    for index, operation in enumerate(operations):
        if (
            not isinstance(operation, dict)
            or not isinstance(operation.get("op"), str)
            or not isinstance(operation.get("path"), str)
        ):
            raise FhirError.one(400, f"JSON Patch operation {index} needs an op and a path")
    try:
        result = jsonpatch.JsonPatch(operations).apply(copy.deepcopy(content))
    except jsonpatch.JsonPatchTestFailed as error:
        raise FhirError.one(422, f"JSON Patch test failed: {error}", code="processing") from None
    except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as error:
        raise FhirError.one(422, f"JSON Patch cannot be applied: {error}", code="processing") from None
    if (
        not isinstance(result, dict)
        or result.get("resourceType") != resource_type
        or result.get("id") != content.get("id")
    ):
        raise FhirError.one(422, "a JSON Patch may not change the resourceType or id", code="processing")
    return result
