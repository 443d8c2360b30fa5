"""Turning a Bundle entry's request (or a REST call) into an Entry, with every problem located."""

from typing import Any

from ecrf.common.etags import VERSION_ID, version_of_etag
from ecrf.common.outcome import issue
from ecrf.fhir.interactions import Entry
from ecrf.fhir.validation import (
    READ_ONLY_TYPES,
    WRITABLE_TYPES,
    ID_PATTERN,
    is_resource_type,
    structure_issues,
    unsupported,
)

ENTRY_ELEMENTS = frozenset(
    {"id", "extension", "modifierExtension", "link", "fullUrl", "resource", "search", "request", "response"}
)
REQUEST_ELEMENTS = frozenset(
    {
        "id",
        "extension",
        "modifierExtension",
        "method",
        "url",
        "ifNoneMatch",
        "ifModifiedSince",
        "ifMatch",
        "ifNoneExist",
    }
)
METHODS = ("GET", "POST", "PUT", "DELETE")


def bundle_entry(raw: Any, index: int, base_url: str) -> tuple[Entry | None, list[dict[str, Any]]]:
    """The Entry of Bundle.entry[index], or the issues that make it unusable."""
    where = f"Bundle.entry[{index}]"
    if not isinstance(raw, dict):
        return None, [issue("an entry must be a JSON object", code="structure", location=where)]
    problems = [
        issue(f"unknown element {name!r}", code="structure", location=f"{where}.{name}")
        for name in raw
        if name not in ENTRY_ELEMENTS
    ]
    request = raw.get("request")
    if not isinstance(request, dict):
        return None, problems + [
            issue(
                "a transaction or batch entry needs a request (method and url)",
                code="required",
                location=f"{where}.request",
            )
        ]
    problems += [
        issue(f"unknown element {name!r}", code="structure", location=f"{where}.request.{name}")
        for name in request
        if name not in REQUEST_ELEMENTS
    ]
    method = request.get("method")
    url = request.get("url")
    if method not in METHODS:
        code = "not-supported" if method in ("PATCH", "HEAD") else "value"
        problems.append(
            issue(
                f"request.method {method!r} is not supported (use {', '.join(METHODS)})",
                code=code,
                location=f"{where}.request.method",
            )
        )
    if not isinstance(url, str) or not url:
        problems.append(issue("request.url is required", code="required", location=f"{where}.request.url"))
    if problems:
        return None, problems
    full_url = raw.get("fullUrl")
    if full_url is not None and not isinstance(full_url, str):
        return None, [issue("fullUrl must be a string", code="value", location=f"{where}.fullUrl")]
    if_match = None
    if isinstance(request.get("ifMatch"), str):
        if_match = version_of_etag(request["ifMatch"])
        if if_match is None:
            return None, [
                issue(
                    f'ifMatch {request["ifMatch"]!r} does not name a version (W/"n")',
                    code="value",
                    location=f"{where}.request.ifMatch",
                )
            ]
    if_none_exist = request.get("ifNoneExist")
    if if_none_exist is not None and not isinstance(if_none_exist, str):
        return None, [issue("ifNoneExist must be a string", code="value", location=f"{where}.request.ifNoneExist")]
    return request_entry(
        index,
        method,
        url,
        raw.get("resource"),
        base_url,
        location=f"{where}.request",
        resource_location=f"{where}.resource",
        full_url=full_url,
        if_none_exist=if_none_exist or None,
        if_match=if_match,
        others=True,
    )


def request_entry(
    index: int,
    method: str,
    url: str,
    resource: Any,
    base_url: str,
    *,
    location: str,
    resource_location: str,
    full_url: str | None = None,
    if_none_exist: str | None = None,
    if_match: int | None = None,
    others: bool = False,
) -> tuple[Entry | None, list[dict[str, Any]]]:
    """An Entry for `METHOD url` with its resource; `url` is relative to the FHIR base (or absolute on it).
    With `others` (a Bundle entry), a create or update of any other R4 type is validated and held back
    (`retained` False: ecrf/fhir/retention.py)."""
    if url.startswith(base_url + "/"):
        url = url[len(base_url) + 1 :]
    path, _, query = url.lstrip("/").partition("?")
    parts = path.split("/")
    resource_type = parts[0]
    url_location = f"{location}.url" if location.endswith(".request") else location
    readable = resource_type in WRITABLE_TYPES or (method == "GET" and resource_type in READ_ONLY_TYPES)
    held_back = not readable and others and method in ("POST", "PUT") and is_resource_type(resource_type)
    if not readable and not held_back:
        return None, [unsupported(resource_type, resource_location if resource is not None else url_location)]
    entry = Entry(
        index=index,
        method=method,
        resource_type=resource_type,
        location=location,
        resource_location=resource_location,
        full_url=full_url,
        if_none_exist=if_none_exist,
        if_match=if_match,
        retained=not held_back,
    )
    shape = _url_shape(method, parts, query)
    if shape is not None:
        return None, [issue(f"{method} {url!r}: {shape}", code="value", location=url_location)]
    if len(parts) >= 2:
        entry.resource_id = parts[1]
        if not ID_PATTERN.match(entry.resource_id):
            return None, [issue(f"{entry.resource_id!r} is not a FHIR id", code="value", location=url_location)]
    if len(parts) == 4:
        entry.version_id = int(parts[3])
    if query or method == "GET":
        entry.criteria = query
    if method in ("POST", "PUT"):
        problems = structure_issues(resource, resource_location, kept_only=not held_back)
        if problems:
            return None, problems
        if resource["resourceType"] != resource_type:
            return None, [
                issue(
                    f"the resource is a {resource['resourceType']} but the url names {resource_type}",
                    code="value",
                    location=f"{resource_location}.resourceType",
                )
            ]
        if method == "PUT" and entry.resource_id and resource.get("id") not in (None, entry.resource_id):
            return None, [
                issue(
                    f"resource id {resource.get('id')!r} differs from the url's {entry.resource_id!r}",
                    code="value",
                    location=f"{resource_location}.id",
                )
            ]
        entry.resource = resource
    elif resource is not None:
        return None, [issue(f"a {method} entry carries no resource", code="value", location=resource_location)]
    return entry, []


def _url_shape(method: str, parts: list[str], query: str) -> str | None:
    """Why the url does not fit the method, or None."""
    if method == "POST":
        return None if len(parts) == 1 and not query else "a create names only the resource type"
    if method in ("PUT", "DELETE"):
        if len(parts) == 2 and not query:
            return None
        if len(parts) == 1 and query:
            return None
        return "expected Type/id or Type?criteria"
    if len(parts) in (1, 2) or (len(parts) == 4 and parts[2] == "_history" and VERSION_ID.fullmatch(parts[3])):
        return None if not (query and len(parts) > 1) else "a read takes no parameters"
    return "expected Type, Type?criteria, Type/id or Type/id/_history/vid"
