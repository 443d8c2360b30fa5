"""Search over the store's search_token table; every query starts from the store's site-scoped heads."""
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode

from sqlalchemy import and_, false, func, not_, or_
from sqlmodel import select

from ecrf.config import Settings
from ecrf.fhir.outcome import FhirError
from ecrf.pagination import MAX_OFFSET
from ecrf.store.indexing import SEARCH_PARAMS, SEARCHED_THROUGH, moment_range
from ecrf.store.models import ResourceHead, SearchToken
from ecrf.store.service import ClinicalStore

CONTROL_PARAMS = ("_count", "_offset", "_sort", "_total", "_format")
COMMON_PARAMS = {"_id": "id", "_lastUpdated": "last-updated"}
DATE_PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
CONTROL_CHARACTER = re.compile("[\x00-\x1f\x7f]")  # criteria also come from Bundle urls and If-None-Exist


@dataclass
class SearchQuery:
    resource_type: str
    filters: list[Any] = field(default_factory=list)
    order: list[Any] = field(default_factory=list)
    count: int = 50
    offset: int = 0
    params: list[tuple[str, str]] = field(default_factory=list)  # the criteria, for paging links

    def link(self, base: str, offset: int) -> str:
        pairs = [*self.params, ("_count", str(self.count)), ("_offset", str(offset))]
        return f"{base}/{self.resource_type}?{urlencode(pairs)}"


@dataclass
class Page:
    heads: list[ResourceHead]
    total: int
    has_more: bool


def params_of(query_string: str) -> list[tuple[str, str]]:
    return parse_qsl(query_string, keep_blank_values=True)


def parse(resource_type: str, pairs: list[tuple[str, str]], *, default_count: int, max_count: int) -> SearchQuery:
    known = SEARCH_PARAMS.get(resource_type, {})
    query = SearchQuery(resource_type, count=default_count)
    problems = []
    sort_spec = None
    for name, value in pairs:
        base, _, modifier = name.partition(":")
        if CONTROL_CHARACTER.search(name) or CONTROL_CHARACTER.search(value):
            raise FhirError.one(400, f"search parameter {CONTROL_CHARACTER.sub('?', base)!r} contains a control character")
        if name in CONTROL_PARAMS:
            if name == "_count":
                query.count = min(_non_negative(name, value), max_count)
            elif name == "_offset":
                query.offset = _non_negative(name, value)
            elif name == "_sort":
                sort_spec = value
            elif name == "_format" and value not in ("json", "application/fhir+json", "application/json"):
                problems.append(f"_format {value!r} is not supported (JSON only)")
            continue
        if modifier:
            problems.append(f"modifier :{modifier} of {base!r} is not supported")
            continue
        if not value:
            problems.append(f"search parameter {name!r} has no value")
            continue
        if name == "_id":
            query.filters.append(ResourceHead.resource_id.in_(value.split(",")))
        elif name == "_lastUpdated":
            query.filters.append(_date_condition(ResourceHead.last_updated, value, name))
        elif name in known:
            kind, _ = known[name]
            query.filters.append(_token_filter(resource_type, name, kind, value))
        else:
            supported = ", ".join(sorted([*known, *COMMON_PARAMS, *CONTROL_PARAMS]))
            problems.append(f"search parameter {name!r} is not supported for {resource_type} (supported: {supported})")
            continue
        query.params.append((name, value))
    if problems:
        raise FhirError.one(400, "; ".join(problems), code="not-supported")
    query.order = _order(resource_type, sort_spec, known)
    if sort_spec:
        query.params.append(("_sort", sort_spec))
    return query


def run(store: ClinicalStore, query: SearchQuery) -> Page:
    statement = store.scoped_heads(query.resource_type).where(*query.filters)
    total = store.session.exec(select(func.count()).select_from(statement.subquery())).one()
    if query.count == 0:
        return Page([], total, total > 0)
    rows = store.session.exec(statement.order_by(*query.order).offset(query.offset).limit(query.count + 1)).all()
    return Page(list(rows[: query.count]), total, len(rows) > query.count)


def matching_ids(store: ClinicalStore, resource_type: str, criteria: str, limit: int = 2) -> list[str]:
    """Ids of the resources a conditional criteria string matches (at most `limit`)."""
    pairs = params_of(criteria)
    if not pairs:
        raise FhirError.one(400, f"conditional criteria {criteria!r} are empty")
    _check_counts(pairs)
    query = parse(resource_type, pairs, default_count=limit, max_count=limit)
    if any(name in CONTROL_PARAMS for name, _ in pairs):
        raise FhirError.one(400, f"conditional criteria {criteria!r} may not use paging or sorting")
    statement = store.scoped_heads(resource_type).where(*query.filters).order_by(ResourceHead.resource_id).limit(limit)
    return [head.resource_id for head in store.session.exec(statement).all()]


def _check_counts(pairs: list[tuple[str, str]]) -> None:
    """Conditional criteria come in bodies, past the request guard's query-string limits: the same limits
    (ECRF_MAX_QUERY_PARAMETERS, ECRF_MAX_REPEATED_PARAMETER, their defaults) apply to them here."""
    most_parameters = Settings.model_fields["max_query_parameters"].default
    most_repeated = Settings.model_fields["max_repeated_parameter"].default
    if len(pairs) > most_parameters:
        raise FhirError.one(400, f"conditional criteria have {len(pairs)} parameters; the limit is {most_parameters}",
                            code="too-costly")
    name, copies = Counter(name for name, _ in pairs).most_common(1)[0]
    if copies > most_repeated:
        raise FhirError.one(400, f"conditional criteria repeat {name[:64]!r} {copies} times; the limit is "
                                 f"{most_repeated}", code="too-costly")


