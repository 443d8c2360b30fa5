"""The request body rules: strict JSON within limits, and the Refusal that names the rule a body broke.

RequestGuard (ecrf/security.py) applies them to every body; ecrf/json_stream.py to a large Bundle, entry by
entry.
"""

import json
import re
from dataclasses import dataclass
from typing import Any

import orjson

from ecrf.config import Settings

CONTROL_CHARACTER = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f]")  # C0 except tab, newline, carriage return
QUOTE_SPACE_COLON = re.compile(rb'"[ \t\r\n]+:')
ESCAPED_QUOTE_BEFORE_COLON = re.compile(rb'(\\+)"[ \t\r\n]*:')
POSSIBLE_CONTROL_ESCAPE = re.compile(rb"\\(?:u00[01]|[bf])")  # JSON strings hold C0 characters only as escapes
# FHIR decimal: at most 18 digits before the point, 17 after. A longer run of digits where a number may start
# (body start, after a colon, bracket or comma) is a hint; strings are skipped to confirm it, without a copy.
DIGITS_TO_ZERO = bytes.maketrans(b"123456789", b"000000000")
TOO_MANY_DIGITS = (b"0" * 19, b"." + b"0" * 18)  # after DIGITS_TO_ZERO: found by bytes.find, far faster than re
SCAN_SLICE = 1024 * 1024
NUMBER_CHARACTERS = frozenset(b"0123456789.-+eE \t\r\n")
STRING_OR_LONG_NUMBER = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|(?P<number>[0-9]{19}|\.[0-9]{18})')
MAX_OBJECT_KEYS = 1000  # no FHIR resource or eCRF form comes near; a million unknown keys cost a million errors


@dataclass
class Refusal(Exception):
    """A request refused before any route sees it; `path` locates the offending JSON value, if any."""

    status: int
    message: str
    rule: str
    code: str  # OperationOutcome issue code under /fhir
    item: str = "body"
    path: tuple = ()
    resource_type: str | None = None
    headers: dict[str, str] | None = None

    def location(self, fhir: bool) -> str | None:
        """Under /fhir a FHIRPath (None when no JSON value is at fault), under /api/v1 a dotted item path."""
        if not fhir:
            return ".".join(str(part) for part in self.path) if self.path else self.item
        if not self.path:
            return None
        steps = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in self.path)
        return f"{self.resource_type}{steps}" if self.resource_type else steps.lstrip(".")


def parse_json_body(raw: bytes, settings: Settings) -> Any:
    """A request body as strict JSON (RFC 8259, UTF-8, no BOM, no NaN), within the depth and size limits,
    with no repeated key and no control character in any string; else a Refusal saying which rule it broke."""
    document = parse_json(raw, settings.max_json_depth)
    keys, _ = measure(document, settings.max_json_depth, settings.max_json_elements)
    if POSSIBLE_CONTROL_ESCAPE.search(raw):
        refuse_control_characters(document)
    refuse_long_numbers(raw)
    if keys != keys_written(raw):
        refuse_repeated_key(raw)
    return document


def parse_json(raw: bytes | memoryview, max_depth: int) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        if "depth" in str(error) or "recursion" in str(error):
            raise too_deep(max_depth) from None
        raise Refusal(400, f"the body is not valid JSON: {error}", "json", "structure") from None


def refuse_long_numbers(raw: bytes) -> None:
    hinted = any(_number_may_start_before(raw, position) for position in _long_digit_runs(raw))
    if hinted and any(found.lastgroup for found in STRING_OR_LONG_NUMBER.finditer(raw)):
        raise Refusal(
            422,
            "a number has more digits than a FHIR decimal allows (18 before the decimal point, "
            "17 after): it could not be stored exactly",
            "number_digits",
            "value",
        )


def _long_digit_runs(raw: bytes):
    """Where 19 digits, or a point and 18 digits, start; a slice of the body translated at a time."""
    for start in range(0, len(raw), SCAN_SLICE):
        piece = raw[start : start + SCAN_SLICE + 19].translate(DIGITS_TO_ZERO)
        for needle in TOO_MANY_DIGITS:
            position = piece.find(needle)
            while 0 <= position < SCAN_SLICE:  # one starting in the overlap is found in the next slice
                yield start + position
                position = piece.find(needle, position + len(needle))


