"""Search over the store's search_token table; every query starts from the store's site-scoped heads."""

import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import parse_qsl, urlencode

from sqlalchemy import and_, false, func, literal, not_, or_
from sqlmodel import select

from ecrf.common.dates import moment_span
from ecrf.config import Settings
from ecrf.common.outcome import FhirError
from ecrf.search.types import WRITABLE_TYPES
from ecrf.common.pagination import MAX_OFFSET
from ecrf.store.indexing import PATIENT_REFERENCE, SEARCH_PARAMS, SEARCHED_THROUGH, folded, moment_range
from ecrf.store.models import ItemFact, ResourceHead, SearchToken
from ecrf.store.service import ClinicalStore
from study_model.units import UnitError, resolve_unit

CONTROL_PARAMS = ("_count", "_offset", "_sort", "_total", "_format", "_summary", "_elements")
RESULT_PARAMS = ("_include", "_revinclude")
# Patient parameters that search by who a person is: for roles that may read identifiers only
DEMOGRAPHIC_PARAMS = ("name", "family", "given", "birthdate", "gender")
# Quantity parameters, answered from the study's item facts (values in each item's canonical unit)
QUANTITY_PARAMS = {"Observation": ("value-quantity",)}
UCUM_SYSTEM = "http://unitsofmeasure.org"
QUANTITY_PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
MAX_INCLUDED = 1000  # resources a page may include, over all _include and _revinclude
# Where a reference parameter may point, for chains (`subject.identifier`) and typed includes.
REFERENCE_TARGETS = {
    "subject": ("Patient",),
    "patient": ("Patient",),
    "individual": ("Patient",),
    "study": ("ResearchStudy",),
}
TOTAL_MODES = ("none", "estimate", "accurate")
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
    ignored: list[str] = field(default_factory=list)  # lenient handling: why each parameter was left out
    summary_count: bool = False  # _summary=count: the total only
    total: str = "accurate"  # _total: none leaves the total out
    demographic: bool = False  # searches Patients by name, birth date or gender (also through a chain)
    elements: list[str] | None = None  # _elements: the top-level elements shown of each match
    includes: list["Include"] = field(default_factory=list)

    @property
    def count_only(self) -> bool:
        return self.summary_count or self.count == 0

    def link(self, base: str, offset: int) -> str:
        pairs = [*self.params, ("_count", str(self.count)), ("_offset", str(offset))]
        if self.summary_count:
            pairs.append(("_summary", "count"))
        if self.total != "accurate":
            pairs.append(("_total", self.total))
        if self.elements is not None:
            pairs.append(("_elements", ",".join(self.elements)))
        return f"{base}/{self.resource_type}?{urlencode(pairs)}"


@dataclass(frozen=True)
class Include:
    """_include (the matches' references through `param`) or _revinclude (resources of `source` whose `param`
    names a match); `iterate`: applied once more to what was included."""

    reverse: bool
    source: str
    param: str
    target: str | None
    iterate: bool


@dataclass
class Page:
    heads: list[ResourceHead]
    total: int
    has_more: bool


def params_of(query_string: str) -> list[tuple[str, str]]:
    return parse_qsl(query_string, keep_blank_values=True)