def _non_negative(name: str, value: str) -> int:
    if not re.fullmatch("[0-9]{1,10}", value) or int(value) > MAX_OFFSET:
        raise FhirError.one(400, f"{name} must be an integer from 0 to {MAX_OFFSET}, got {value!r}")
    return int(value)


def _token_filter(resource_type: str, param: str, kind: str, value: str):
    through = SEARCHED_THROUGH.get(resource_type, {}).get(param)
    conditions = []
    for alternative in value.split(","):
        if through:
            conditions.append(_patient_reference_condition(alternative))
        elif kind == "date":
            conditions.append(_date_condition(SearchToken.moment, alternative, param))
        elif kind == "reference":
            conditions.append(_reference_condition(alternative))
        else:
            conditions.append(_code_condition(alternative))
    tokens = select(SearchToken.resource_id).where(
        SearchToken.resource_type == resource_type, SearchToken.param == (through or param), or_(*conditions))
    if kind == "reference":  # lets a suffix match scan the (partial) index of references, not the table
        tokens = tokens.where(SearchToken.value.isnot(None))
    return ResourceHead.resource_id.in_(tokens)


def _code_condition(value: str):
    if "|" not in value:
        return SearchToken.code == value
    system, code = value.split("|", 1)
    if not system:
        return and_(SearchToken.system.is_(None), SearchToken.code == code)
    if not code:
        return SearchToken.system == system
    return and_(SearchToken.system == system, SearchToken.code == code)


def _reference_condition(value: str):
    if "/" not in value:
        return or_(SearchToken.value == value, SearchToken.value.endswith(f"/{value}", autoescape=True))
    return SearchToken.value == _reference_target(value)


def _patient_reference_condition(value: str):
    """`_reference_condition` met by references to a Patient only."""
    if "/" not in value:
        return or_(SearchToken.value == f"Patient/{value}",
                   SearchToken.value.endswith(f"/Patient/{value}", autoescape=True))
    target = _reference_target(value)
    return SearchToken.value == target if target.startswith("Patient/") else false()


def _reference_target(value: str) -> str:
    """Type/id of a relative, absolute or versioned reference."""
    parts = value.rstrip("/").split("/")
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    return "/".join(parts[-2:])


def _date_condition(column, value: str, param: str):
    prefix = value[:2] if value[:2] in DATE_PREFIXES else "eq"
    text = value[2:] if value[:2] in DATE_PREFIXES else value
    start, end = _date_range(text, param)
    return {
        "eq": and_(column >= start, column < end), "ap": and_(column >= start, column < end),
        "ne": not_(and_(column >= start, column < end)),
        "gt": column >= end, "sa": column >= end, "ge": column >= start,
        "lt": column < start, "eb": column < start, "le": column < end,
    }[prefix]


def _date_range(text: str, param: str) -> tuple[datetime, datetime]:
    """The instants [start, end) a FHIR date of some precision stands for; on the stored calendar only (a
    date off it matches nothing ever written, and its range may not even exist: 9999-12-31 has no next day)."""
    off_calendar = moment_range(text)
    if off_calendar:
        raise FhirError.one(400, f"{param}: {off_calendar}")
    try:
        if len(text) == 4:
            start = datetime(int(text), 1, 1, tzinfo=UTC)
            return start, start.replace(year=start.year + 1)
        if len(text) == 7:
            start = datetime(int(text[:4]), int(text[5:7]), 1, tzinfo=UTC)
            return start, (start + timedelta(days=32)).replace(day=1)
        if len(text) == 10:
            start = datetime.fromisoformat(text).replace(tzinfo=UTC)
            return start, start + timedelta(days=1)
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (ValueError, OverflowError):
        raise FhirError.one(400, f"{param}: {text!r} is not a FHIR date or dateTime") from None
    moment = moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    step = timedelta(seconds=1) if moment.microsecond == 0 else timedelta(microseconds=1)
    return moment, moment + step


def _order(resource_type: str, spec: str | None, known: dict[str, tuple[str, tuple[str, ...]]]) -> list[Any]:
    """ORDER BY for _sort; the resource id always breaks ties so pages are stable."""
    order = []
    for key in (spec or "").split(","):
        key = key.strip()
        if not key:
            continue
        descending = key.startswith("-")
        name = key.lstrip("-")
        if name == "_lastUpdated":
            column = ResourceHead.last_updated
        elif name == "_id":
            column = ResourceHead.resource_id
        elif known.get(name, ("",))[0] == "date":
            column = select(func.min(SearchToken.moment)).where(
                SearchToken.resource_type == resource_type, SearchToken.param == name,
                SearchToken.resource_id == ResourceHead.resource_id,
            ).correlate(ResourceHead).scalar_subquery()
        else:
            dates = [p for p, (kind, _) in known.items() if kind == "date"]
            raise FhirError.one(400, f"_sort by {name!r} is not supported for {resource_type} "
                                     f"(supported: _lastUpdated, _id{''.join(', ' + d for d in dates)})",
                                code="not-supported")
        order.append(column.desc().nulls_last() if descending else column.asc().nulls_last())
    if not order:
        order.append(ResourceHead.last_updated.asc())
    order.append(ResourceHead.resource_id.asc())
    return order
