"""The one place identified reads are recorded: a response hook that writes what the response shows
(`ecrf.audit.access.service.shown`) to the access log before its bytes leave.

A door says what it is about to show; this hook records it once the response is built and only when it
is a success (a refused or failed read shows nothing). The response's start (status and headers) is held
until its first body chunk, and what was said shown by then is recorded before both leave: if the insert
fails the response fails, answered by the app's own error handlers (a database outage is 503). A streamed
response that says more as it goes (a CSV, rows known only as they are read) has it recorded before the
chunk that shows it; if that insert fails the stream is broken off there, the chunk unsent. Identifiers
never leave unrecorded.
"""

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ecrf.audit.access.service import NOTES, record_notes


class RecordAccess:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        notes: list[Any] = []
        scope.setdefault("state", {})[NOTES] = notes
        start: Message | None = None  # held until the first body chunk
        started = replaced = False

        async def record() -> None:
            pending = list(notes)
            notes.clear()
            await run_in_threadpool(
                record_notes, scope["app"].state.runtime.engine, f"{scope['method']} {Request(scope).url.path}", pending
            )

        async def send_recorded(message: Message) -> None:
            nonlocal start, started, replaced
            if replaced:
                return  # the response was answered by the error handler instead
            if message["type"] == "http.response.start":
                start = message
                return
            if not message["type"].startswith("http.response.") or start is None:  # body, pathsend, trailers
                await send(message)
                return
            if notes and start["status"] < 400:
                if not started:
                    try:
                        await record()
                    except Exception as error:  # noqa: BLE001 - answered as the app answers it, or raised
                        handler = _handler(scope["app"], error)
                        if handler is None:
                            raise
                        replaced = True
                        response = await handler(Request(scope), error)
                        await response(scope, receive, send)
                        return
                else:
                    await record()  # a failure breaks the stream off before this chunk
            if not started:
                started = True
                await send(start)
            await send(message)

        await self.app(scope, receive, send_recorded)


def _handler(app: Any, error: Exception) -> Any:
    """The app's exception handler for `error`, found as Starlette finds it (by the exception's classes)."""
    handlers = getattr(app, "exception_handlers", {})
    for cls in type(error).__mro__:
        if cls in handlers and cls is not Exception:
            return handlers[cls]
    return None