def parse(
    resource_type: str,
    pairs: list[tuple[str, str]],
    *,
    default_count: int,
    max_count: int,
    strict: bool = True,
    study: Any = None,
) -> SearchQuery:
    """The query of search parameters. Strict: an unknown or unsupported parameter, modifier or empty value is
    400. Lenient (R4 search.html, Prefer: handling=lenient, the REST default): each is left out of the search
    and of its links, and named in `ignored`."""
    known = SEARCH_PARAMS.get(resource_type, {})
    query = SearchQuery(resource_type, count=default_count)
    problems = []
    sort_spec = None
    for name, value in dict.fromkeys(pairs):  # a repeated identical pair is one condition (they are AND-ed)
        base, _, modifier = name.partition(":")
        if CONTROL_CHARACTER.search(name) or CONTROL_CHARACTER.search(value):
            raise FhirError.one(
                400, f"search parameter {CONTROL_CHARACTER.sub('?', base)!r} contains a control character"
            )
        if name in CONTROL_PARAMS:
            if name == "_count":
                query.count = min(_non_negative(name, value), max_count)
            elif name == "_offset":
                query.offset = _non_negative(name, value)
            elif name == "_sort":
                sort_spec = value
            elif name == "_format" and value not in ("json", "application/fhir+json", "application/json"):
                problems.append(f"_format {value!r} is not supported (JSON only)")
            elif name == "_summary":
                if value == "count":
                    query.summary_count = True
                elif value != "false":
                    problems.append(f"_summary={value!r} is not supported (count or false)")
            elif name == "_elements":
                query.elements = [element.strip() for element in value.split(",") if element.strip()]
            elif name == "_total":
                if value not in TOTAL_MODES:
                    raise FhirError.one(400, f"_total must be one of {', '.join(TOTAL_MODES)}, got {value!r}")
                query.total = value
            continue
        if base in RESULT_PARAMS:
            include = _include(resource_type, base, modifier, value, problems)
            if include is not None:
                query.includes.append(include)
                query.params.append((name, value))
            continue
        if name.rpartition(".")[2].partition(":")[0] in DEMOGRAPHIC_PARAMS and (
            resource_type == "Patient" or "." in name
        ):
            query.demographic = True
        if "." in name:
            condition = _chained(resource_type, known, name, value, problems)
            if condition is not None:
                query.filters.append(condition)
                query.params.append((name, value))
            continue
        if modifier:
            condition = _modified(resource_type, known, base, modifier, value, problems)
            if condition is not None:
                query.filters.append(condition)
                query.params.append((name, value))
            continue
        if not value:
            problems.append(f"search parameter {name!r} has no value")
            continue
        if name == "_id":
            query.filters.append(ResourceHead.resource_id.in_(value.split(",")))
        elif name == "_lastUpdated":
            query.filters.append(_date_condition(ResourceHead.last_updated, value, name))
        elif name in QUANTITY_PARAMS.get(resource_type, ()) and study is not None:
            query.filters.append(
                or_(*(_quantity_condition(study, name, alternative) for alternative in value.split(",")))
            )
        elif name in known:
            kind, _ = known[name]
            query.filters.append(_token_filter(resource_type, name, kind, value))
        else:
            supported = ", ".join(sorted([*known, *COMMON_PARAMS, *CONTROL_PARAMS]))
            problems.append(f"search parameter {name!r} is not supported for {resource_type} (supported: {supported})")
            continue
        query.params.append((name, value))
    if problems and strict:
        raise FhirError.one(400, "; ".join(problems), code="not-supported")
    query.ignored = problems
    query.order = _order(resource_type, sort_spec, known)
    if sort_spec:
        query.params.append(("_sort", sort_spec))
    return query


def run(store: ClinicalStore, query: SearchQuery) -> Page:
    statement = store.scoped_heads(query.resource_type).where(*query.filters)
    total = store.session.exec(select(func.count()).select_from(statement.subquery())).one()
    if query.count_only:
        return Page([], total, False)
    rows = store.session.exec(statement.order_by(*query.order).offset(query.offset).limit(query.count + 1)).all()
    return Page(list(rows[: query.count]), total, len(rows) > query.count)


def included(store: ClinicalStore, query: SearchQuery, matches: list) -> list:
    """What _include and _revinclude add to a page (each resource once, none of the matches), as this actor
    may see it; `:iterate` includes are applied once more to what the first round included."""
    if not query.includes or not matches:
        return []
    seen = {stored.reference for stored in matches}
    found: list = []
    for round_sources, includes in ((matches, query.includes), (None, [i for i in query.includes if i.iterate])):
        sources = round_sources if round_sources is not None else list(found)
        for include in includes:
            if len(found) >= MAX_INCLUDED:
                break
            for stored in _include_round(store, include, sources):
                if stored.reference not in seen and len(found) < MAX_INCLUDED:
                    seen.add(stored.reference)
                    found.append(stored)
    return found