def _number_may_start_before(raw: bytes, position: int) -> bool:
    while position > 0 and raw[position - 1] in NUMBER_CHARACTERS:
        position -= 1
    return position == 0 or raw[position - 1] in b":[,"


def refuse_repeated_key(raw: bytes | memoryview, path: tuple = (), resource_type: str | None = None) -> None:
    repeated = _repeated_key(raw)
    if repeated is not None:
        raise Refusal(
            400,
            f"the key {repeated!r} appears twice in one object",
            "duplicate_key",
            "structure",
            path=path,
            resource_type=resource_type,
        )


def measure(document: Any, max_depth: int, max_elements: int, *, depth: int = 1, elements: int = 0) -> tuple[int, int]:
    """Depth and number of values of the document (at `depth`, after `elements` values counted elsewhere),
    within the limits; returns its number of object keys and the number of values counted so far."""
    elements += 1
    if not isinstance(document, (dict, list)):
        return 0, elements
    keys = 0
    stack: list[tuple[Any, int]] = [(document, depth)]
    while stack:
        container, depth = stack.pop()
        if depth > max_depth:
            raise too_deep(max_depth)
        elements += len(container)
        if elements > max_elements:
            raise Refusal(
                413,
                f"the body has more than {max_elements} JSON values (ECRF_MAX_JSON_ELEMENTS)",
                "max_json_elements",
                "too-costly",
            )
        if type(container) is dict:
            if len(container) > MAX_OBJECT_KEYS:
                raise Refusal(
                    413, f"an object in the body has more than {MAX_OBJECT_KEYS} keys", "max_object_keys", "too-costly"
                )
            keys += len(container)
            members = container.values()
        else:
            members = container
        for member in members:
            kind = type(member)
            if kind is dict or kind is list:
                stack.append((member, depth + 1))
    return keys, elements


def refuse_control_characters(document: Any, path: tuple = (), resource_type: str | None = None) -> None:
    """Refuse the first key or string holding a control character, located by its path (below `path`)."""
    if resource_type is None and isinstance(document, dict):
        resource_type = document.get("resourceType")
    stack: list[tuple[Any, tuple]] = [(document, path)]
    while stack:
        value, path = stack.pop()
        if isinstance(value, str):
            found = CONTROL_CHARACTER.search(value)
            if found:
                raise Refusal(
                    422,
                    f"control character U+{ord(found.group()):04X} is not allowed in text "
                    "(only tab, line feed and carriage return are)",
                    "control_character",
                    "value",
                    path=path,
                    resource_type=resource_type if isinstance(resource_type, str) else None,
                )
        elif isinstance(value, dict):
            stack.extend((key, path) for key in value)
            stack.extend((member, (*path, key)) for key, member in value.items())
        elif isinstance(value, list):
            stack.extend((member, (*path, index)) for index, member in enumerate(value))


def too_deep(max_depth: int) -> Refusal:
    return Refusal(
        413, f"the body nests deeper than {max_depth} levels (ECRF_MAX_JSON_DEPTH)", "max_json_depth", "too-costly"
    )


def keys_written(raw: bytes | memoryview) -> int:
    """Keys in the raw body: in valid JSON every quote not escaped that is followed by a colon ends a key."""
    written = raw.count(b'":') + len(QUOTE_SPACE_COLON.findall(raw))
    if b'\\"' in raw:
        written -= sum(1 for run in ESCAPED_QUOTE_BEFORE_COLON.finditer(raw) if len(run.group(1)) % 2)
    return written


class _Repeated(Exception):
    pass


def _repeated_key(raw: bytes | memoryview) -> str | None:
    def unique(pairs):
        seen = set()
        for key, _ in pairs:
            if key in seen:
                raise _Repeated(key)
            seen.add(key)
        return dict(pairs)

    try:
        json.loads(raw, object_pairs_hook=unique)
    except _Repeated as repeated:
        return repeated.args[0]
    return None
