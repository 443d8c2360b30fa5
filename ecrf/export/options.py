"""The Bulk Data kick-off parameters beyond _type/_since: read from the query string (GET) or a Parameters
body (POST), checked, and kept with the job as JSON (`export_job.options`).

- `_typeFilter` (`Type?search`): any search this server supports on that type (ecrf/search/engine.py), several
  for one type are OR-ed. De-identified exports accept only token parameters other than `identifier`
  (codes, statuses, categories): a filter on dates, ids, references or identifiers would let the caller probe
  the identified data through what comes back;
- `_elements` (`element` or `Type.element`): top-level elements kept (plus `resourceType`, `id`, `meta`),
  the resource tagged SUBSETTED;
- `patient` (Patient and Group level): only these patients' data; the references are the ids the caller sees
  (pseudonyms in a de-identified export); an id that is no Patient of the study exports nothing and is named
  in the manifest's `error` OperationOutcome;
- `includeAssociatedData`: `LatestProvenanceResources` and `RelevantProvenanceResources` are accepted and
  noted in the manifest's `error` OperationOutcome: this server keeps no Provenance resources, so there are
  none to include; other values are not supported.

Under `Prefer: handling=lenient` what cannot be honoured is left out and reported, one issue each, in an
OperationOutcome file listed in the manifest's `error` array; otherwise it is a 400.
"""

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from ecrf.common.errors import StoreError
from ecrf.search import engine as search
from ecrf.common.outcome import FhirError
from ecrf.store.indexing import SEARCH_PARAMS

TYPE_FILTER = re.compile(r"^(?P<type>[A-Z][A-Za-z]{1,63})\?(?P<query>.+)$")
ELEMENT = re.compile(r"^(?:(?P<type>[A-Z][A-Za-z]{1,63})\.)?(?P<element>[a-z][A-Za-z0-9]{0,63}(?:\[x\])?)$")
KNOWN = (
    "_type",
    "_since",
    "_outputFormat",
    "_typeFilter",
    "_elements",
    "patient",
    "includeAssociatedData",
    "deidentify",
    "organizeOutputBy",
    "allowPartialManifests",
)
NOT_SUPPORTED = ("organizeOutputBy", "allowPartialManifests")
PROVENANCE = ("LatestProvenanceResources", "RelevantProvenanceResources")
MAX_VALUES = 1000


class KickOffError(StoreError):
    """A parameter that cannot be honoured (unless lenient): the kick-off is refused as invalid, with an
    OperationOutcome (ecrf/errors.py)."""


@dataclass
class Options:
    type_filters: dict[str, list[str]] = field(default_factory=dict)
    elements: list[str] = field(default_factory=list)
    patients: list[str] | None = None  # stored patient ids
    warnings: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "type_filters": self.type_filters,
            "elements": self.elements,
            "patients": self.patients,
            "warnings": self.warnings,
        }


def parameters(query_string: str, body: Any) -> dict[str, list[Any]]:
    """name -> values, from the query string and (POST) a FHIR Parameters resource."""
    found: dict[str, list[Any]] = {}
    for name, value in parse_qsl(query_string, keep_blank_values=True):
        found.setdefault(name, []).append(value)
    if body is not None:
        if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
            raise KickOffError("a POST kick-off body must be a FHIR Parameters resource")
        for parameter in body.get("parameter") or []:
            if not isinstance(parameter, dict) or not isinstance(parameter.get("name"), str):
                raise KickOffError("every Parameters.parameter needs a name")
            value = next((v for k, v in parameter.items() if k.startswith("value")), None)
            if isinstance(value, dict):  # valueReference
                value = value.get("reference")
            if value is None or isinstance(value, (dict, list)):
                raise KickOffError(f"parameter {parameter['name']} needs a value[x] (string, reference, ...)")
            found.setdefault(parameter["name"], []).append(
                value if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else str(value)
            )
    if sum(len(values) for values in found.values()) > MAX_VALUES:
        raise KickOffError(f"at most {MAX_VALUES} kick-off parameter values")
    return found


def single(params: dict[str, list[Any]], name: str) -> str | None:
    values = params.get(name)
    if not values:
        return None
    if len(values) > 1 and name != "_type":
        raise KickOffError(f"{name} may be given once")
    return ",".join(values)


