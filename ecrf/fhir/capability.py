"""GET /fhir/metadata: a CapabilityStatement built from what this door actually implements."""

import re
from typing import Any

from ecrf.search.types import WRITABLE_TYPES
from fhir_mappings.search_parameters import definition
from ecrf.search.engine import QUANTITY_PARAMS, REFERENCE_TARGETS
from ecrf.responses import FHIR_PREFIX
from ecrf.store.indexing import SEARCH_PARAMS

SECURITY_SERVICE = "http://terminology.hl7.org/CodeSystem/restful-security-service"
SECURITY = (
    "Bearer JWT; the token's role decides, and ehr clients see and write only their sites' data. A token may also "
    "carry SMART system scopes, which narrow the role and never widen it: v2 system/<Type|*>.<cruds subset> "
    "(e.g. system/Observation.c, system/*.rs) and v1 system/<Type|*>.read|write|* (read = rs, write = cud). "
    "With any system/, patient/ or user/ scope present, every interaction, every Bundle entry included, needs "
    "a granting scope: create c, read/vread/history r, update u, delete d, search s; conditional create, "
    "update, delete and conditional references also need s. patient/ and user/ scopes, scopes with ?query "
    "constraints and malformed scopes grant nothing. Every response carrying a Patient is recorded in the "
    "access log."
)
INTERACTIONS = (
    "read",
    "vread",
    "update",
    "patch",
    "delete",
    "history-instance",
    "history-type",
    "create",
    "search-type",
)
DOCS = {
    "token": "system|code, |code or code; comma means OR",
    "reference": "Type/id or id",
    "date": "prefixes eq ne gt ge lt le sa eb ap; precision year to instant",
    "string": "starts with, case-insensitive; :exact, :contains; roles that may read identifiers only",
    "quantity": "[prefix]number|http://unitsofmeasure.org|unit, prefixes eq ne gt ge lt le sa eb ap; the "
    "study's lab items in their canonical unit, other accepted units converted exactly",
}
BULK_DATA = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/"
OPERATION_DEFINITIONS = {
    (None, "export"): BULK_DATA + "export",
    ("Group", "export"): BULK_DATA + "group-export",
    ("Patient", "export"): BULK_DATA + "patient-export",
}
LOCAL_OPERATIONS = {("ResearchSubject", "randomize")}  # defined here: OperationDefinition/<Type>-<name>
BULK_DATA_CAPABILITY = "http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data"
OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
TOKEN_PATH = "/auth/token"  # ecrf/smart/router.py: SMART Backend Services, announced in rest.security
OPERATION_NAMES = {("Group", "export"): "group-export", ("Patient", "export"): "patient-export"}
READ_ONLY = re.compile(r"^/fhir/(?P<type>[A-Z][A-Za-z]+)/\{[^}]+\}$")
OPERATION = re.compile(r"^/fhir/(?:(?P<type>[A-Z][A-Za-z]+)/(?:\{[^}]+\}/)?)?\$(?P<name>[a-z][a-z-]*)$")


def capability_statement(base_url: str, study: Any, settings: Any, app: Any = None) -> dict[str, Any]:
    """`app`: the running application, whose routes say which read-only types and operations exist."""
    routes = _get_paths(app) if app is not None else []
    operation_routes = _get_paths(app, "POST") + routes if app is not None else []
    resources = [_writable(resource_type) for resource_type in WRITABLE_TYPES]
    read_only_docs = {
        "ResearchStudy": f"Read-only: ResearchStudy/{study.id}, generated from the study definition.",
        "OperationDefinition": "Read-only: OperationDefinition/ResearchSubject-randomize, this server's own operation.",
        "Questionnaire": "Read-only: each form of the study as an SDC-style Questionnaire, read by its form id ("
        + ", ".join(form.id for form in study.forms)
        + ").",
    }
    read_only = sorted({match["type"] for match in map(READ_ONLY.match, routes) if match} - set(WRITABLE_TYPES)) or [
        "ResearchStudy"
    ]
    for resource_type in read_only:
        resources.append(
            {
                "type": resource_type,
                "interaction": [{"code": "read"}],
                "documentation": read_only_docs.get(resource_type, "Read-only."),
            }
        )
    operations: dict[str | None, list[dict[str, Any]]] = {}
    for match in filter(None, map(OPERATION.match, dict.fromkeys(operation_routes))):
        kind, name = match["type"], match["name"]
        definition = OPERATION_DEFINITIONS.get(
            (kind, name), f"http://hl7.org/fhir/OperationDefinition/{kind or 'Resource'}-{name}"
        )
        if (kind, name) in LOCAL_OPERATIONS:
            definition = f"{base_url}/OperationDefinition/{kind}-{name}"
        # the Bulk Data IG's CapabilityStatement names the type-level exports patient-export and group-export
        shown = OPERATION_NAMES.get((kind, name), name)
        operations.setdefault(kind, []).append({"name": shown, "definition": definition})
    for resource_type in sorted(kind for kind in operations if kind is not None):
        known = next((r for r in resources if r["type"] == resource_type), None)
        if known is None:
            known = {"type": resource_type}
            resources.append(known)
        known["operation"] = operations[resource_type]
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-01-01",
        "kind": "instance",
        "software": {"name": "ecrf", "version": "0.1.0"},
        "implementation": {"description": f"eCRF backend FHIR door for {study.id}", "url": base_url},
        "instantiates": [BULK_DATA_CAPABILITY],
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [
            {
                "mode": "server",
                "security": {
                    "extension": [
                        {
                            "url": OAUTH_URIS,
                            "extension": [
                                {"url": "token", "valueUri": base_url.removesuffix(FHIR_PREFIX) + TOKEN_PATH}
                            ],
                        }
                    ],
                    "cors": False,
                    "service": [
                        {"coding": [{"system": SECURITY_SERVICE, "code": "OAuth"}]},
                        {"coding": [{"system": SECURITY_SERVICE, "code": "SMART-on-FHIR"}]},
                    ],
                    "description": SECURITY,
                },
                "resource": resources,
                "interaction": [
                    {
                        "code": "transaction",
                        "documentation": "All or nothing, in FHIR order (DELETE, POST, PUT, GET); "
                        "urn:uuid fullUrls resolved; ifNoneExist honoured.",
                    },
                    {
                        "code": "batch",
                        "documentation": "Each entry on its own; a failing entry gets an OperationOutcome.",
                    },
                    {
                        "code": "history-system",
                        "documentation": "GET /fhir/_history: every version this client may "
                        "see, newest first; _count, _offset, _since, _at, _type.",
                    },
                ],
                "operation": operations.get(None, []),
                "documentation": f"Bodies up to {settings.max_body_bytes} bytes and Bundles up to "
                f"{settings.max_bundle_entries} entries; _count up to {settings.page_size_max}.",
            }
        ],
    }


