"""The parameters of a history interaction (instance, type or system level): _count, _offset, _since, _at."""

import re
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import urlencode

from ecrf.common.outcome import FhirError
from ecrf.search.engine import CONTROL_CHARACTER, _date_range, _non_negative

INSTANT = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})")


@dataclass
class HistoryQuery:
    count: int
    offset: int = 0
    since: datetime | None = None
    at: tuple[datetime, datetime] | None = None
    types: list[str] | None = None  # _type (system level only)
    params: list[tuple[str, str]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    def link(self, base: str, path: str, offset: int) -> str:
        pairs = [*self.params, ("_count", str(self.count)), ("_offset", str(offset))]
        return f"{base}/{path}?{urlencode(pairs)}"


def history_query(
    pairs: list[tuple[str, str]], *, default_count: int, max_count: int, strict: bool, types: tuple[str, ...] = ()
) -> HistoryQuery:
    """`types`: the types a system-level history may be limited to with _type (as R5 allows); none elsewhere."""
    query = HistoryQuery(count=default_count)
    for name, value in pairs:
        if CONTROL_CHARACTER.search(name) or CONTROL_CHARACTER.search(value):
            raise FhirError.one(
                400, f"history parameter {CONTROL_CHARACTER.sub('?', name)!r} contains a control character"
            )
        if name == "_count":
            query.count = min(_non_negative(name, value), max_count)
        elif name == "_offset":
            query.offset = _non_negative(name, value)
        elif name == "_since":
            if not INSTANT.fullmatch(value):
                raise FhirError.one(
                    400, f"_since must be an instant with a time zone (2026-01-02T10:00:00Z), got {value!r}"
                )
            query.since = _date_range(value, name)[0]
            query.params.append((name, value))
        elif name == "_at":
            query.at = _date_range(value, name)
            query.params.append((name, value))
        elif name == "_type" and types:
            wanted = [t for t in value.split(",") if t]
            unknown = [t for t in wanted if t not in types]
            if unknown:
                raise FhirError.one(
                    400,
                    f"_type names {', '.join(unknown)}, not a type of this server's history "
                    f"(supported: {', '.join(types)})",
                    code="not-supported",
                )
            query.types = wanted
            query.params.append((name, value))
        elif name == "_format" and value in ("json", "application/fhir+json", "application/json"):
            continue
        elif strict:
            raise FhirError.one(
                400,
                f"history parameter {name!r} is not supported (supported: _count, _offset, _since, _at)",
                code="not-supported",
            )
        else:
            query.ignored.append(f"history parameter {name!r} is not supported")
    return query