def _include_round(store: ClinicalStore, include: Include, sources: list) -> list:
    param = SEARCHED_THROUGH.get(include.source, {}).get(include.param) or include.param
    if include.reverse:
        references = [stored.reference for stored in sources]
        if include.target is not None:
            references = [r for r in references if r.startswith(f"{include.target}/")]
        if not references:
            return []
        tokens = select(SearchToken.resource_id).where(
            SearchToken.resource_type == include.source, SearchToken.param == param, SearchToken.value.in_(references)
        )
        heads = store.session.exec(
            store.scoped_heads(include.source)
            .where(ResourceHead.resource_id.in_(tokens))
            .order_by(ResourceHead.resource_id)
            .limit(MAX_INCLUDED)
        ).all()
        return store.current(heads)
    ids = [stored.resource_id for stored in sources if stored.resource_type == include.source]
    if not ids:
        return []
    values = store.session.exec(
        select(SearchToken.value).where(
            SearchToken.resource_type == include.source,
            SearchToken.param == param,
            SearchToken.resource_id.in_(ids),
            SearchToken.value.isnot(None),
        )
    ).all()
    wanted: dict[str, set[str]] = {}
    for value in values:
        target_type, _, target_id = _reference_target(value).partition("/")
        if target_type in WRITABLE_TYPES and target_id and include.target in (None, target_type):
            wanted.setdefault(target_type, set()).add(target_id)
    found = []
    for target_type, target_ids in sorted(wanted.items()):
        heads = store.session.exec(
            store.scoped_heads(target_type)
            .where(ResourceHead.resource_id.in_(sorted(target_ids)))
            .order_by(ResourceHead.resource_id)
        ).all()
        found += store.current(heads)
    return found


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
        raise FhirError.one(
            400, f"conditional criteria have {len(pairs)} parameters; the limit is {most_parameters}", code="too-costly"
        )
    name, copies = Counter(name for name, _ in pairs).most_common(1)[0]
    if copies > most_repeated:
        raise FhirError.one(
            400,
            f"conditional criteria repeat {name[:64]!r} {copies} times; the limit is {most_repeated}",
            code="too-costly",
        )


def _non_negative(name: str, value: str) -> int:
    if not re.fullmatch("[0-9]{1,10}", value) or int(value) > MAX_OFFSET:
        raise FhirError.one(400, f"{name} must be an integer from 0 to {MAX_OFFSET}, got {value!r}")
    return int(value)


def _quantity_condition(study: Any, param: str, value: str):
    """`[prefix]number[|system|unit]` against the item facts, the number converted exactly (Decimal) to each
    item's canonical unit; without a unit, the number is compared in each item's canonical unit. `eq` is the
    range of the number's precision (R4), `ap` ±10%."""
    prefix = value[:2] if value[:2] in QUANTITY_PREFIXES else "eq"
    text = value[2:] if value[:2] in QUANTITY_PREFIXES else value
    number_text, _, rest = text.partition("|")
    system, _, unit = rest.partition("|")
    try:
        number = Decimal(number_text)
        if not number.is_finite():
            raise InvalidOperation
    except InvalidOperation:
        raise FhirError.one(400, f"{param}: {number_text!r} is not a number") from None
    if system not in ("", UCUM_SYSTEM):
        raise FhirError.one(
            400, f"{param}: units are searched in UCUM ({UCUM_SYSTEM}), not {system!r}", code="not-supported"
        )
    half = Decimal(1).scaleb(number.as_tuple().exponent) / 2
    conditions = []
    for _, item in study.items_of_kind("observation"):
        if item.unit is None:
            continue
        try:
            factor = resolve_unit(item, unit or None).factor
        except UnitError:
            continue
        low, high, centre = (number - half) * factor, (number + half) * factor, number * factor
        column = ItemFact.value_number
        compared = {
            "eq": and_(column >= float(low), column < float(high)),
            "ne": not_(and_(column >= float(low), column < float(high))),
            "gt": column > float(centre),
            "sa": column > float(centre),
            "lt": column < float(centre),
            "eb": column < float(centre),
            "ge": column >= float(centre),
            "le": column <= float(centre),
            "ap": and_(column >= float(centre - abs(centre) / 10), column <= float(centre + abs(centre) / 10)),
        }[prefix]
        conditions.append(and_(ItemFact.item_id == item.id, compared))
    if not conditions:
        return false()
    facts = select(ItemFact.resource_id).where(ItemFact.resource_type == "Observation", or_(*conditions))
    return ResourceHead.resource_id.in_(facts)


