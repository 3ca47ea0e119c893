"""A JSON 503, not a traceback, for the requests that uvicorn's graceful-shutdown timeout cuts short.

With ``--timeout-graceful-shutdown N``, uvicorn cancels the requests still
running N seconds after a SIGTERM. Left alone, that cancellation reaches uvicorn
as an error: the client gets a plain-text 500 and the log a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from starlette.types import ASGIApp, Receive, Scope, Send

from plumbing.record import JSONResponse

UVICORN_SHUTDOWN_CANCEL = "timeout graceful shutdown exceeded"  # uvicorn 0.54's message on the cancellation
SERVER_LOG = logging.getLogger("uvicorn.error")  # uvicorn's own log, in its format


class ShutdownMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        except asyncio.CancelledError as cancel:
            if UVICORN_SHUTDOWN_CANCEL not in str(cancel):
                raise  # any other cancellation is not ours to swallow
            # The task ends here either way; answering instead of re-raising is what keeps
            # the client's answer JSON and the log free of a traceback.
            SERVER_LOG.warning("%s %s cut by shutdown: answered 503", scope["method"], scope["path"])
            answer = JSONResponse({"detail": "the server is shutting down"}, 503, {"Connection": "close"})
            # A response already under way cannot take a new status line: uvicorn refuses it with a
            # RuntimeError, and the client keeps what it got. Not watching send() saves every request a step.
            with contextlib.suppress(RuntimeError):
                await answer(scope, receive, send)
