"""What the benchmark serves beside the app: the same app minus a part, plain Starlette, or no framework.

Each entry of ``VARIANTS`` is what ``uvicorn`` is told to import. The factories
build the app from the same ``Settings.from_env()`` the app itself reads.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Awaitable, Callable

import anyio
from starlette.applications import Starlette
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from asgi_app import TimingMiddleware, build_starlette
from plumbing.record import JSONResponse, where_am_i
from plumbing.settings import Settings
from plumbing.shutdown import ShutdownMiddleware

# name: (uvicorn import string, is a factory, extra environment, what it is)
VARIANTS: dict[str, tuple[str, bool, dict[str, str], str]] = {
    "app": ("asgi_app:app", False, {}, "this app (pure ASGI TimingMiddleware)"),
    "no-timing": ("bench.variants:app_without_timing", True, {}, "this app without TimingMiddleware"),
    "base-http": ("bench.variants:app_with_base_http_middleware", True, {}, "timing by BaseHTTPMiddleware instead"),
    "no-print": ("asgi_app:app", False, {"APP_CONSOLE": "0"}, "this app, ping lines not printed"),
    "no-blocks": ("asgi_app:app", False, {"APP_BLOCK_THRESHOLD": "0"}, "this app, block finder off"),
    "bare-asgi": ("bench.variants:bare_asgi", False, {}, "bare ASGI callable (the ceiling)"),
    "twin": ("bench.variants:starlette_twin", False, {}, "plain Starlette + TimingMiddleware, one route"),
    "fastapi": ("bench.fastapi_twin:app", False, {}, 'FastAPI + @app.middleware("http")'),
}


def app_without_timing() -> ASGIApp:
    return ShutdownMiddleware(build_starlette(Settings.from_env()))  # the app minus its outermost layer


async def add_timing_headers(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    """The usual way to time requests: a ``BaseHTTPMiddleware`` dispatch function."""
    start = time.perf_counter()
    response = await call_next(request)  # the rest of the app runs in another task, behind memory streams
    elapsed = time.perf_counter() - start
    response.headers["X-Process-Time"] = f"{elapsed:.6f}"
    response.headers["Server-Timing"] = f"app;dur={elapsed * 1000:.3f}"
    return response


def app_with_base_http_middleware() -> ASGIApp:
    app = build_starlette(Settings.from_env())
    app.add_middleware(BaseHTTPMiddleware, dispatch=add_timing_headers)
    return ShutdownMiddleware(app)


async def bare_asgi(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers every request with the ping's JSON fields, and does nothing else."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    thread, now = threading.current_thread(), time.time()
    record = {"route": "/ping/async", "delay": 0.0, "pid": os.getpid(), "thread": thread.name}
    record |= {"thread_id": thread.native_id, "on_event_loop": True, "started": now, "finished": now}
    body = json.dumps(record, separators=(",", ":")).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def twin_ping_async(request: Request) -> JSONResponse:
    """``/ping/async`` as plain Starlette would write it: the same answer, none of this app's layers."""
    delay = float(request.query_params.get("delay", 1.0))
    record = {"route": "/ping/async", "delay": delay, **where_am_i(), "started": time.time()}
    await anyio.sleep(delay)
    record["finished"] = time.time()
    return JSONResponse(record)


# What this app's own layers are measured against: Starlette, one route, the same timing middleware.
starlette_twin = TimingMiddleware(Starlette(routes=[Route("/ping/async", twin_ping_async)]))
