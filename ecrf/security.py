"""Guards in front of every route: body size and shape, per-client rate, and a request log free of PHI."""
import hashlib
import json
import logging
import re
import secrets
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_to_bytes

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from ecrf.config import Settings
from ecrf.errors import error_response, is_fhir

log = logging.getLogger("ecrf.access")
failures = logging.getLogger("ecrf.errors")

JSON_MEDIA_TYPES = frozenset({"application/json", "application/fhir+json"})
CONTROL_CHARACTER = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f]")  # C0 except tab, newline, carriage return
URL_CONTROL_BYTE = re.compile(rb"[\x00-\x1f\x7f]")
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
INSPECT_IN_THREAD_BYTES = 256 * 1024
STREAMED_BUNDLES = frozenset({("POST", "/fhir"), ("POST", "/fhir/")})  # large Bundles are read entry by entry
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
        raise Refusal(422, "a number has more digits than a FHIR decimal allows (18 before the decimal point, "
                           "17 after): it could not be stored exactly", "number_digits", "value")


def _long_digit_runs(raw: bytes):
    """Where 19 digits, or a point and 18 digits, start; a slice of the body translated at a time."""
    for start in range(0, len(raw), SCAN_SLICE):
        piece = raw[start:start + SCAN_SLICE + 19].translate(DIGITS_TO_ZERO)
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
        raise Refusal(400, f"the key {repeated!r} appears twice in one object", "duplicate_key", "structure",
                      path=path, resource_type=resource_type)


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
            raise Refusal(413, f"the body has more than {max_elements} JSON values (ECRF_MAX_JSON_ELEMENTS)",
                          "max_json_elements", "too-costly")
        if type(container) is dict:
            if len(container) > MAX_OBJECT_KEYS:
                raise Refusal(413, f"an object in the body has more than {MAX_OBJECT_KEYS} keys", "max_object_keys",
                              "too-costly")
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
                raise Refusal(422, f"control character U+{ord(found.group()):04X} is not allowed in text "
                                   "(only tab, line feed and carriage return are)", "control_character", "value",
                              path=path, resource_type=resource_type if isinstance(resource_type, str) else None)
        elif isinstance(value, dict):
            stack.extend((key, path) for key in value)
            stack.extend((member, (*path, key)) for key, member in value.items())
        elif isinstance(value, list):
            stack.extend((member, (*path, index)) for index, member in enumerate(value))


def too_deep(max_depth: int) -> Refusal:
    return Refusal(413, f"the body nests deeper than {max_depth} levels (ECRF_MAX_JSON_DEPTH)", "max_json_depth",
                   "too-costly")


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


def loggable_path(path: str, path_params: dict | None) -> str:
    """The path with every path parameter replaced by its name; query strings are never logged.

    A path no route matched keeps only its first two segments, since any later one may be an identifier.
    """
    segments = path.split("/")
    short = "/".join(segments[:3]) + ("/…" if len(segments) > 3 else "")
    if path_params is None:
        return short
    values = {}
    for name, value in path_params.items():
        text = str(value)
        if "/" not in text:
            values[text] = name
        elif path.endswith("/" + text):  # a {rest:path} parameter spans several segments
            path = path[: -len(text)] + "{" + name + "}"
        else:
            return short
    return "/".join("{" + values[segment] + "}" if segment in values else segment for segment in path.split("/"))


