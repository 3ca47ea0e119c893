"""What FastAPI does underneath, in plain Starlette.

One event loop runs every ``async def`` endpoint. An endpoint that blocks
(``time.sleep``, a sync HTTP client, a long computation) stops that loop, so
every other request waits. Awaiting yields the loop; a plain ``def`` endpoint
is sent to AnyIO's thread pool. Each route below shows one of these choices,
and ``TimingMiddleware`` times every response without ``BaseHTTPMiddleware``.

Run it with ``uvicorn asgi_app:app``; ``GET /`` lists the routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.to_thread
from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Every knob of the app; ``from_env`` reads them once, at import."""

    max_delay: float = 10.0  # APP_MAX_DELAY: largest ?delay= a ping accepts, seconds
    thread_tokens: int = 40  # APP_THREAD_TOKENS: AnyIO thread pool size (AnyIO's default)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Settings:
        def read(name: str, kind: type, default: Any) -> Any:
            raw = environ.get(name)
            if raw is None or raw == "":
                return default
            try:
                return kind(raw)
            except ValueError:
                raise ValueError(f"{name}={raw!r} is not a valid {kind.__name__}") from None

        return cls(
            max_delay=read("APP_MAX_DELAY", float, cls.max_delay),
            thread_tokens=read("APP_THREAD_TOKENS", int, cls.thread_tokens),
        )


# ---------------------------------------------------------------- middleware


class TimingMiddleware:
    """Adds ``X-Process-Time`` (seconds) and ``Server-Timing`` (milliseconds).

    It measures from the moment the request reaches this middleware to the
    moment the app sends the response headers (``http.response.start``): the
    time to first byte as the server sees it. A streamed body that is still
    being produced after that is not included, because headers cannot change
    once sent. Pure ASGI: no ``BaseHTTPMiddleware``, no extra task per request.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan and websocket pass through untouched
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()

        async def send_with_timing(message: Message) -> None:
            if message["type"] == "http.response.start":
                elapsed = time.perf_counter() - start
                headers = MutableHeaders(scope=message)
                # Assignment replaces an existing value, so the headers never repeat.
                headers["X-Process-Time"] = f"{elapsed:.6f}"
                headers["Server-Timing"] = f"app;dur={elapsed * 1000:.3f}"
            await send(message)

        await self.app(scope, receive, send_with_timing)


# --------------------------------------------------------------------- pings

REQUEST_NUMBERS = itertools.count(1)


def read_delay(request: Request) -> float:
    """The ``?delay=`` seconds: one finite number from 0 to the configured maximum."""
    max_delay = request.app.state.settings.max_delay
    values = request.query_params.getlist("delay")
    if not values:
        return 1.0
    if len(values) > 1:
        raise HTTPException(400, f"delay given {len(values)} times; give it once")
    try:
        delay = float(values[0])
    except ValueError:
        raise HTTPException(400, f"delay must be a number of seconds, got {values[0]!r}") from None
    if not math.isfinite(delay) or not 0 <= delay <= max_delay:
        raise HTTPException(400, f"delay must be between 0 and {max_delay:g} seconds, got {values[0]!r}")
    return delay


def on_event_loop_thread() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False  # a worker thread: no event loop runs here
    return True


@contextlib.contextmanager
def ping_record(route: str, delay: float) -> Iterator[dict[str, Any]]:
    """Prints a start and an end line, and fills in where and when the body ran."""
    number = next(REQUEST_NUMBERS)
    thread = threading.current_thread()
    record: dict[str, Any] = {
        "route": route,
        "delay": delay,
        "pid": os.getpid(),
        "thread": thread.name,
        "thread_id": thread.native_id,
        "on_event_loop": on_event_loop_thread(),
    }
    print(f"start {route} #{number} delay={delay:g} thread={thread.name} ({thread.native_id})", flush=True)
    record["started"] = time.time()
    yield record
    record["finished"] = time.time()
    print(f"end   {route} #{number} took {record['finished'] - record['started']:.3f}s", flush=True)


async def ping_blocking(request: Request) -> JSONResponse:
    delay = read_delay(request)
    with ping_record("/ping/blocking", delay) as record:
        time.sleep(delay)  # blocks the event loop: no other request runs until it returns
    return JSONResponse(record)


async def ping_async(request: Request) -> JSONResponse:
    delay = read_delay(request)
    with ping_record("/ping/async", delay) as record:
        await anyio.sleep(delay)  # yields the event loop: other requests run meanwhile
    return JSONResponse(record)


def ping_thread(request: Request) -> JSONResponse:
    # A plain def: Starlette hands the whole call to anyio.to_thread.run_sync,
    # so it holds one thread-pool token from here to the return.
    delay = read_delay(request)
    with ping_record("/ping/thread", delay) as record:
        time.sleep(delay)  # blocks this worker thread only; the event loop stays free
    return JSONResponse(record)


# ----------------------------------------------------------- index, health

ROUTE_GUIDE: dict[str, tuple[str, str]] = {
    "/ping/blocking": ("async def + time.sleep: blocks the event loop, calls run one after another", "?delay=1"),
    "/ping/async": ("async def + await anyio.sleep: yields the loop, calls overlap", "?delay=1"),
    "/ping/thread": ("plain def + time.sleep: runs in the AnyIO thread pool, overlaps up to its size", "?delay=1"),
    "/healthz": ("liveness and thread-pool use (tokens borrowed / total)", ""),
}


async def index(request: Request) -> JSONResponse:
    host, port = request.scope["server"] or ("127.0.0.1", 8000)
    base = f"http://{host}:{port}"
    routes = [
        {"path": path, "what": what, "try": f"curl '{base}{path}{query}'"}
        for path, (what, query) in ROUTE_GUIDE.items()
    ]
    return JSONResponse({"app": "asgi_app", "routes": routes})


async def healthz(request: Request) -> JSONResponse:
    limiter = anyio.to_thread.current_default_thread_limiter()
    pool = {"borrowed": limiter.borrowed_tokens, "total": limiter.total_tokens}
    return JSONResponse({"status": "ok", "pid": os.getpid(), "thread_pool": pool})


# -------------------------------------------------------- errors, lifespan


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


async def server_error(request: Request, exc: Exception) -> JSONResponse:
    # The traceback goes to the server log (uvicorn prints it), never to the client.
    # Starlette re-raises after this answer and uvicorn then drops the connection,
    # so tell the client not to reuse it.
    return JSONResponse({"detail": "Internal Server Error"}, status_code=500, headers={"Connection": "close"})


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
    settings: Settings = app.state.settings
    # The default limiter belongs to the running event loop, so size it here, not at import.
    anyio.to_thread.current_default_thread_limiter().total_tokens = settings.thread_tokens
    yield {}


def create_app(settings: Settings) -> ASGIApp:
    routes = [
        Route("/", index),
        Route("/ping/blocking", ping_blocking),
        Route("/ping/async", ping_async),
        Route("/ping/thread", ping_thread),
        Route("/healthz", healthz),
    ]
    starlette_app = Starlette(
        routes=routes,
        exception_handlers={HTTPException: http_error, Exception: server_error},
        lifespan=lifespan,
    )
    starlette_app.state.settings = settings
    # Outside Starlette's own ServerErrorMiddleware, so even its 500 answer gets timed;
    # middleware=[Middleware(TimingMiddleware)] would sit inside it and miss that case.
    return TimingMiddleware(starlette_app)


app = create_app(Settings.from_env())
