"""A large JSON object whose bulk is one array of objects (a Bundle's `entry`), read one element at a time.

Parsed whole, a 10 MB Bundle takes 45 MB of Python objects beside its 10 MB of bytes. Streamed, only the
bytes and the element being read are held: a scan finds where each element starts and ends, and each is
parsed on its own when it is needed. Every rule of `parse_json_body` still holds: the parts (the object
around the array, each element, the commas between them) are each strict JSON, which makes the whole
strict JSON; depth, number of values, control characters, long numbers and repeated keys are checked as
the elements are read. A body of any other shape is not streamed (`read` answers None).
"""

import re
from collections.abc import Iterator
from typing import Any

from ecrf.config import Settings
from ecrf.json_rules import (
    POSSIBLE_CONTROL_ESCAPE,
    keys_written,
    measure,
    parse_json,
    refuse_control_characters,
    refuse_long_numbers,
    refuse_repeated_key,
    too_deep,
)

# Everything up to the next bracket outside a string, and that bracket: strings are skipped whole.
UP_TO_BRACKET = re.compile(rb'(?:[^"\[\]{}]++|"[^"\\]*+(?:\\.[^"\\]*+)*+")*+[\[\]{}]')
OPENING = frozenset(b"[{")
BETWEEN_ELEMENTS = re.compile(rb"[ \t\r\n]*,[ \t\r\n]*")
BLANK = re.compile(rb"[ \t\r\n]*")


class StreamedObject:
    """`shell` is the object with the array left empty; `elements()` yields the array's objects in order."""

    def __init__(
        self,
        raw: bytes,
        key: str,
        array: tuple[int, int],
        spans: list[tuple[int, int]],
        shell: dict[str, Any],
        settings: Settings,
    ):
        self.raw, self.key, self.array, self.spans, self.shell = raw, key, array, spans, shell
        self.settings = settings

    @classmethod
    def read(cls, raw: bytes, key: str, settings: Settings) -> "StreamedObject | None":
        located = _array_of_objects(raw, f'"{key}"'.encode(), settings.max_json_depth)
        if located is None:
            return None
        array, spans = located
        shell = parse_json(_emptied(raw, array), settings.max_json_depth)
        if not isinstance(shell, dict) or shell.get(key) != []:
            return None
        return cls(raw, key, array, spans, shell, settings)

    def __len__(self) -> int:
        return len(self.spans)

    def element(self, index: int) -> Any:
        """The element at `index`, parsed again (after `elements()` has checked it)."""
        start, end = self.spans[index]
        return parse_json(memoryview(self.raw)[start:end], self.settings.max_json_depth)

    def holds(self, index: int, text: bytes) -> bool:
        """Whether the element's bytes contain `text` (without parsing it)."""
        start, end = self.spans[index]
        return self.raw.find(text, start, end) >= 0

    def elements(self) -> Iterator[tuple[int, dict[str, Any]]]:
        """Each element, checked by the body rules; the rules about the whole body are checked after the last."""
        settings = self.settings
        keys, values = measure(self.shell, settings.max_json_depth, settings.max_json_elements)
        resource_type = self.shell.get("resourceType") if isinstance(self.shell.get("resourceType"), str) else None
        controls = POSSIBLE_CONTROL_ESCAPE.search(self.raw) is not None
        if controls:
            refuse_control_characters(self.shell)
        for index in range(len(self.spans)):
            element = self.element(index)
            found, values = measure(
                element, settings.max_json_depth, settings.max_json_elements, depth=3, elements=values
            )
            keys += found
            if controls:
                refuse_control_characters(element, (self.key, index), resource_type)
            yield index, element
        refuse_long_numbers(self.raw)
        if keys != keys_written(self.raw):
            self._refuse_repeated_key(resource_type)

    def _refuse_repeated_key(self, resource_type: str | None) -> None:
        refuse_repeated_key(_emptied(self.raw, self.array))
        for index, (start, end) in enumerate(self.spans):
            refuse_repeated_key(self.raw[start:end], (self.key, index), resource_type)


def _array_of_objects(
    raw: bytes, quoted_key: bytes, max_depth: int
) -> tuple[tuple[int, int], list[tuple[int, int]]] | None:
    """Where the top-level array under the key starts and ends, and its elements' spans; None unless the
    body is an object holding, under that key, an array of objects only."""
    depth, array, element, spans = 0, None, 0, []
    for found in UP_TO_BRACKET.finditer(raw):
        position = found.end() - 1
        if raw[position] in OPENING:
            depth += 1
            if depth > max_depth:
                raise too_deep(max_depth)
            if depth == 2 and array is None and raw[position] == 0x5B and _key_before(raw, position, quoted_key):
                array = [position, None]
            elif depth == 3 and array is not None and array[1] is None:
                if raw[position] != 0x7B:
                    return None
                element = position
        else:
            if depth == 3 and array is not None and array[1] is None:
                spans.append((element, position + 1))
            elif depth == 2 and array is not None and array[1] is None:
                array[1] = position + 1
            depth -= 1
            if depth < 0:
                return None
    if array is None or array[1] is None or not _only_commas_between(raw, array, spans):
        return None
    return (array[0], array[1]), spans


def _emptied(raw: bytes, array: tuple[int, int]) -> bytes:
    return raw[: array[0]] + b"[]" + raw[array[1] :]


def _key_before(raw: bytes, position: int, quoted_key: bytes) -> bool:
    """The bracket at `position` opens the value of the key: `{` or `,`, the quoted key, `:`, blanks between."""
    before = raw[max(0, position - len(quoted_key) - 256) : position].rstrip(b" \t\r\n")
    if not before.endswith(b":"):
        return False
    before = before[:-1].rstrip(b" \t\r\n")
    return before.endswith(quoted_key) and before[: -len(quoted_key)].rstrip(b" \t\r\n")[-1:] in (b"{", b",")


def _only_commas_between(raw: bytes, array: list[int], spans: list[tuple[int, int]]) -> bool:
    """Nothing but blanks and single commas between the elements: no scalar or missing comma hides there."""
    position = array[0] + 1
    for index, (start, end) in enumerate(spans):
        gap = BLANK if index == 0 else BETWEEN_ELEMENTS
        if gap.fullmatch(raw, position, start) is None:
            return False
        position = end
    return BLANK.fullmatch(raw, position, array[1] - 1) is not None
