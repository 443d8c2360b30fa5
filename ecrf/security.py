"""Guards in front of every route: body size, per-client rate, and a request log free of PHI."""
import hashlib
import logging
import threading
import time

import orjson

from ecrf.config import Settings

log = logging.getLogger("ecrf.access")



def loggable_path(path: str, path_params: dict | None) -> str:
    """The path with every path parameter replaced by its name; query strings are never logged.

    A path no route matched keeps only its first two segments, since any later one may be an identifier.
    """
    if path_params is None:
        segments = path.split("/")
        return "/".join(segments[:3]) + ("/…" if len(segments) > 3 else "")
    values = {str(value): name for name, value in path_params.items()}
    return "/".join("{" + values[segment] + "}" if segment in values else segment for segment in path.split("/"))


class RequestGuard:
    """Pure ASGI middleware, so it can refuse a body before any of it is parsed."""

    def __init__(self, app, settings: Settings):
        self.app = app
        self.max_body = settings.max_body_bytes
        self.rate = settings.rate_limit_per_minute
        self.buckets: dict[str, tuple[float, float]] = {}
        self.lock = threading.Lock()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status_holder = {"status": 500}

        async def send_logged(message):
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
            await send(message)

        try:
            refusal = self._refusal(scope)
            if refusal is not None:
                await _respond(scope, send_logged, *refusal)
                return
            if not _has_length(scope):
                receive = await self._buffered(receive)
                if receive is None:
                    await _respond(scope, send_logged, 413, f"request body exceeds {self.max_body} bytes")
                    return
            await self.app(scope, receive, send_logged)
        finally:
            log.info("%s %s %s %.1fms", scope["method"], loggable_path(scope["path"], scope.get("path_params", {}) if "endpoint" in scope else None), status_holder["status"],
                     (time.perf_counter() - started) * 1000)

    def _refusal(self, scope) -> tuple | None:
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            try:
                if int(length) > self.max_body:
                    return 413, f"request body exceeds {self.max_body} bytes"
            except ValueError:
                return 400, "Content-Length is not a number"
        if self.rate > 0 and scope["path"] != "/healthz":
            wait = self._take_token(_client_key(scope, headers))
            if wait > 0:
                return 429, "too many requests: slow down", {"Retry-After": str(max(1, int(wait + 0.999)))}
        return None

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

    async def _buffered(self, receive):
        """Read a body of unknown length up to the limit; None when it is larger."""
        chunks, seen = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.max_body:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        return replay


def _has_length(scope) -> bool:
    return any(name == b"content-length" for name, _ in scope.get("headers") or [])


def _client_key(scope, headers) -> str:
    """A client is its bearer token (hashed) or, without one, its address."""
    authorization = headers.get(b"authorization")
    if authorization:
        return hashlib.sha256(authorization).hexdigest()
    client = scope.get("client") or ("unknown", 0)
    return f"addr:{client[0]}"


async def _respond(scope, send, status: int, message: str, headers: dict | None = None):
    path = scope["path"]
    if path == "/fhir" or path.startswith("/fhir/"):
        code = {413: "too-costly", 429: "throttled"}.get(status, "invalid")
        body = {"resourceType": "OperationOutcome",
                "issue": [{"severity": "error", "code": code, "diagnostics": message}]}
        media = b"application/fhir+json"
    else:
        body = {"detail": message}
        media = b"application/json"
    payload = orjson.dumps(body)
    raw_headers = [(b"content-type", media), (b"content-length", str(len(payload)).encode())]
    raw_headers += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": payload})