def read(
    params: dict[str, list[Any]],
    *,
    level: str,
    types: list[str],
    deidentified: bool,
    lenient: bool,
    patient_ids: dict[str, str],
    settings: Any,
) -> Options:
    """`patient_ids`: the id the caller sees -> the stored id, for the study's patients."""
    options = Options()

    def problem(message: str) -> None:
        if not lenient:
            raise KickOffError(f"{message} (Prefer: handling=lenient leaves out what cannot be honoured)")
        options.warnings.append(f"{message}; ignored (Prefer: handling=lenient)")

    for name in params:
        if name not in KNOWN:
            problem(f"kick-off parameter {name} is not supported")
        elif name in NOT_SUPPORTED:
            problem(f"{name} is not supported by this server")
    for value in _split(params.get("includeAssociatedData", [])):
        if value in PROVENANCE:
            note = (
                f"includeAssociatedData={value}: this server keeps no Provenance resources, so none are "
                "associated with the exported data and none are included"
            )
            if note not in options.warnings:
                options.warnings.append(note)
        else:
            problem(f"includeAssociatedData={value} is not supported (only {', '.join(PROVENANCE)})")
    for text in _split(params.get("_typeFilter", [])):
        matched = TYPE_FILTER.match(text)
        if matched is None:
            problem(f"_typeFilter {text!r} is not of the form Type?search")
            continue
        resource_type, query = matched["type"], matched["query"]
        if resource_type not in types:
            problem(f"_typeFilter {text!r}: {resource_type} is not exported by this request")
            continue
        pairs = search.params_of(query)
        refused = [name for name, _ in pairs if deidentified and not _safe_when_deidentified(resource_type, name)]
        if refused:
            problem(
                f"_typeFilter {text!r}: {', '.join(refused)} may not filter a de-identified export "
                "(token parameters other than identifier only)"
            )
            continue
        try:
            search.parse(resource_type, pairs, default_count=1, max_count=settings.page_size_max)
        except FhirError as error:
            problem(f"_typeFilter {text!r}: {error}")
            continue
        options.type_filters.setdefault(resource_type, []).append(query)
    for text in _split(params.get("_elements", [])):
        matched = ELEMENT.match(text)
        if matched is None or (matched["type"] and matched["type"] not in types):
            problem(f"_elements {text!r} is not an element of an exported type (element or Type.element)")
            continue
        options.elements.append(text)
    if params.get("patient"):
        if level == "system":
            problem("patient is only for Patient- and Group-level exports")
        else:
            wanted = []
            for reference in _split(params["patient"]):
                seen_id = reference.split("/", 1)[1] if reference.startswith("Patient/") else reference
                if "/" in seen_id or not seen_id:
                    problem(f"patient {reference!r} is not a Patient reference (Patient/<id>)")
                elif seen_id not in patient_ids:
                    # as an unknown id in a search: nothing about it is exported, and the manifest says so
                    options.warnings.append(
                        f"patient {reference!r} is not a Patient of the study; nothing exported for it"
                    )
                else:
                    wanted.append(patient_ids[seen_id])
            options.patients = sorted(set(wanted))
    return options


def _split(values: list[str]) -> list[str]:
    """Comma-separated values; a _typeFilter's own commas (OR within a parameter) stay inside its query."""
    out = []
    for value in values:
        if "?" in value:
            parts = re.split(r",(?=[A-Z][A-Za-z]{1,63}\?)", value)
        else:
            parts = value.split(",")
        out += [part.strip() for part in parts if part.strip()]
    return out


def _safe_when_deidentified(resource_type: str, name: str) -> bool:
    base = name.partition(":")[0]
    kind = SEARCH_PARAMS.get(resource_type, {}).get(base, (None,))[0]
    return kind == "token" and base != "identifier" and ":" not in name


def filters(resource_type: str, queries: list[str], settings: Any) -> list[Any]:
    """SQL conditions (on resource_head) of one type's _typeFilter queries, OR-ed; [] when there are none."""
    if not queries:
        return []
    from sqlalchemy import and_, or_, true

    parsed = [
        search.parse(resource_type, search.params_of(query), default_count=1, max_count=settings.page_size_max).filters
        for query in queries
    ]
    return [or_(*(and_(*conditions) if conditions else true() for conditions in parsed))]


def apply_elements(resource: dict[str, Any], elements: list[str]) -> dict[str, Any]:
    resource_type = resource.get("resourceType")
    keep = {
        matched["element"]
        for matched in map(ELEMENT.match, elements)
        if matched and matched["type"] in (None, resource_type)
    }
    if not keep:
        return resource
    keep |= {"resourceType", "id", "meta"}
    result = {
        name: value
        for name, value in resource.items()
        if name in keep or any(name.startswith(element[:-3]) for element in keep if element.endswith("[x]"))
    }
    meta = dict(result.get("meta") or {})
    meta["tag"] = [
        *(meta.get("tag") or []),
        {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"},
    ]
    result["meta"] = meta
    return result
