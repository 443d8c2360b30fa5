"""What a resource version contributes to search and to the study's item facts.

Computed once per write, so reads and eligibility never parse stored JSON.
"""

import typing
import unicodedata
from collections.abc import Iterable, Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from functools import cache
from typing import Any, NamedTuple

import orjson

from ecrf.common.dates import date_of as local_date, moment_start as parse_moment  # one reading of FHIR dates
from study_model.definitions import StudyDef
from fhir_mappings.mapping import resource_to_items

# param -> (kind, paths). Paths are dotted element names; the first that is present wins for dates.
SEARCH_PARAMS: dict[str, dict[str, tuple[str, tuple[str, ...]]]] = {
    "Patient": {
        "identifier": ("token", ("identifier",)),
        "gender": ("token", ("gender",)),
        "birthdate": ("date", ("birthDate",)),
        # strings (R4 Patient-name, -family, -given): each part of every HumanName, as sent
        "name": ("string", ("name.family", "name.given", "name.text", "name.prefix", "name.suffix")),
        "family": ("string", ("name.family",)),
        "given": ("string", ("name.given",)),
    },
    "ResearchSubject": {
        "identifier": ("token", ("identifier",)),
        "study": ("reference", ("study",)),
        "individual": ("reference", ("individual",)),
        "patient": ("reference", ("individual",)),
        "status": ("token", ("status",)),
    },
    "Observation": {
        "identifier": ("token", ("identifier",)),
        "subject": ("reference", ("subject",)),
        "patient": ("reference", ("subject",)),
        "code": ("token", ("code",)),
        "category": ("token", ("category",)),
        "status": ("token", ("status",)),
        "date": ("date", ("effectiveDateTime", "effectivePeriod.start", "effectiveInstant")),
    },
    "Condition": {
        "identifier": ("token", ("identifier",)),
        "subject": ("reference", ("subject",)),
        "patient": ("reference", ("subject",)),
        "code": ("token", ("code",)),
        "clinical-status": ("token", ("clinicalStatus",)),
        "onset-date": ("date", ("onsetDateTime", "onsetPeriod.start")),
    },
    "Procedure": {
        "identifier": ("token", ("identifier",)),
        "subject": ("reference", ("subject",)),
        "patient": ("reference", ("subject",)),
        "code": ("token", ("code",)),
        "date": ("date", ("performedDateTime", "performedPeriod.start")),
    },
    "Immunization": {
        "identifier": ("token", ("identifier",)),
        "patient": ("reference", ("patient",)),
        "vaccine-code": ("token", ("vaccineCode",)),
        "date": ("date", ("occurrenceDateTime",)),
    },
    "MedicationStatement": {
        "identifier": ("token", ("identifier",)),
        "subject": ("reference", ("subject",)),
        "patient": ("reference", ("subject",)),
        "code": ("token", ("medicationCodeableConcept",)),
        "effective": ("date", ("effectiveDateTime", "effectivePeriod.start")),
    },
    "Specimen": {
        "identifier": ("token", ("identifier",)),
        "subject": ("reference", ("subject",)),
        "patient": ("reference", ("subject",)),
        "type": ("token", ("type",)),
    },
    # kept for the study's EHR Bundles (forms/study.yaml kept_resource_types)
    "MedicationAdministration": {
        "identifier": ("token", ("identifier",)),
        "subject": ("reference", ("subject",)),
        "patient": ("reference", ("subject",)),
        "status": ("token", ("status",)),
        "code": ("token", ("medicationCodeableConcept",)),
        "effective-time": ("date", ("effectiveDateTime", "effectivePeriod.start")),
    },
    "MedicationRequest": {
        "identifier": ("token", ("identifier",)),
        "subject": ("reference", ("subject",)),
        "patient": ("reference", ("subject",)),
        "status": ("token", ("status",)),
        "code": ("token", ("medicationCodeableConcept",)),
        "authoredon": ("date", ("authoredOn",)),
    },
    "AdverseEvent": {  # R4 AdverseEvent has no `identifier` search parameter
        "subject": ("reference", ("subject",)),
        "event": ("token", ("event",)),
        "seriousness": ("token", ("seriousness",)),
        "severity": ("token", ("severity",)),
        "date": ("date", ("date",)),
    },
    "DiagnosticReport": {
        "identifier": ("token", ("identifier",)),
        "subject": ("reference", ("subject",)),
        "patient": ("reference", ("subject",)),
        "code": ("token", ("code",)),
        "status": ("token", ("status",)),
        "date": ("date", ("effectiveDateTime", "effectivePeriod.start")),
    },
    "Encounter": {
        "identifier": ("token", ("identifier",)),
        "subject": ("reference", ("subject",)),
        "patient": ("reference", ("subject",)),
        "status": ("token", ("status",)),
        "class": ("token", ("class",)),
        "date": ("date", ("period.start",)),
    },
    "Medication": {  # no patient: what a MedicationRequest or MedicationAdministration names
        "identifier": ("token", ("identifier",)),
        "code": ("token", ("code",)),
    },
}