class MaskedServerAccessLog(logging.Filter):
    """uvicorn's own access line (on whenever its logger has a handler) names the raw request target:
    identifiers in paths, MRNs and names in query strings. It keeps only what ecrf.access shows of a path."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and len(record.args) == 5:
            client, method, target, version, status = record.args
            record.args = (client, method, loggable_path(str(target).split("?", 1)[0], None), version, status)
        else:
            record.msg, record.args = "request (details withheld; see ecrf.access)", ()
        return True


def mask_server_access_log() -> None:
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(existing, MaskedServerAccessLog) for existing in access.filters):
        access.addFilter(MaskedServerAccessLog())


class RequestGuard:
    """Pure ASGI middleware, so it can refuse a request before any route parses it.

    Every body is read here (up to ECRF_MAX_BODY_BYTES) and must be strict JSON of a JSON media type; the
    parsed document is left in the request state, so the FHIR door does not parse it again. An exception
    no handler answered ends here: logged without its message, answered 500 with an incident id.
    """

    def __init__(self, app, settings: Settings):
        self.app = app
        self.settings = settings
        self.max_body = settings.max_body_bytes
        self.rate = settings.rate_limit_per_minute
        self.buckets: dict[str, tuple[float, float]] = {}
        self.lock = threading.Lock()
        mask_server_access_log()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status_holder: dict[str, int | None] = {"status": None}
        logged = False

        def log_once() -> None:
            nonlocal logged
            if not logged:
                logged = True
                log.info("%s %s %s %.1fms", scope["method"], _logged_path(scope), status_holder["status"] or 500,
                         (time.perf_counter() - started) * 1000)

        async def send_logged(message):
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                log_once()  # before the last byte leaves, so the line exists once the client has its answer
            await send(message)

        try:
            try:
                self._check_head(scope)
                body = await self._read_body(receive)
                if body:
                    body = await self._check_body(scope, body)
            except Refusal as refusal:
                await _refuse(scope, receive, send_logged, refusal)
                return
            try:
                await self.app(scope, _replay(body, receive), send_logged)
            except Exception as error:  # noqa: BLE001 - reported without its message, which may quote PHI
                incident = _report_failure(scope, error)
                if status_holder["status"] is None:
                    await _refuse(scope, receive, send_logged, Refusal(
                        500, f"internal error (incident {incident})", "internal", "exception", item="request"))
        finally:
            log_once()

    def _check_head(self, scope) -> None:
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            if not length.isdigit():
                raise Refusal(400, "Content-Length is not a number", "content_length", "invalid", item="Content-Length")
            if int(length) > self.max_body:
                raise self._too_large()
        if self.rate > 0 and scope["path"] != "/healthz":
            wait = self._take_token(_client_key(scope, headers))
            if wait > 0:
                raise Refusal(429, "too many requests: slow down", "rate_limit", "throttled", item="request",
                              headers={"Retry-After": str(max(1, int(wait + 0.999)))})
        if URL_CONTROL_BYTE.search(scope["path"].encode("utf-8", "surrogateescape")):
            raise Refusal(400, "the path contains a control character", "control_character", "invalid", item="path")
        query = scope.get("query_string", b"")
        if query and URL_CONTROL_BYTE.search(unquote_to_bytes(query.replace(b"+", b" "))):
            raise Refusal(400, "the query string contains a control character", "control_character", "invalid",
                          item="query")

    def _too_large(self) -> Refusal:
        return Refusal(413, f"request body exceeds {self.max_body} bytes", "max_body_bytes", "too-costly")

    def _take_token(self, client: str) -> float:
        """Token bucket of `rate` requests per minute; returns seconds to wait, 0 when allowed."""
        now = time.monotonic()
        per_second = self.rate / 60.0
        with self.lock:
            tokens, last = self.buckets.get(client, (float(self.rate), now))
            tokens = min(float(self.rate), tokens + (now - last) * per_second)
            if tokens < 1:
                self.buckets[client] = (tokens, now)
                return (1 - tokens) / per_second
            self.buckets[client] = (tokens - 1, now)
            if len(self.buckets) > 100_000:
                self.buckets.clear()
            return 0.0

    async def _read_body(self, receive) -> bytes:
        """The whole body, read up to the limit (a chunked body has no Content-Length to check first)."""
        chunks, seen = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.max_body:
                raise self._too_large()
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    async def _check_body(self, scope, body: bytes) -> bytes:
        """Check the body and leave it parsed in the request state; returns what the route may still read
        (nothing, for a streamed Bundle: its bytes belong to the stream, which lets them go once read)."""
        content_type = dict(scope.get("headers") or []).get(b"content-type", b"").decode("latin-1")
        media_type, _, parameters = content_type.partition(";")
        charset = re.search(r"charset\s*=\s*\"?([^\";\s]+)", parameters, re.IGNORECASE)
        if media_type.strip().lower() not in JSON_MEDIA_TYPES or (charset and charset.group(1).lower() != "utf-8"):
            shown = media_type.strip() or "none"
            raise Refusal(415, f"content type {shown!r} is not supported: send application/json "
                               "(or application/fhir+json), UTF-8", "content_type", "not-supported", item="Content-Type")
        state = scope.setdefault("state", {})
        if len(body) > self.settings.stream_bundle_bytes and (scope["method"], scope["path"]) in STREAMED_BUNDLES:
            from ecrf.json_stream import StreamedObject

            streamed = await run_in_threadpool(StreamedObject.read, body, "entry", self.settings)
            if streamed is not None:
                state["json_body"] = streamed
                return b""
        if len(body) > INSPECT_IN_THREAD_BYTES:
            state["json_body"] = await run_in_threadpool(parse_json_body, body, self.settings)
        else:
            state["json_body"] = parse_json_body(body, self.settings)
        return body


def _replay(body: bytes, receive):
    replayed = False

    async def replay():
        nonlocal replayed
        if replayed:
            return await receive()
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


def _logged_path(scope) -> str:
    return loggable_path(scope["path"], scope.get("path_params", {}) if "endpoint" in scope else None)


def _report_failure(scope, error: BaseException) -> str:
    """Log an exception no handler answered by its types and frames only: its message may quote stored
    values (SQL parameters, a database's DETAIL line), so it never reaches the log. Returns the incident id."""
    incident = secrets.token_hex(6)
    failures.error("incident %s: unhandled %s in %s %s (message withheld: it may hold patient data)\n%s", incident,
                   type(error).__qualname__, scope["method"], _logged_path(scope), types_and_frames(error))
    return incident


def types_and_frames(error: BaseException) -> str:
    """What a log may say of an exception: the types of it and of its causes, and where each was raised; never
    a message, which may quote stored values (SQL parameters, a database's DETAIL line)."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain and len(chain) < 5:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return "".join(f"{type(link).__module__}.{type(link).__qualname__}, raised at:\n"
                   + "".join(traceback.format_list(traceback.extract_tb(link.__traceback__)))
                   for link in chain)


def _client_key(scope, headers) -> str:
    """A client is its bearer token (hashed) or, without one, its address."""
    authorization = headers.get(b"authorization")
    if authorization:
        return hashlib.sha256(authorization).hexdigest()
    client = scope.get("client") or ("unknown", 0)
    return f"addr:{client[0]}"


async def _refuse(scope, receive, send, refusal: Refusal) -> None:
    request = Request(scope, receive)
    if is_fhir(request):
        response = error_response(request, refusal.status, refusal.message, code=refusal.code,
                                  location=refusal.location(fhir=True), headers=refusal.headers)
    else:
        errors = [{"item": refusal.location(fhir=False), "rule": refusal.rule, "message": refusal.message}]
        response = error_response(request, refusal.status, refusal.message, errors=errors, headers=refusal.headers)
    await response(scope, receive, send)
