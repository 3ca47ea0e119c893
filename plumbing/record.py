"""What every lesson route answers: where and when its body ran, on the console and as JSON.

``run_record`` prints a ``start`` line as the body begins and an ``end`` line
as it ends (``APP_CONSOLE=0`` silences them), and fills in the record the route
answers: its ``route`` and parameters, the process and thread that ran it,
whether an event loop runs in that thread, and ``started``/``finished`` in Unix
time, so calls from different routes sit on one clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import threading
import time
from collections.abc import Iterator
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


@contextlib.contextmanager
def run_record(request: Request, **params: float) -> Iterator[dict[str, Any]]:
    """Prints a start and an end line, and fills in where and when the body ran."""
    route = request.scope["route"].path  # the path as routed, the same in every line and answer
    number, console = next(REQUEST_NUMBERS), settings_of(request).console
    record: dict[str, Any] = {"route": route, **params, **where_am_i()}
    shown = " ".join(f"{key}={value}" for key, value in params.items())
    if console:
        print(f"start {route} #{number} {shown} thread={record['thread']} ({record['thread_id']})", flush=True)
    record["started"] = time.time()
    yield record
    record["finished"] = time.time()
    if console:
        print(f"end   {route} #{number} took {record['finished'] - record['started']:.3f}s", flush=True)
