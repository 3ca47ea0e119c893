"""What FastAPI does underneath, in plain Starlette: why requests run one at a time, or together.

One event loop runs every ``async def`` endpoint. One that blocks it
(``time.sleep``, a sync HTTP client, a long computation) holds up every other
request until it returns; one that ``await``s yields the loop; a plain ``def``
endpoint runs in AnyIO's thread pool. The three pings below show the three;
``TimingMiddleware`` times every response in pure ASGI; the CPU routes go past
one event loop; the universities routes fan out to another service (fetchers in
``universities.py``). Then the routes list, the lifespan and the error mapping.

Elsewhere: ``next_questions.py`` (a client that leaves, background tasks,
streaming, a blocking database driver), ``loop_health.py`` (lag meter),
``live_page.py`` (``/`` and ``/batch``), ``stand_in.py`` (the offline upstream),
and in ``plumbing/`` what the routes stand on (settings, query parameters, the
answer's record, clients, shutdown, ``/healthz``). Run: ``uvicorn asgi_app:app``.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.to_process
import anyio.to_thread
import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import next_questions as next_q
import universities
from live_page import STATIC_DIR, batch, index
from loop_health import watching_the_loop
from plumbing.clients import shared_clients
from plumbing.healthz import healthz
from plumbing.query import read_countries, read_delay, read_max_concurrency, read_n
from plumbing.record import JSONResponse, run_record, where_am_i
from plumbing.settings import SettingError, Settings, settings_of
from plumbing.shutdown import ShutdownMiddleware
from stand_in import stand_in_server

# ------------------------------------------------------------------------- the three pings


async def ping_blocking(request: Request) -> JSONResponse:
    """async def + time.sleep: blocks the event loop, calls run one after another.

    Try: ?delay=1
    """
    delay = read_delay(request)
    with run_record(request, delay=delay) as record:
        time.sleep(delay)  # blocks the event loop: no other request runs until it returns
    return JSONResponse(record)


async def ping_async(request: Request) -> JSONResponse:
    """async def + await anyio.sleep: yields the loop, calls overlap.

    Try: ?delay=1
    """
    delay = read_delay(request)
    with run_record(request, delay=delay) as record:
        await anyio.sleep(delay)  # yields the event loop: other requests run meanwhile
    return JSONResponse(record)


def ping_thread(request: Request) -> JSONResponse:
    """plain def + time.sleep: runs in the AnyIO thread pool, overlaps up to its size.

    Try: ?delay=1
    """
    # A plain def: Starlette hands the whole call to anyio.to_thread.run_sync,
    # so it holds one thread-pool token from here to the return.
    delay = read_delay(request)
    with run_record(request, delay=delay) as record:
        time.sleep(delay)  # blocks this worker thread only; the event loop stays free
    return JSONResponse(record)


# ------------------------------------------------------------------ timing, in pure ASGI

TIMING_HEADERS = (b"x-process-time", b"server-timing")


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
                # Drop any copies the app set, so the headers never repeat. A plain list
                # edit does what MutableHeaders(scope=message) would, at half the cost.
                headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() not in TIMING_HEADERS]
                headers.append((b"x-process-time", b"%.6f" % elapsed))
                headers.append((b"server-timing", b"app;dur=%.3f" % (elapsed * 1000)))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_timing)


# ------------------------------------------------------------ CPU work: past one event loop


def burn_cpu(n: int) -> dict[str, Any]:
    """``n`` rounds of pure-Python arithmetic: it never waits, and holds the GIL throughout."""
    began, computing_began = time.perf_counter(), time.thread_time()
    x = 1
    for _ in range(n):
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF
    # The time it took beside the CPU time it used: a thread that waited for the GIL took longer.
    seconds, cpu_seconds = time.perf_counter() - began, time.thread_time() - computing_began
    return {"result": x, "seconds": round(seconds, 4), "cpu_seconds": round(cpu_seconds, 4), **where_am_i()}


async def cpu_blocking(request: Request) -> JSONResponse:
    """async def + pure-Python loop: freezes the event loop for everyone.

    Try: ?n=5000000
    """
    n = read_n(request)
    with run_record(request, n=n) as record:
        record["work"] = burn_cpu(n)  # computes on the event loop: every other request waits
    return JSONResponse(record)


def cpu_thread(request: Request) -> JSONResponse:
    """plain def + the same loop: loop stays free, but the GIL lets one thread compute at a time.

    Try: ?n=5000000
    """
    n = read_n(request)
    with run_record(request, n=n) as record:
        record["work"] = burn_cpu(n)  # the loop stays free, but threads share one GIL: no speed-up
    return JSONResponse(record)


async def cpu_process(request: Request) -> JSONResponse:
    """anyio.to_process.run_sync: the loop runs in a worker process, on another core.

    Try: ?n=5000000
    """
    n = read_n(request)
    with run_record(request, n=n) as record:
        limiter = request.state.process_limiter
        record["work"] = await anyio.to_process.run_sync(burn_cpu, n, limiter=limiter)  # another process, own GIL
    return JSONResponse(record)


# ------------------------------------------------------- fanning out to another service


def universities_sync(request: Request) -> JSONResponse:
    """plain def + httpx.Client: one upstream call per country, one after another.

    Try: ?country=turkiye&country=india
    """
    # A plain def, so it runs in a worker thread: the blocking client below
    # holds that thread, not the event loop, for the whole loop of calls.
    began, started = time.perf_counter(), time.time()
    countries, upstream = read_countries(request), upstream_for(request)
    results = universities.fetch_all_sync(request.state.sync_client, upstream, countries)  # one call after another
    return universities_json(request, results, began, started)


async def universities_async(request: Request) -> JSONResponse:
    """async def + shared httpx.AsyncClient: all countries at once, bounded.

    Try: ?country=turkiye&country=india
    """
    began, started = time.perf_counter(), time.time()
    countries, limit = read_countries(request), read_max_concurrency(request)
    upstream = await upstream_on_the_loop(request)  # after the checks: a refused request never starts the stand-in
    client = request.state.client
    results = await universities.fetch_all_async(client, upstream, countries, max_concurrency=limit)  # all at once
    return universities_json(request, results, began, started, max_concurrency=limit)


async def universities_gather(request: Request) -> JSONResponse:
    """async def + asyncio.gather: the articles' fan-out; a failure leaves the other calls running.

    Try: ?country=turkiye&country=india
    """
    began, started = time.perf_counter(), time.time()
    countries, upstream = read_countries(request), await upstream_on_the_loop(request)
    limit = settings_of(request).max_concurrency
    # gather, kept beside the task group to show the difference: its abandoned calls run on, unobserved.
    results = await universities.fetch_all_gather(request.state.client, upstream, countries, max_concurrency=limit)
    return universities_json(request, results, began, started, max_concurrency=limit)


def upstream_for(request: Request, base: str = "") -> universities.Upstream:
    settings = settings_of(request)
    # Empty: the stand-in's own process, on a loopback port, started by the first call that needs it.
    base = base or settings.upstream_url.rstrip("/") or request.state.stand_in.started_url()
    return universities.Upstream(
        search_url=f"{base}/search",
        timeout=settings.upstream_timeout,
        max_bytes=settings.upstream_max_bytes,
        slots=request.state.upstream_slots,
    )


async def upstream_on_the_loop(request: Request) -> universities.Upstream:
    """``upstream_for`` in an async def: starting the stand-in would block the loop (the block finder said so)."""
    if settings_of(request).upstream_url:
        return upstream_for(request)
    return upstream_for(request, await request.state.stand_in.started_url_async())


def universities_json(
    request: Request, results: list[universities.CountryResult], began: float, started: float, **extra: Any
) -> JSONResponse:
    elapsed = time.perf_counter() - began
    return JSONResponse(
        {
            "route": request.scope["route"].path,
            **extra,
            "started": started,  # Unix time, like the pings: the batch runner puts every route on one clock
            "finished": started + elapsed,
            "elapsed": round(elapsed, 4),
            "calls": [result.call_json() for result in results],
            "universities": {r.country: [u.to_json() for u in r.universities] for r in results},
        }
    )


async def stand_in_search(request: Request) -> Response:
    """the public universities API's offline stand-in, in its own process.

    Try: ?country=turkiye
    """
    return await pass_to_stand_in(request)


async def stand_in_stats(request: Request) -> Response:
    """the stand-in's searches in flight now, the most ever in flight, and served."""
    return await pass_to_stand_in(request)