# The element that names the Patient a resource is about.
PATIENT_REFERENCE = {
    "ResearchSubject": "individual",
    "Observation": "subject",
    "Condition": "subject",
    "Procedure": "subject",
    "Immunization": "patient",
    "MedicationStatement": "subject",
    "Specimen": "subject",
    "MedicationAdministration": "subject",
    "MedicationRequest": "subject",
    "AdverseEvent": "subject",
    "DiagnosticReport": "subject",
    "Encounter": "subject",
}


# Parameters searched through another one's tokens instead of stored: `patient`, where the element it reads is
# already indexed under that other parameter. A search takes that parameter's Patient references only
# (FHIR: subject.where(resolve() is Patient)).
SEARCHED_THROUGH: dict[str, dict[str, str]] = {
    "ResearchSubject": {"patient": "individual"},
    "Observation": {"patient": "subject"},
    "Condition": {"patient": "subject"},
    "Procedure": {"patient": "subject"},
    "MedicationStatement": {"patient": "subject"},
    "Specimen": {"patient": "subject"},
    "MedicationAdministration": {"patient": "subject"},
    "MedicationRequest": {"patient": "subject"},
    "DiagnosticReport": {"patient": "subject"},
    "Encounter": {"patient": "subject"},
}


class Token(NamedTuple):  # a tuple: several per resource written, so cheap to make
    param: str
    system: str | None = None
    code: str | None = None
    value: str | None = None
    moment: datetime | None = None
    text: str | None = None  # a coding's display or its CodeableConcept's text, folded: the `:text` modifier


class Fact(NamedTuple):  # a tuple, like Token: one or more per resource written
    form_id: str
    item_id: str
    value_number: float | None
    value_text: str | None
    unit: str | None
    original_value: str | None
    original_unit: str | None
    uln: float | None
    effective: datetime | None  # the exact instant, in UTC: for ordering
    effective_date: date | None  # the calendar date as sent (local to the sender): for windows and visits
    error: str | None


def patient_of(resource: dict[str, Any]) -> str | None:
    """The id of the Patient this resource is about, if it names one."""
    if resource.get("resourceType") == "Patient":
        return resource.get("id")
    element = PATIENT_REFERENCE.get(resource.get("resourceType", ""))
    reference = (resource.get(element) or {}).get("reference") if element else None
    if isinstance(reference, str) and reference.startswith("Patient/"):
        return reference.split("/", 2)[1]
    return None


def folded(text: str) -> str:
    """A string as R4 string search compares it: accents dropped, case folded (`Ødegård` -> `ødegard`)."""
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c)).casefold()


def unversioned(reference: str) -> str:
    """A reference without its `/_history/{version}`: a search for the resource finds it at any version."""
    head, marker, _ = reference.partition("/_history/")
    return head if marker else reference


def search_tokens(resource: dict[str, Any]) -> list[Token]:
    tokens: list[Token] = []
    for param, kind, paths in STORED_PARAMS.get(resource.get("resourceType", ""), ()):
        for path in paths:
            values = _values_at(resource, path)
            if not values:
                continue
            if kind == "date":
                moments = [parse_moment(value) for value in values if isinstance(value, str)]
                tokens.extend(Token(param, None, None, None, moment) for moment in moments if moment)
                if moments:
                    break
            elif kind == "reference":
                tokens.extend(
                    Token(param, None, None, unversioned(value["reference"]))
                    for value in values
                    if isinstance(value, dict) and isinstance(value.get("reference"), str)
                )
            elif kind == "string":
                tokens.extend(
                    Token(param, None, value[:255], folded(value)[:255]) for value in values if isinstance(value, str)
                )
            else:
                tokens.extend(_token_values(param, values))
    return tokens


def _token_values(param: str, values: Iterable[Any]) -> Iterator[Token]:
    for value in values:
        if isinstance(value, str):
            yield Token(param, None, value)
        elif isinstance(value, dict) and ("coding" in value or "text" in value):  # CodeableConcept
            concept_text = value.get("text") if isinstance(value.get("text"), str) else None
            codings = [c for c in value.get("coding") or [] if isinstance(c, dict)]
            for coding in codings:
                shown = coding.get("display") if isinstance(coding.get("display"), str) else concept_text
                yield Token(param, coding.get("system"), coding.get("code"), text=_text_of(shown))
            if not codings and concept_text:
                yield Token(param, text=_text_of(concept_text))
        elif isinstance(value, dict) and "value" in value:  # Identifier
            yield Token(param, value.get("system"), str(value.get("value")))
        elif isinstance(value, dict) and "code" in value:  # Coding
            display = value.get("display") if isinstance(value.get("display"), str) else None
            yield Token(param, value.get("system"), value.get("code"), text=_text_of(display))


def _text_of(text: str | None) -> str | None:
    return folded(text)[:255] if text else None


def _values_at(node: dict[str, Any], path: tuple[str, ...]) -> list[Any]:
    """The values at a path of element names, arrays flattened at every step, nulls left out."""
    values = [node]
    for name in path:
        found = []
        for value in values:
            element = value.get(name) if isinstance(value, dict) else None
            if isinstance(element, list):
                found.extend(item for item in element if item is not None)
            elif element is not None:
                found.append(element)
        values = found
    return values


