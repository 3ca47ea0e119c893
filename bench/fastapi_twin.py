"""The three ping routes written the usual FastAPI way, for the benchmark to compare.

Path operations with a validated query parameter, a dict returned for FastAPI
to serialize, and the timing headers added by ``@app.middleware("http")``,
which builds a ``BaseHTTPMiddleware``. The bodies are the app's own: the same
``run_record`` (console lines and answer fields) and the same settings, read
from the environment and handed over by the lifespan, so only the framework
around them differs. FastAPI is a benchmark requirement
(``requirements-bench.txt``), never one of the app's.

Serve it with ``uvicorn bench.fastapi_twin:app``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import anyio
from fastapi import FastAPI, Query, Request

from bench.variants import add_timing_headers
from plumbing.record import run_record
from plumbing.settings import Settings

SETTINGS = Settings.from_env()
Delay = Annotated[float, Query(ge=0, le=SETTINGS.max_delay, allow_inf_nan=False)]


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
    yield {"settings": SETTINGS}  # what run_record reads, as in the app


app = FastAPI(lifespan=lifespan)
app.middleware("http")(add_timing_headers)


@app.get("/ping/blocking")
async def ping_blocking(request: Request, delay: Delay = 1.0) -> dict[str, Any]:
    with run_record(request, delay=delay) as record:
        time.sleep(delay)  # noqa: ASYNC251 - blocks the event loop, on purpose
    return record


@app.get("/ping/async")
async def ping_async(request: Request, delay: Delay = 1.0) -> dict[str, Any]:
    with run_record(request, delay=delay) as record:
        await anyio.sleep(delay)  # yields the event loop
    return record


@app.get("/ping/thread")
def ping_thread(request: Request, delay: Delay = 1.0) -> dict[str, Any]:
    with run_record(request, delay=delay) as record:
        time.sleep(delay)  # blocks this worker thread only
    return record
