"""What every lesson route answers: where and when its body ran, on the console and as JSON.

``run_record`` prints a ``start`` line as the body begins and an ``end`` line
as it ends (``APP_CONSOLE=0`` silences them), and fills in the record the route
answers: its ``route`` and parameters, the process and thread that ran it,
whether an event loop runs in that thread, and ``started``/``finished`` in Unix
time, so calls from different routes sit on one clock.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import sys
import threading
import time
from typing import Any

from starlette import responses
from starlette.requests import Request

from plumbing.settings import settings_of

REQUEST_NUMBERS = itertools.count(1)  # the #N of the console lines, per server process


class JSONResponse(responses.JSONResponse):
    """Starlette's JSON answer plus a final newline, so two ``curl``s in a row print two lines."""

    def render(self, content: Any) -> bytes:
        return super().render(content) + b"\n"


def where_am_i() -> dict[str, Any]:
    """The process and thread running this line, and whether an event loop runs in that thread."""
    thread = threading.current_thread()
    try:
        asyncio.get_running_loop()
        on_event_loop = True
    except RuntimeError:
        on_event_loop = False  # a worker thread or process: no event loop runs here
    return {"pid": os.getpid(), "thread": thread.name, "thread_id": thread.native_id, "on_event_loop": on_event_loop}


class run_record:
    """``with run_record(request, delay=d) as record:``: a start line, the body, an end line, and the record.

    A class, like ``contextlib.suppress``: a generator-based context manager
    costs about twice as much, and this one runs on every lesson request. If
    the body fails, there is no end line and no ``finished``: it did not finish.
    """

    __slots__ = ("console", "number", "params", "record")

    def __init__(self, request: Request, **params: float) -> None:
        self.console = settings_of(request).console
        self.number = next(REQUEST_NUMBERS)
        self.params = params
        # The path as routed, the same in every line and answer.
        self.record: dict[str, Any] = {"route": request.scope["route"].path, **params, **where_am_i()}

    def __enter__(self) -> dict[str, Any]:
        record = self.record
        if self.console:
            shown = " ".join(f"{key}={value}" for key, value in self.params.items())
            say(f"start {record['route']} #{self.number} {shown} thread={record['thread']} ({record['thread_id']})")
        record["started"] = time.time()
        return record

    def __exit__(self, failed: type[BaseException] | None, *_: object) -> None:
        if failed is not None:
            return
        record = self.record
        record["finished"] = time.time()
        if self.console:
            say(f"end   {record['route']} #{self.number} took {record['finished'] - record['started']:.3f}s")


def say(line: str) -> None:
    """One console line, on its way at once (stdout is block-buffered when it is a file or a pipe)."""
    sys.stdout.write(line + "\n")  # one call, where print() makes two (the text, then the newline)
    sys.stdout.flush()