def _stored_params() -> dict[str, tuple[tuple[str, str, tuple[tuple[str, ...], ...]], ...]]:
    """Per resource type, the parameters whose tokens are stored: (param, kind, paths split into names)."""
    return {
        resource_type: tuple(
            (param, kind, tuple(tuple(path.split(".")) for path in paths))
            for param, (kind, paths) in params.items()
            if param not in SEARCHED_THROUGH.get(resource_type, {})
        )
        for resource_type, params in SEARCH_PARAMS.items()
    }


STORED_PARAMS = _stored_params()


class Indexer:
    """Derives tokens and item facts of a resource for one loaded study."""

    def __init__(self, study: StudyDef):
        self.study = study

    def facts(self, resource: dict[str, Any]) -> list[Fact]:
        return [
            Fact(
                item.form_id,
                item.item_id,
                _number(item.value),
                _text(item.value),
                item.unit,
                None if item.original_value is None else str(item.original_value),
                item.original_unit,
                None if item.uln is None else float(item.uln),
                _moment(item.effective),
                local_date(item.effective),
                item.error,
            )
            for item in resource_to_items(self.study, resource)
        ]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float, Decimal)):
        return float(value)
    return None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    if isinstance(value, list):  # a codes item: its set of values, as a sorted JSON list
        return orjson.dumps(sorted(str(v) for v in value)).decode()
    return str(value)


def sent_date(effective_date: date | None, effective: datetime | None) -> date | None:
    """An item fact's date as sent; a fact without one (indexed before it was kept) falls back to its UTC date."""
    if effective_date is not None or effective is None:
        return effective_date
    return (effective.astimezone(UTC) if effective.tzinfo else effective).date()


def _moment(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime.combine(value, datetime.min.time(), tzinfo=UTC)
    if isinstance(value, str):
        return parse_moment(value)
    return None


# The calendar a stored date may use. Every date, dateTime and instant written lies within these years as
# sent, so the UTC instant of any time zone (±14 h) and a de-identification shift (at most a year, see the
# export profile's max_days) both stay inside Python's and the databases' calendar (years 1..9999).
EARLIEST_YEAR, LATEST_YEAR = 2, 9998
CALENDAR = f"{EARLIEST_YEAR:04d}-01-01..{LATEST_YEAR:04d}-12-31"
DATE_TYPES = frozenset({"Date", "DateTime", "Instant"})


def moment_range(text: Any) -> str | None:
    """Why a FHIR date, dateTime or instant lies off the stored calendar, or None (also for what is no date:
    the shape is the model's business)."""
    if not isinstance(text, str) or len(text) < 4 or not text[:4].isdigit():
        return None
    if EARLIEST_YEAR <= int(text[:4]) <= LATEST_YEAR:
        return None
    return f"{text!r} lies outside the calendar this server stores ({CALENDAR})"


def out_of_range(resource: dict[str, Any]) -> list[tuple[str, str]]:
    """(path below the resource, problem) for every date, dateTime and instant element of `resource` off the
    calendar, found through its R4B model: contained resources and extensions included."""
    model = _model(resource.get("resourceType"))
    if model is None:
        return []
    found: list[tuple[str, str]] = []
    _walk(resource, model, "", found)
    return found


@cache
def _model(resource_type: Any) -> Any:
    if not isinstance(resource_type, str):
        return None
    from fhir.resources.R4B import get_fhir_model_class

    try:
        return get_fhir_model_class(resource_type)
    except (KeyError, ValueError, ImportError, AttributeError):
        return None


def _walk(node: dict[str, Any], model: Any, path: str, found: list[tuple[str, str]]) -> None:
    plan = _date_plan(model)
    for key, value in node.items():
        kind = plan.get(key)
        if kind is None:
            continue
        items = value if isinstance(value, list) else [value]
        for index, item in enumerate(items):
            where = f"{path}{'.' if path else ''}{key}" + (f"[{index}]" if isinstance(value, list) else "")
            if kind == "date":
                problem = moment_range(item)
                if problem:
                    found.append((where, problem))
            elif isinstance(item, dict):
                child = _model(item.get("resourceType")) if kind == "resource" else kind
                if child is not None:
                    _walk(item, child, where, found)


@cache
def _date_plan(model: Any) -> dict[str, Any]:
    """A model's elements that are dates ("date") or hold some ("resource": any resource, else the model)."""
    plan: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        kind = _kind(field.annotation)
        if kind is not None:
            plan[field.alias or name] = kind
    return plan


def _kind(annotation: Any) -> Any:
    if any(type(meta).__name__ in DATE_TYPES for meta in getattr(annotation, "__metadata__", ())):
        return "date"
    klass = getattr(annotation, "get_model_klass", None)
    if klass is not None:
        model = klass()
        if model.__name__ in ("Resource", "DomainResource"):
            return "resource"
        return model if getattr(model, "model_fields", None) else None
    for argument in typing.get_args(annotation):
        kind = _kind(argument)
        if kind is not None:
            return kind
    return None
