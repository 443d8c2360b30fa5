"""The one place identified reads are recorded: a response hook that writes what the response shows
(`ecrf.audit.access.service.shown`) to the access log before its first byte leaves.

A door says what it is about to show; this hook records it once the response is built and only when it
is a success (a refused or failed read shows nothing). If the insert fails the response fails, answered
by the app's own error handlers (a database outage is 503): identifiers never leave unrecorded.
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
        replaced = False

        async def send_recorded(message: Message) -> None:
            nonlocal replaced
            if replaced:
                return  # the response was answered by the error handler instead
            if message["type"] == "http.response.start" and notes:
                pending = list(notes)
                notes.clear()
                if message["status"] < 400:
                    try:
                        await run_in_threadpool(record_notes, scope["app"].state.runtime.engine,
                                                f"{scope['method']} {Request(scope).url.path}", pending)
                    except Exception as error:  # noqa: BLE001 - answered as the app answers it, or raised
                        handler = _handler(scope["app"], error)
                        if handler is None:
                            raise
                        replaced = True
                        response = await handler(Request(scope), error)
                        await response(scope, receive, send)
                        return
            await send(message)

        await self.app(scope, receive, send_recorded)


def _handler(app: Any, error: Exception) -> Any:
    """The app's exception handler for `error`, found as Starlette finds it (by the exception's classes)."""
    handlers = getattr(app, "exception_handlers", {})
    for cls in type(error).__mro__:
        if cls in handlers and cls is not Exception:
            return handlers[cls]
    return None