def _include(resource_type: str, name: str, modifier: str, value: str, problems: list[str]) -> Include | None:
    """`_include=Observation:subject[:Patient]`, `_revinclude=Observation:subject`, `:iterate` on either."""
    if modifier not in ("", "iterate", "recurse"):
        problems.append(f"modifier :{modifier} of {name!r} is not supported (iterate)")
        return None
    parts = value.split(":")
    if len(parts) not in (2, 3):
        problems.append(f"{name}={value!r} is not Type:parameter or Type:parameter:TargetType")
        return None
    source, param, target = parts[0], parts[1], parts[2] if len(parts) == 3 else None
    iterate = bool(modifier)
    if source not in WRITABLE_TYPES or (name == "_include" and not iterate and source != resource_type):
        problems.append(
            f"{name}={value!r}: {source} is not {'a type of this server' if iterate or name != '_include' else resource_type}"
        )
        return None
    kind = SEARCH_PARAMS.get(source, {}).get(param, ("",))[0]
    if kind != "reference":
        references = sorted(p for p, (k, _) in SEARCH_PARAMS.get(source, {}).items() if k == "reference")
        problems.append(
            f"{name}={value!r}: {param!r} is not a reference parameter of {source} (those: {', '.join(references)})"
        )
        return None
    if target is not None and target not in REFERENCE_TARGETS.get(param, (target,)):
        problems.append(f"{name}={value!r}: {source}.{param} does not refer to {target}")
        return None
    return Include(name == "_revinclude", source, param, target, iterate)


def _modified(resource_type: str, known, base: str, modifier: str, value: str, problems: list[str]):
    """`:missing` (any parameter), `:not` (token), `:exact`/`:contains`/`:text` where R4 defines them."""
    if base not in known:
        problems.append(f"search parameter {base!r} is not supported for {resource_type}")
        return None
    kind, _ = known[base]
    param = SEARCHED_THROUGH.get(resource_type, {}).get(base) or base
    tokens = select(SearchToken.resource_id).where(
        SearchToken.resource_type == resource_type, SearchToken.param == param
    )
    if modifier == "missing":
        if value not in ("true", "false"):
            raise FhirError.one(400, f"{base}:missing takes true or false, got {value!r}")
        return not_(ResourceHead.resource_id.in_(tokens)) if value == "true" else ResourceHead.resource_id.in_(tokens)
    if modifier in ("exact", "contains") and kind == "string" and value:
        return _token_filter(resource_type, base, kind, value, modifier=modifier)
    if modifier == "text" and kind == "token" and value:  # the text of the code: string search rules
        return _token_filter(resource_type, base, "text", value)
    if modifier == "not" and kind == "token" and value:
        return not_(_token_filter(resource_type, base, kind, value))
    if modifier in REFERENCE_TARGETS.get(base, ()) and kind == "reference" and value:  # subject:Patient=123
        return _token_filter(resource_type, base, kind, value if "/" in value else f"{modifier}/{value}")
    problems.append(f"modifier :{modifier} of {base!r} ({kind}) is not supported")
    return None


def _chained(resource_type: str, known, name: str, value: str, problems: list[str]):
    """One level of chaining on a reference parameter: `subject.identifier=…`, `subject:Patient.identifier=…`."""
    head, _, chained = name.partition(".")
    param, _, target = head.partition(":")
    if known.get(param, ("",))[0] != "reference" or "." in chained or ":" in chained:
        problems.append(f"chained parameter {name!r} is not supported (one level, on a reference parameter)")
        return None
    targets = REFERENCE_TARGETS.get(param, ())
    target = target or (targets[0] if len(targets) == 1 else "")
    target_kind = SEARCH_PARAMS.get(target, {}).get(chained, ("",))[0]
    if target not in targets or target_kind in ("", "reference") or not value:
        problems.append(f"chained parameter {name!r} is not supported for {resource_type}")
        return None
    matched = _token_ids(target, chained, target_kind, value).subquery()
    through = SEARCHED_THROUGH.get(resource_type, {}).get(param) or param
    if target == "Patient" and PATIENT_REFERENCE.get(resource_type) in (param, through):
        # the element that names the Patient: the store's patient_id (indexed) says the same, and PostgreSQL
        # plans it as a lookup instead of matching every reference token against "Patient/" || id
        return ResourceHead.patient_id.in_(select(matched.c.resource_id))
    references = select(SearchToken.resource_id).where(
        SearchToken.resource_type == resource_type,
        SearchToken.param == through,
        SearchToken.value.in_(select(literal(f"{target}/") + matched.c.resource_id)),
    )
    return ResourceHead.resource_id.in_(references)


