"""The three ping routes written the usual FastAPI way, for ``bench.py`` to compare.

Path operations with a validated query parameter, a dict returned for FastAPI
to serialize, and the timing headers added by ``@app.middleware("http")``,
which builds a ``BaseHTTPMiddleware``. The bodies print the same two console
lines per request as the app's pings and answer the same fields, so only the
framework around them differs. FastAPI is a benchmark requirement
(``requirements-bench.txt``), never one of the app's.

Serve it with ``uvicorn bench_fastapi:app``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Annotated, Any

import anyio
from fastapi import FastAPI, Query, Request, Response

MAX_DELAY = float(os.environ.get("APP_MAX_DELAY") or 10)  # the app's setting and default
Delay = Annotated[float, Query(ge=0, le=MAX_DELAY, allow_inf_nan=False)]
REQUEST_NUMBERS = itertools.count(1)

app = FastAPI()


@app.middleware("http")
async def add_timing_headers(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    start = time.perf_counter()
    response = await call_next(request)  # the rest of the app runs in another task, behind memory streams
    elapsed = time.perf_counter() - start
    response.headers["X-Process-Time"] = f"{elapsed:.6f}"
    response.headers["Server-Timing"] = f"app;dur={elapsed * 1000:.3f}"
    return response


@contextlib.contextmanager
def ping_record(route: str, delay: float) -> Iterator[dict[str, Any]]:
    """The same console lines and answer fields as the app's pings."""
    number, thread = next(REQUEST_NUMBERS), threading.current_thread()
    try:
        on_event_loop = asyncio.get_running_loop() is not None
    except RuntimeError:
        on_event_loop = False  # a worker thread
    record: dict[str, Any] = {
        "route": route,
        "delay": delay,
        "pid": os.getpid(),
        "thread": thread.name,
        "thread_id": thread.native_id,
        "on_event_loop": on_event_loop,
    }
    print(f"start {route} #{number} delay={delay} thread={thread.name} ({thread.native_id})", flush=True)
    record["started"] = time.time()
    yield record
    record["finished"] = time.time()
    print(f"end   {route} #{number} took {record['finished'] - record['started']:.3f}s", flush=True)


@app.get("/ping/blocking")
async def ping_blocking(delay: Delay = 1.0) -> dict[str, Any]:
    with ping_record("/ping/blocking", delay) as record:
        time.sleep(delay)  # noqa: ASYNC251 - blocks the event loop, on purpose
    return record


@app.get("/ping/async")
async def ping_async(delay: Delay = 1.0) -> dict[str, Any]:
    with ping_record("/ping/async", delay) as record:
        await anyio.sleep(delay)  # yields the event loop
    return record


@app.get("/ping/thread")
def ping_thread(delay: Delay = 1.0) -> dict[str, Any]:
    with ping_record("/ping/thread", delay) as record:
        time.sleep(delay)  # blocks this worker thread only
    return record
