"""GET /fhir/metadata: a CapabilityStatement built from what this door actually implements."""
from typing import Any

from ecrf.fhir.validation import WRITABLE_TYPES
from ecrf.store.indexing import SEARCH_PARAMS

INTERACTIONS = ("read", "vread", "update", "delete", "history-instance", "create", "search-type")
DOCS = {"token": "system|code, |code or code; comma means OR", "reference": "Type/id or id",
        "date": "prefixes eq ne gt ge lt le sa eb ap; precision year to instant"}


def capability_statement(base_url: str, study: Any, settings: Any) -> dict[str, Any]:
    resources = [_writable(resource_type) for resource_type in WRITABLE_TYPES]
    resources.append({"type": "ResearchStudy", "interaction": [{"code": "read"}],
                      "documentation": f"Read-only: ResearchStudy/{study.id}, generated from the study definition."})
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-01-01",
        "kind": "instance",
        "software": {"name": "ecrf", "version": "0.1.0"},
        "implementation": {"description": f"eCRF backend FHIR door for {study.id}", "url": base_url},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [{
            "mode": "server",
            "security": {
                "cors": False,
                "service": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                         "code": "OAuth"}]}],
                "description": "Bearer JWT; ehr clients see and write only their sites' data.",
            },
            "resource": resources,
            "interaction": [
                {"code": "transaction", "documentation": "All or nothing, in FHIR order (DELETE, POST, PUT, GET); "
                                                         "urn:uuid fullUrls resolved; ifNoneExist honoured."},
                {"code": "batch", "documentation": "Each entry on its own; a failing entry gets an OperationOutcome."},
            ],
            "operation": [],
            "documentation": f"Bodies up to {settings.max_body_bytes} bytes and Bundles up to "
                             f"{settings.max_bundle_entries} entries; _count up to {settings.page_size_max}.",
        }],
    }


def _writable(resource_type: str) -> dict[str, Any]:
    params = [{"name": name, "type": kind, "documentation": DOCS[kind]}
              for name, (kind, _) in SEARCH_PARAMS.get(resource_type, {}).items()]
    params += [{"name": "_id", "type": "token"}, {"name": "_lastUpdated", "type": "date", "documentation": DOCS["date"]}]
    dates = [name for name, (kind, _) in SEARCH_PARAMS.get(resource_type, {}).items() if kind == "date"]
    return {
        "type": resource_type,
        "interaction": [{"code": code} for code in INTERACTIONS],
        "versioning": "versioned-update",
        "readHistory": True,
        "updateCreate": True,
        "conditionalCreate": True,
        "conditionalUpdate": True,
        "conditionalDelete": "single",
        "searchParam": params,
        "documentation": "_sort by " + ", ".join(["_lastUpdated", "_id", *dates]) + " (prefix - for descending); "
                         "_count and _offset page, with next links. Unknown parameters are refused (400).",
    }