def _token_ids(resource_type: str, param: str, kind: str, value: str):
    """The ids of the resources of `resource_type` whose `param` matches `value`, as a select."""
    return _token_filter(resource_type, param, kind, value, select_only=True)


def _string_condition(value: str, modifier: str):
    """R4 string search: starts with, case- and accent-insensitive (the folded copy in `value`); `:exact` the
    whole string as sent; `:contains` anywhere."""
    if modifier == "exact":
        return SearchToken.code == value
    if modifier == "contains":
        return SearchToken.value.contains(folded(value), autoescape=True)
    return SearchToken.value.startswith(folded(value), autoescape=True)


def _token_filter(
    resource_type: str, param: str, kind: str, value: str, *, select_only: bool = False, modifier: str = ""
):
    through = SEARCHED_THROUGH.get(resource_type, {}).get(param)
    conditions = []
    for alternative in value.split(","):
        if through:
            conditions.append(_patient_reference_condition(alternative))
        elif kind == "date":
            conditions.append(_date_condition(SearchToken.moment, alternative, param))
        elif kind == "reference":
            conditions.append(_reference_condition(alternative))
        elif kind == "string":
            conditions.append(_string_condition(alternative, modifier))
        elif kind == "text":  # `:text` of a token: starts with, case- and accent-insensitive
            conditions.append(SearchToken.text.startswith(folded(alternative), autoescape=True))
        else:
            conditions.append(_code_condition(alternative))
    tokens = select(SearchToken.resource_id).where(
        SearchToken.resource_type == resource_type, SearchToken.param == (through or param), or_(*conditions)
    )
    if kind == "reference":  # lets a suffix match scan the (partial) index of references, not the table
        tokens = tokens.where(SearchToken.value.isnot(None))
    if select_only:
        return tokens
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
        return or_(
            SearchToken.value == f"Patient/{value}", SearchToken.value.endswith(f"/Patient/{value}", autoescape=True)
        )
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
        "eq": and_(column >= start, column < end),
        "ap": and_(column >= start, column < end),
        "ne": not_(and_(column >= start, column < end)),
        "gt": column >= end,
        "sa": column >= end,
        "ge": column >= start,
        "lt": column < start,
        "eb": column < start,
        "le": column < end,
    }[prefix]


def _date_range(text: str, param: str) -> tuple[datetime, datetime]:
    """The instants [start, end) a FHIR date of some precision stands for; on the stored calendar only (a
    date off it matches nothing ever written, and its range may not even exist: 9999-12-31 has no next day)."""
    off_calendar = moment_range(text)
    if off_calendar:
        raise FhirError.one(400, f"{param}: {off_calendar}")
    try:
        return moment_span(text)
    except (ValueError, OverflowError):
        raise FhirError.one(400, f"{param}: {text!r} is not a FHIR date or dateTime") from None


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
            column = (
                select(func.min(SearchToken.moment))
                .where(
                    SearchToken.resource_type == resource_type,
                    SearchToken.param == name,
                    SearchToken.resource_id == ResourceHead.resource_id,
                )
                .correlate(ResourceHead)
                .scalar_subquery()
            )
        else:
            dates = [p for p, (kind, _) in known.items() if kind == "date"]
            raise FhirError.one(
                400,
                f"_sort by {name!r} is not supported for {resource_type} "
                f"(supported: _lastUpdated, _id{''.join(', ' + d for d in dates)})",
                code="not-supported",
            )
        order.append(column.desc().nulls_last() if descending else column.asc().nulls_last())
    if not order:
        order.append(ResourceHead.last_updated.asc())
    order.append(ResourceHead.resource_id.asc())
    return order
