"""Guards in front of every route: body size and shape, per-client rate, and a request log free of PHI."""

import hashlib
import logging
import re
import secrets
import threading
import time
from urllib.parse import unquote_to_bytes

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from ecrf.common.failures import types_and_frames
from ecrf.config import Settings
from ecrf.errors import error_response, is_fhir
from ecrf.json_rules import Refusal, parse_json_body
from ecrf.json_stream import StreamedObject

log = logging.getLogger("ecrf.access")
failures = logging.getLogger("ecrf.errors")

JSON_MEDIA_TYPES = frozenset({"application/json", "application/fhir+json", "application/json-patch+json"})
FORM_MEDIA_TYPE = "application/x-www-form-urlencoded"  # POST [type]/_search only: search parameters in the body
URL_CONTROL_BYTE = re.compile(rb"[\x00-\x1f\x7f]")
INSPECT_IN_THREAD_BYTES = 256 * 1024


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

    def __init__(
        self,
        app,
        settings: Settings,
        bundle_paths: frozenset[str] = frozenset(),
        form_paths: frozenset[str] = frozenset(),
    ):
        self.app = app
        self.form_paths = form_paths  # routes that read their own (form-encoded) body: the OAuth token endpoint
        self.settings = settings
        self.bundle_paths = bundle_paths  # where POSTed bodies are Bundles: large ones are read entry by entry
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
                log.info(
                    "%s %s %s %.1fms",
                    scope["method"],
                    _logged_path(scope),
                    status_holder["status"] or 500,
                    (time.perf_counter() - started) * 1000,
                )

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
                    await _refuse(
                        scope,
                        receive,
                        send_logged,
                        Refusal(500, f"internal error (incident {incident})", "internal", "exception", item="request"),
                    )
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
                raise Refusal(
                    429,
                    "too many requests: slow down",
                    "rate_limit",
                    "throttled",
                    item="request",
                    headers={"Retry-After": str(max(1, int(wait + 0.999)))},
                )
        if URL_CONTROL_BYTE.search(scope["path"].encode("utf-8", "surrogateescape")):
            raise Refusal(400, "the path contains a control character", "control_character", "invalid", item="path")
        query = scope.get("query_string", b"")
        if query and URL_CONTROL_BYTE.search(unquote_to_bytes(query.replace(b"+", b" "))):
            raise Refusal(
                400, "the query string contains a control character", "control_character", "invalid", item="query"
            )
        if query:
            self._check_parameter_counts(query)

    def _check_parameter_counts(self, query: bytes) -> None:
        """Bounded work per request: each parameter is a condition of the search (a join), and a planner
        given hundreds of them takes minutes (ECRF_MAX_QUERY_PARAMETERS, ECRF_MAX_REPEATED_PARAMETER)."""
        names = [unquote_to_bytes(part.split(b"=", 1)[0].replace(b"+", b" ")) for part in query.split(b"&") if part]
        if len(names) > self.settings.max_query_parameters:
            raise Refusal(
                400,
                f"the query string has {len(names)} parameters; the limit is {self.settings.max_query_parameters}",
                "max_query_parameters",
                "too-costly",
                item="query",
            )
        counts: dict[bytes, int] = {}
        for name in names:
            counts[name] = counts.get(name, 0) + 1
        name, most = max(counts.items(), key=lambda pair: pair[1])
        if most > self.settings.max_repeated_parameter:
            shown = name.decode("utf-8", "replace")[:64]
            raise Refusal(
                400,
                f"parameter {shown!r} is repeated {most} times; the limit is {self.settings.max_repeated_parameter}",
                "max_repeated_parameter",
                "too-costly",
                item=shown,
            )

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
        if scope["path"] in self.form_paths:
            return body  # read and checked by its route (size limit and rate limit applied above)
        content_type = dict(scope.get("headers") or []).get(b"content-type", b"").decode("latin-1")
        media_type, _, parameters = content_type.partition(";")
        charset = re.search(r"charset\s*=\s*\"?([^\";\s]+)", parameters, re.IGNORECASE)
        if (
            media_type.strip().lower() == FORM_MEDIA_TYPE
            and scope["method"] == "POST"
            and scope["path"].endswith("/_search")
        ):
            if URL_CONTROL_BYTE.search(unquote_to_bytes(body.replace(b"+", b" "))):
                raise Refusal(
                    400,
                    "the search parameters contain a control character",
                    "control_character",
                    "invalid",
                    item="body",
                )
            return body
        if media_type.strip().lower() not in JSON_MEDIA_TYPES or (charset and charset.group(1).lower() != "utf-8"):
            shown = media_type.strip() or "none"
            raise Refusal(
                415,
                f"content type {shown!r} is not supported: send application/json (or application/fhir+json), UTF-8",
                "content_type",
                "not-supported",
                item="Content-Type",
            )
        state = scope.setdefault("state", {})
        if (
            len(body) > self.settings.stream_bundle_bytes
            and scope["method"] == "POST"
            and scope["path"] in self.bundle_paths
        ):
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
    failures.error(
        "incident %s: unhandled %s in %s %s (message withheld: it may hold patient data)\n%s",
        incident,
        type(error).__qualname__,
        scope["method"],
        _logged_path(scope),
        types_and_frames(error),
    )
    return incident


def _client_key(scope, headers) -> str:
    """A client is its bearer token (hashed), else its browser session (the web door's cookie, hashed: the
    users of a hospital often share one address), else its address."""
    authorization = headers.get(b"authorization")
    if authorization:
        return hashlib.sha256(authorization).hexdigest()
    session = re.search(rb"(?:^|;\s*)ecrf_session=([^;]+)", headers.get(b"cookie", b""))
    if session:
        return "session:" + hashlib.sha256(session.group(1)).hexdigest()
    client = scope.get("client") or ("unknown", 0)
    return f"addr:{client[0]}"


async def _refuse(scope, receive, send, refusal: Refusal) -> None:
    request = Request(scope, receive)
    if is_fhir(request):
        response = error_response(
            request,
            refusal.status,
            refusal.message,
            code=refusal.code,
            location=refusal.location(fhir=True),
            headers=refusal.headers,
        )
    else:
        errors = [{"item": refusal.location(fhir=False), "rule": refusal.rule, "message": refusal.message}]
        response = error_response(request, refusal.status, refusal.message, errors=errors, headers=refusal.headers)
    await response(scope, receive, send)