async def pass_to_stand_in(request: Request) -> Response:
    if request.state.stand_in is None:
        raise HTTPException(404, "no stand-in runs here: APP_UPSTREAM_URL names the upstream")
    path = request.url.path.removeprefix("/upstream")
    url = httpx.URL(f"{await request.state.stand_in.started_url_async()}{path}", query=request.scope["query_string"])
    with universities.upstream_faults(f"stand-in {path}", settings_of(request).upstream_timeout):
        answer = await request.state.client.get(url)  # yields the loop while the other process searches
    return Response(answer.content, answer.status_code, media_type=answer.headers.get("content-type"))


# ---------------------------------------------------------------- routes, lifespan, app

# Starlette tries the routes in order for every request: the lessons first, the index and the page last.
ROUTES = [
    Route("/ping/blocking", ping_blocking),
    Route("/ping/async", ping_async),
    Route("/ping/thread", ping_thread),
    Route("/cpu/blocking", cpu_blocking),
    Route("/cpu/thread", cpu_thread),
    Route("/cpu/process", cpu_process),
    Route("/universities/sync", universities_sync),
    Route("/universities/async", universities_async),
    Route("/universities/gather", universities_gather),
    Route("/upstream/search", stand_in_search),
    Route("/upstream/stats", stand_in_stats),
    Route("/ping/until-gone", next_q.ping_until_gone),
    Route("/background", next_q.background),
    Route("/stream/thread", next_q.stream_thread),
    Route("/stream/blocking", next_q.stream_blocking),
    Route("/stream/async", next_q.stream_async),
    Route("/db/blocking", next_q.db_blocking),
    Route("/db/thread", next_q.db_thread),
    Route("/db/to-thread", next_q.db_to_thread),
    Route("/healthz", healthz),
    Route("/batch", batch),
    Route("/", index),
    Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
]


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
    settings: Settings = app.state.settings
    # The default limiter belongs to the running event loop, so size it here, not at import.
    anyio.to_thread.current_default_thread_limiter().total_tokens = settings.thread_tokens
    if settings.asyncio_debug:
        # Set from inside the running loop: PYTHONASYNCIODEBUG does not reach uvicorn's loop on every
        # Python (docs/finding-blocks.md); this works on every version, asyncio and uvloop alike.
        loop = asyncio.get_running_loop()
        loop.set_debug(True)
        loop.slow_callback_duration = settings.slow_callback
    # The lag meter and the block finder (loop_health.py): one heartbeat, and a thread that names the line.
    health = watching_the_loop(interval=settings.lag_interval, threshold=settings.block_threshold)
    async with health as loop_health, contextlib.AsyncExitStack() as stack:
        stand_in = None
        if not settings.upstream_url:  # the stand-in gets its own process, loop and GIL: lessons here cannot slow it
            stand_in = await stack.enter_async_context(stand_in_server(settings.upstream_latency))
        state = await stack.enter_async_context(shared_clients(settings))
        yield {**state, "stand_in": stand_in, "loop_health": loop_health}


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