def _writable(resource_type: str) -> dict[str, Any]:
    params = [
        {"name": name, "type": kind, "documentation": DOCS[kind]}
        for name, (kind, _) in SEARCH_PARAMS.get(resource_type, {}).items()
    ]
    params += [
        {"name": name, "type": "quantity", "documentation": DOCS["quantity"]}
        for name in QUANTITY_PARAMS.get(resource_type, ())
    ]
    for param in params:  # each names its R4 definition (a parameter this server invented would have none)
        published = definition(resource_type, param["name"])
        if published is not None:
            param["definition"] = published["url"]
    params += [
        {"name": "_id", "type": "token"},
        {"name": "_lastUpdated", "type": "date", "documentation": DOCS["date"]},
    ]
    dates = [name for name, (kind, _) in SEARCH_PARAMS.get(resource_type, {}).items() if kind == "date"]
    references = [name for name, (kind, _) in SEARCH_PARAMS.get(resource_type, {}).items() if kind == "reference"]
    rev_includes = [
        f"{source}:{name}"
        for source in WRITABLE_TYPES
        for name, (kind, _) in SEARCH_PARAMS.get(source, {}).items()
        if kind == "reference" and resource_type in REFERENCE_TARGETS.get(name, ())
    ]
    chains = [
        f"{name}.{chained}"
        for name in references
        for target in REFERENCE_TARGETS.get(name, ())
        for chained, (kind, _) in SEARCH_PARAMS.get(target, {}).items()
        if kind != "reference"
    ]
    return {
        "type": resource_type,
        "interaction": [{"code": code} for code in INTERACTIONS],
        "versioning": "versioned-update",
        "readHistory": True,
        "updateCreate": True,
        "conditionalCreate": True,
        "conditionalUpdate": True,
        "conditionalDelete": "single",
        "searchInclude": [f"{resource_type}:{name}" for name in references],
        "searchRevInclude": rev_includes,
        "searchParam": params,
        "documentation": "_sort by " + ", ".join(["_lastUpdated", "_id", *dates]) + " (prefix - for descending); "
        "_count and _offset page, with next links; _count=0 and _summary=count answer the total "
        "only; _total=none|estimate|accurate. POST [type]/_search takes the parameters form-encoded "
        "(body and URL). Unknown or unsupported parameters and modifiers are ignored and named in "
        "an OperationOutcome entry (search.mode outcome), and left out of the self link; with "
        "Prefer: handling=strict they are refused (400). PATCH takes a JSON Patch "
        "(application/json-patch+json), also conditional (Type?criteria, one match), with If-Match; "
        "_history is paged (_count, _offset, _since, _at); Prefer: return=minimal|representation|"
        "OperationOutcome on create, update and patch. _include and _revinclude (also :iterate, one "
        "level more) on the reference parameters; _elements; modifiers :missing (every "
        "parameter), :not (token), :Type (reference); chained parameters one level: "
        + (", ".join(chains) or "none")
        + ".",
    }


def _get_paths(app: Any, method: str = "GET") -> list[str]:
    """Paths of the app's GET (or `method`) routes, those of included routers too."""
    paths = []
    for route in app.routes:
        if hasattr(route, "effective_route_contexts"):
            paths += [
                context.path
                for context in route.effective_route_contexts()
                if method in (getattr(context.original_route, "methods", None) or ())
            ]
        elif method in (getattr(route, "methods", None) or ()):
            paths.append(route.path)
    return paths