async def upstream_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, universities.UpstreamError)
    return JSONResponse({"detail": str(exc)}, status_code=exc.status_code)


async def server_error(request: Request, exc: Exception) -> JSONResponse:
    # The traceback goes to the server log (uvicorn prints it), never to the client. Starlette
    # re-raises after this answer and uvicorn drops the connection: the client must not reuse it.
    return JSONResponse({"detail": "Internal Server Error"}, status_code=500, headers={"Connection": "close"})


ERROR_HANDLERS = {HTTPException: http_error, universities.UpstreamError: upstream_error, Exception: server_error}


def build_starlette(settings: Settings) -> Starlette:
    """The Starlette app itself: routes, error handlers, lifespan. ``create_app`` wraps it."""
    starlette_app = Starlette(
        routes=list(ROUTES),
        exception_handlers=ERROR_HANDLERS,
        lifespan=lifespan,
    )
    starlette_app.state.settings = settings
    return starlette_app


def with_middleware(starlette_app: ASGIApp) -> ASGIApp:
    # Outside Starlette's own ServerErrorMiddleware, so even its 500 answer gets timed;
    # middleware=[Middleware(TimingMiddleware)] would sit inside it and miss that case.
    return TimingMiddleware(ShutdownMiddleware(starlette_app))


def create_app(settings: Settings) -> ASGIApp:
    return with_middleware(build_starlette(settings))


try:
    SETTINGS = Settings.from_env()
except SettingError as bad:
    sys.exit(f"asgi_app: {bad}")  # one line naming the variable, not a traceback
app = create_app(SETTINGS)
