"""What FastAPI does underneath, in plain Starlette.

One event loop runs every ``async def`` endpoint. An endpoint that blocks
(``time.sleep``, a sync HTTP client, a long computation) stops that loop, so
every other request waits. Awaiting yields the loop; a plain ``def`` endpoint
is sent to AnyIO's thread pool. Each route below shows one of these choices;
the universities routes do the same with calls to another service (see
``universities.py``), and ``TimingMiddleware`` times every response without
``BaseHTTPMiddleware``.

Run it with ``uvicorn asgi_app:app``; ``GET /`` lists the routes.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import inspect
import itertools
import json
import logging
import math
import os
import re
import sqlite3
import ssl
import sys
import threading
import time
import unicodedata
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.to_process
import anyio.to_thread
import httpx
from anyio.streams.memory import MemoryObjectSendStream
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from universities import (
    DEFAULT_COUNTRIES,
    CountryResult,
    JSONResponse,
    Upstream,
    UpstreamError,
    fetch_all_async,
    fetch_all_gather,
    fetch_all_sync,
    stand_in_server,
    upstream_faults,
)


class SettingError(ValueError):
    """A setting the app cannot run with; the message names its variable, value and what is allowed."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    """Every knob of the app. Field ``x`` is read from ``APP_X``, once, by ``from_env``.

    Numbers must be above 0 unless a field's ``minimum`` says otherwise.
    """

    max_delay: float = 10.0  # largest ?delay= a ping accepts, seconds
    thread_tokens: int = 40  # AnyIO thread pool size (AnyIO's default)
    upstream_url: str = ""  # universities API base URL; empty = the stand-in, in a child process
    upstream_latency: float = dataclasses.field(default=0.5, metadata={"minimum": 0})  # stand-in's seconds per search
    upstream_timeout: float = 5.0  # seconds for one whole upstream call
    upstream_max_bytes: int = 5_000_000  # largest upstream body accepted
    upstream_connections: int = 100  # per client, and async calls in flight
    upstream_keepalive: float = 5.0  # seconds an idle upstream connection is kept
    max_concurrency: int = 10  # upstream calls in flight per async request
    max_countries: int = 20  # distinct countries per request
    max_country_length: int = 100  # characters in one country name
    max_cpu_n: int = 100_000_000  # largest ?n= a /cpu route accepts (about 10 s)
    process_workers: int = os.cpu_count() or 2  # /cpu/process calls at once
    asyncio_debug: bool = False  # report callbacks that hold the loop too long
    slow_callback: float = 0.1  # seconds that count as too long (asyncio's default)
    max_batch: int = 20  # calls per route in one /batch
    batch_timeout: float = 60.0  # seconds one /batch may run before its calls are cut off
    lag_interval: float = 0.05  # seconds the loop-lag meter sleeps between samples
    console: bool = True  # print a start and an end line for every ping and CPU call
    max_chunks: int = 100  # chunks one /stream route may send
    max_db_rows: int = 20_000_000  # rows one /db query may count (about 4 s)

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            if not allowed(field, getattr(self, field.name)):
                raise SettingError(f"{env_name(field)}={getattr(self, field.name)!r}: {rule(field)}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Settings:
        values = {}
        for field in dataclasses.fields(cls):
            raw = environ.get(env_name(field), "")
            if not raw:
                continue
            try:
                values[field.name] = PARSERS[field.type](raw)
            except (KeyError, ValueError):
                values[field.name] = None  # fails allowed() below
            if not allowed(field, values[field.name]):
                raise SettingError(f"{env_name(field)}={raw!r}: {rule(field)}")
        return cls(**values)


def env_name(field: dataclasses.Field[Any]) -> str:
    return f"APP_{field.name.upper()}"


def parse_bool(raw: str) -> bool:
    return {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}[raw.lower()]


PARSERS: dict[Any, Any] = {"int": int, "float": float, "bool": parse_bool, "str": str}


def rule(field: dataclasses.Field[Any]) -> str:
    """What a field allows, in words."""
    minimum = field.metadata.get("minimum")
    if field.type == "bool":
        return "allowed: 1, true, yes, 0, false or no"
    if field.type == "str":
        return "allowed: an http:// or https:// URL with a host, or empty for the stand-in"
    noun = "a whole number" if field.type == "int" else "a number"
    return f"allowed: {noun} of {minimum} or more" if minimum is not None else f"allowed: {noun} above 0"


def allowed(field: dataclasses.Field[Any], value: Any) -> bool:
    if field.type == "bool":
        return isinstance(value, bool)
    if field.type == "str":
        try:
            url = urllib.parse.urlsplit(value)
            url.port  # noqa: B018 -- raises ValueError when out of range
        except (TypeError, ValueError):
            return False
        return value == "" or (url.scheme in ("http", "https") and bool(re.fullmatch(r"[\w.:-]+", url.hostname or "")))
    if not isinstance(value, int | float) or not math.isfinite(value):
        return False
    minimum = field.metadata.get("minimum")
    return value >= minimum if minimum is not None else value > 0


# ---------------------------------------------------------------- middleware


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


class ShutdownMiddleware:
    """Answers a JSON 503 to a request that uvicorn's shutdown cuts short.

    With ``--timeout-graceful-shutdown N``, uvicorn cancels the requests still
    running after N seconds. Left alone, the cancellation reaches uvicorn as an
    error: the client gets a plain-text 500 and the log a traceback.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        response_started = False

        async def send_and_note(message: Message) -> None:
            nonlocal response_started
            response_started = response_started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        except asyncio.CancelledError as cancel:
            if UVICORN_SHUTDOWN_CANCEL not in str(cancel):
                raise  # any other cancellation is not ours to swallow
            # The task ends here either way; answering instead of re-raising is what keeps
            # the client's answer JSON and the log free of a traceback.
            SERVER_LOG.warning("%s %s cut by shutdown: answered 503", scope["method"], scope["path"])
            if not response_started:
                await JSONResponse({"detail": "the server is shutting down"}, 503, {"Connection": "close"})(
                    scope, receive, send
                )


UVICORN_SHUTDOWN_CANCEL = "timeout graceful shutdown exceeded"  # uvicorn 0.54's message on the cancellation
SERVER_LOG = logging.getLogger("uvicorn.error")  # uvicorn's own log, in its format


# ------------------------------------------------------------- pings, cpu

REQUEST_NUMBERS = itertools.count(1)


def read_number(
    request: Request, name: str, *, kind: type[int | float], default: float, high: float, unit: str = ""
) -> Any:
    """One ``?name=`` value from 0 (1 for whole numbers) to ``high``; anything else is a 400."""
    values = request.query_params.getlist(name)
    if not values:
        return kind(min(default, high))  # a lowered maximum lowers the default with it
    if len(values) > 1:
        raise HTTPException(400, f"{name} given {len(values)} times; give it once")
    noun, low = ("number", 0) if kind is float else ("whole number", 1)
    try:
        value = kind(values[0])
    except ValueError:
        raise HTTPException(400, f"{name} must be a {noun}{' of ' + unit if unit else ''}, got {values[0]!r}") from None
    # isfinite() of an int too large for a float raises OverflowError: only floats need the check.
    if (kind is float and not math.isfinite(value)) or not low <= value <= high:
        limit = f"{high:g}" if kind is float else str(high)
        raise HTTPException(
            400, f"{name} must be between {low} and {limit}{' ' + unit if unit else ''}, got {values[0]!r}"
        )
    return value


def read_delay(request: Request) -> float:
    max_delay = settings_of(request).max_delay
    return read_number(request, "delay", kind=float, default=1.0, high=max_delay, unit="seconds")


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


def burn_cpu(n: int) -> dict[str, Any]:
    """``n`` rounds of pure-Python arithmetic: it never waits, and holds the GIL throughout."""
    began, computing_began = time.perf_counter(), time.thread_time()
    x = 1
    for _ in range(n):
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF
    # The time it took beside the CPU time it used: a thread that waited for the GIL took longer.
    seconds, cpu_seconds = time.perf_counter() - began, time.thread_time() - computing_began
    return {"result": x, "seconds": round(seconds, 4), "cpu_seconds": round(cpu_seconds, 4), **where_am_i()}


def read_n(request: Request) -> int:
    return read_number(request, "n", kind=int, default=5_000_000, high=settings_of(request).max_cpu_n)


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


# -------------------------------------------------------------- universities


def read_countries(request: Request) -> list[str]:
    """Distinct ``?country=`` values in order (case-insensitively), or the articles' three."""
    settings = settings_of(request)
    countries: dict[str, str] = {}
    for raw in request.query_params.getlist("country"):
        country = raw.strip()
        if not country or len(country) > settings.max_country_length:
            raise HTTPException(400, f"country must be 1 to {settings.max_country_length} characters, got {raw!r}")
        if any(unicodedata.category(char) == "Cc" for char in country):
            raise HTTPException(400, f"country must not contain control characters, got {raw!r}")
        countries.setdefault(country.casefold(), country)
    if len(countries) > settings.max_countries:
        raise HTTPException(400, f"at most {settings.max_countries} countries per request, got {len(countries)}")
    return list(countries.values()) or list(DEFAULT_COUNTRIES)


def own_address(request: Request) -> str | None:
    """``http://host:port`` this connection arrived on, read from its socket, never from the Host header."""
    if request.scope.get("server") is None:  # e.g. uvicorn --uds: no TCP address at all
        return None
    host, port = request.scope["server"]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def upstream_for(request: Request) -> Upstream:
    settings = settings_of(request)
    # Empty: the stand-in's own process, on a loopback port, started by the first call that needs it.
    base = settings.upstream_url.rstrip("/") or request.state.stand_in.started_url()
    return Upstream(
        search_url=f"{base}/search",
        timeout=settings.upstream_timeout,
        max_bytes=settings.upstream_max_bytes,
        slots=request.state.upstream_slots,
    )


def universities_json(
    request: Request, results: list[CountryResult], began: float, started: float, **extra: Any
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


def universities_sync(request: Request) -> JSONResponse:
    """plain def + httpx.Client: one upstream call per country, one after another.

    Try: ?country=turkiye&country=india
    """
    # A plain def, so it runs in a worker thread: the blocking client below
    # holds that thread, not the event loop, for the whole loop of calls.
    began, started = time.perf_counter(), time.time()
    countries, upstream = read_countries(request), upstream_for(request)
    results = fetch_all_sync(request.state.sync_client, upstream, countries)  # one call after another
    return universities_json(request, results, began, started)


async def universities_async(request: Request) -> JSONResponse:
    """async def + shared httpx.AsyncClient: all countries at once, bounded.

    Try: ?country=turkiye&country=india
    """
    began, started = time.perf_counter(), time.time()
    countries, ceiling = read_countries(request), settings_of(request).max_concurrency
    limit = read_number(request, "max_concurrency", kind=int, default=ceiling, high=ceiling)
    upstream = upstream_for(request)  # after the checks: a refused request never starts the stand-in
    results = await fetch_all_async(request.state.client, upstream, countries, max_concurrency=limit)  # all at once
    return universities_json(request, results, began, started, max_concurrency=limit)


async def universities_gather(request: Request) -> JSONResponse:
    """async def + asyncio.gather: the articles' fan-out; a failure leaves the other calls running.

    Try: ?country=turkiye&country=india
    """
    began, started = time.perf_counter(), time.time()
    countries, upstream = read_countries(request), upstream_for(request)
    limit = settings_of(request).max_concurrency
    # gather, kept beside the task group to show the difference: its abandoned calls run on, unobserved.
    results = await fetch_all_gather(request.state.client, upstream, countries, max_concurrency=limit)
    return universities_json(request, results, began, started, max_concurrency=limit)


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
    url = httpx.URL(f"{request.state.stand_in.started_url()}{path}", query=request.scope["query_string"])
    with upstream_faults(f"stand-in {path}", settings_of(request).upstream_timeout):
        answer = await request.state.client.get(url)  # yields the loop while the other process searches
    return Response(answer.content, answer.status_code, media_type=answer.headers.get("content-type"))


# ---------------------------------------------------- the next questions


async def ping_until_gone(request: Request) -> JSONResponse:
    """async def that stops when its client leaves: a task group watches receive() for the disconnect.

    Try: ?delay=5
    """
    delay = read_delay(request)
    with run_record(request, delay=delay) as record:
        record["client_left"] = False
        async with anyio.create_task_group() as group:

            async def cancel_when_gone() -> None:
                while (await request.receive())["type"] != "http.disconnect":
                    pass  # a body's chunks (a GET has none): only the disconnect matters
                record["client_left"] = True
                group.cancel_scope.cancel()  # the client is gone: stop the work below

            group.start_soon(cancel_when_gone)
            await anyio.sleep(delay)  # the work; a disconnect cancels it here
            group.cancel_scope.cancel()  # the work is done: stop watching
    return JSONResponse(record)  # sent to no one if the client left: uvicorn drops it


def background_job(number: int, delay: float) -> None:
    print(f"start background job #{number} delay={delay}", flush=True)
    time.sleep(delay)  # holds a thread-pool token, the same ones def endpoints wait for
    print(f"end   background job #{number}", flush=True)


async def background(request: Request) -> JSONResponse:
    """BackgroundTask with a plain def: runs after the answer, on the def endpoints' thread pool.

    Try: ?delay=2
    """
    delay = read_delay(request)
    with run_record(request, delay=delay) as record:
        job = BackgroundTask(background_job, next(REQUEST_NUMBERS), delay)  # runs once the answer is sent
    return JSONResponse(record, background=job)


@dataclasses.dataclass
class Stream:
    """What a /stream route sends: ``count`` chunks, ``delay`` seconds apart, each noted on the console."""

    route: str
    count: int
    delay: float
    console: bool

    def chunk(self, number: int, began: float) -> str:
        if self.console:
            print(f"chunk {self.route} #{number} of {self.count}", flush=True)
        return json.dumps({"chunk": number, "sent": round(time.perf_counter() - began, 4)}) + "\n"


def read_stream(request: Request) -> Stream:
    settings = settings_of(request)
    count = read_number(request, "chunks", kind=int, default=5, high=settings.max_chunks)
    return Stream(request.scope["route"].path, count, read_delay(request), settings.console)


def chunks_in_thread(stream: Stream) -> Iterator[str]:
    began = time.perf_counter()
    for number in range(stream.count):
        time.sleep(stream.delay)  # a plain iterator: Starlette runs each step in the thread pool, the loop stays free
        yield stream.chunk(number, began)


async def chunks_blocking(stream: Stream) -> AsyncIterator[str]:
    began = time.perf_counter()
    for number in range(stream.count):
        time.sleep(stream.delay)  # noqa: ASYNC251 -- in an async generator this blocks the loop between chunks
        yield stream.chunk(number, began)


async def chunks_awaiting(stream: Stream) -> AsyncIterator[str]:
    began = time.perf_counter()
    for number in range(stream.count):
        await anyio.sleep(stream.delay)  # yields the loop between chunks
        yield stream.chunk(number, began)


def stream_thread(request: Request) -> StreamingResponse:
    """StreamingResponse over a plain iterator: each chunk is made in the thread pool.

    Try: ?chunks=5&delay=0.5
    """
    return StreamingResponse(chunks_in_thread(read_stream(request)), media_type="application/x-ndjson")


async def stream_blocking(request: Request) -> StreamingResponse:
    """StreamingResponse over an async generator that calls time.sleep: blocks everyone between chunks.

    Try: ?chunks=5&delay=0.5
    """
    return StreamingResponse(chunks_blocking(read_stream(request)), media_type="application/x-ndjson")


async def stream_async(request: Request) -> StreamingResponse:
    """StreamingResponse over an async generator that awaits: the right way.

    Try: ?chunks=5&delay=0.5
    """
    return StreamingResponse(chunks_awaiting(read_stream(request)), media_type="application/x-ndjson")


# Counts 1..rows in SQLite itself: a query that takes time in proportion to ?rows=, like a slow report.
COUNT_ROWS = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?) SELECT count(*) FROM c"


def count_rows(rows: int) -> dict[str, Any]:
    """One query on a connection of its own, in memory and closed after: nothing shared, nothing on disk."""
    began = time.perf_counter()
    with contextlib.closing(sqlite3.connect(":memory:")) as db:
        (counted,) = db.execute(COUNT_ROWS, (rows,)).fetchone()
    return {"rows": counted, "seconds": round(time.perf_counter() - began, 4), **where_am_i()}


def read_rows(request: Request) -> int:
    return read_number(request, "rows", kind=int, default=2_000_000, high=settings_of(request).max_db_rows)


async def db_blocking(request: Request) -> JSONResponse:
    """async def + sqlite3: a blocking driver on the event loop freezes everyone.

    Try: ?rows=2000000
    """
    rows = read_rows(request)
    with run_record(request, rows=rows) as record:
        record["query"] = count_rows(rows)  # a synchronous driver: the event loop waits for the query
    return JSONResponse(record)


def db_thread(request: Request) -> JSONResponse:
    """plain def + sqlite3: the query runs in the thread pool, the loop stays free.

    Try: ?rows=2000000
    """
    rows = read_rows(request)
    with run_record(request, rows=rows) as record:
        record["query"] = count_rows(rows)  # blocks this worker thread only (SQLite releases the GIL meanwhile)
    return JSONResponse(record)


async def db_to_thread(request: Request) -> JSONResponse:
    """async def + anyio.to_thread.run_sync(query): the same thread pool, from an async endpoint.

    Try: ?rows=2000000
    """
    rows = read_rows(request)
    with run_record(request, rows=rows) as record:
        record["query"] = await anyio.to_thread.run_sync(count_rows, rows)  # the loop serves others meanwhile
    return JSONResponse(record)


# ----------------------------------------------------------- index, health


def lessons(routes: list[BaseRoute], prefix: str = "") -> Iterator[tuple[str, str, str]]:
    """(path, what it shows, an example query) for every route, read from its endpoint's docstring."""
    for route in routes:
        if isinstance(route, Mount):
            yield from lessons(route.routes, prefix + route.path)
        elif isinstance(route, Route) and route.path != "/":
            what, _, rest = (inspect.getdoc(route.endpoint) or "").partition("\n")
            yield prefix + route.path, what.rstrip("."), rest.partition("Try:")[2].strip()


async def index(request: Request) -> JSONResponse | FileResponse:
    # One URL, two audiences: a browser gets the live page, curl and API clients the JSON.
    vary = {"Vary": "Accept"}  # so a cache never hands one audience the other's answer
    if prefers_html(request.headers.get("accept", "")):
        return FileResponse(STATIC_DIR / "index.html", headers={**vary, "Cache-Control": "no-cache"})
    base = own_address(request) or "http://127.0.0.1:8000"
    routes = [
        {"path": path, "what": what, "try": f"curl '{base}{path}{query}'"}
        for path, what, query in lessons(request.app.routes)
    ]
    return JSONResponse({"app": "asgi_app", "routes": routes}, headers=vary)


async def healthz(request: Request) -> JSONResponse:
    """liveness, thread-pool use, event-loop lag, and the threads, tasks, files and memory held."""
    limiter = anyio.to_thread.current_default_thread_limiter()
    return JSONResponse(
        {
            "status": "ok",
            "pid": os.getpid(),
            "thread_pool": {
                "borrowed": limiter.borrowed_tokens,
                "total": limiter.total_tokens,
                "waiting": limiter.statistics().tasks_waiting,  # def endpoints queued for a thread
            },
            # What this process holds right now: after a storm of failures these come back down.
            "threads": threading.active_count(),
            "tasks": len(asyncio.all_tasks()),
            "open_fds": len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None,
            "rss_bytes": resident_bytes(),
            "batch_calls": {"borrowed": request.state.batch_slots.borrowed_tokens},
            "loop_lag": request.state.lag_meter.report(),
        }
    )


def resident_bytes() -> int | None:
    """Resident memory now (Linux); None where /proc is missing."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return None


# ------------------------------------------------------------- live page
#
# Fire a batch of calls at this same server at once, and stream each result as it lands.
#
# A browser is a poor judge of server concurrency: Chromium runs concurrent
# requests for one URL one after another (its cache lock) and opens at most six
# HTTP/1.1 connections per host, so a page that fired ten pings itself would
# draw the browser's queue, not the server's. Here the server fires the batch
# with its shared ``httpx.AsyncClient``, every call at the same instant, and
# sends each answer to the page as a Server-Sent Event (``text/event-stream``)
# the moment it arrives. Every time in an event is on this process's clock.
#
# The stream is three kinds of event, each one ``event:`` line and one ``data:``
# line of JSON, ended by a blank line::
#
#     event: batch   the plan: routes, calls per route, parameters
#     event: call    one finished call: when it was sent, started, finished, received
#     event: done    the wall time of the whole batch
#
# A client that disconnects cancels the calls still in flight.

EVENT_BUFFER = 16  # events waiting for a slow reader before the batch waits for it


def sse(event: str, data: Any) -> bytes:
    """One Server-Sent Event. Compact JSON never holds a newline, so one ``data:`` line carries it."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


@dataclasses.dataclass(frozen=True)
class Call:
    route: str  # one of the app's own lesson routes, never a URL from the client
    index: int  # 0, 1, ... within its route
    params: tuple[tuple[str, str], ...]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Batch:
    base_url: str  # the address this server listens on, from the ASGI scope
    calls: Sequence[Call]
    plan: dict[str, Any]  # echoed in the first event, so the page can label what it draws
    client: httpx.AsyncClient
    slots: anyio.CapacityLimiter  # batch calls in flight across the process
    timeout: float  # seconds the whole batch may take


def call_event(call: Call, t0: float, sent: float, received: float, response: httpx.Response) -> dict[str, Any]:
    """What the page draws for one call; times in seconds after the batch began."""
    event: dict[str, Any] = {
        "route": call.route,
        "index": call.index,
        "status": response.status_code,
        "sent": round(sent - t0, 4),
        "received": round(received - t0, 4),
    }
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return {**event, "detail": f"not a JSON object: {response.text[:200]!r}"}
    if response.status_code != 200 or not isinstance(body.get("started"), float | int):
        return {**event, "detail": str(body.get("detail", "no start time in the answer"))}
    started = float(body["started"])
    event["started"] = round(started - t0, 4)
    event["finished"] = round(float(body["finished"]) - t0, 4)
    event["thread"] = body.get("thread")
    event["on_event_loop"] = body.get("on_event_loop")
    if isinstance(body.get("work"), dict):  # the /cpu routes: where the computing ran
        event["work_pid"] = body["work"].get("pid")
        event["work_thread"] = body["work"].get("thread")
    if isinstance(body.get("calls"), list):  # the /universities routes: each upstream call, on the same clock
        event["upstream"] = [
            {
                "country": part["country"],
                "started": round(started + part["started"] - t0, 4),
                "finished": round(started + part["finished"] - t0, 4),
            }
            for part in body["calls"]
        ]
    return event


async def run_batch(batch: Batch, events: MemoryObjectSendStream[bytes]) -> None:
    """Sends every call at once; each result goes to ``events`` as it lands, then a summary."""
    t0 = time.time()
    finished = failed = 0
    async with events:
        await events.send(sse("batch", {**batch.plan, "began": t0}))

        async def fire(call: Call) -> None:
            nonlocal finished, failed
            async with batch.slots:
                sent = time.time()
                try:
                    # Yields the loop until this call answers; the others are in flight meanwhile. A new
                    # connection per call: a kept-alive one, idle for uvicorn's 5 s, can be closed as it is reused.
                    response = await batch.client.get(
                        f"{batch.base_url}{call.route}", params=call.params, timeout=batch.timeout,
                        headers={"Connection": "close"},
                    )  # fmt: skip
                    event = call_event(call, t0, sent, time.time(), response)
                except httpx.HTTPError as exc:
                    event = {"route": call.route, "index": call.index, "status": 0, "detail": type(exc).__name__}
            finished += 1
            failed += 0 if event["status"] == 200 else 1
            await events.send(sse("call", event))

        with anyio.move_on_after(batch.timeout) as deadline:
            async with anyio.create_task_group() as group:
                for call in batch.calls:
                    group.start_soon(fire, call)
        summary = {
            "wall": round(time.time() - t0, 4),
            "calls": len(batch.calls),
            "failed": failed,
            "unfinished": len(batch.calls) - finished,  # cut off by the batch timeout
            "timed_out": deadline.cancelled_caught,
        }
        await events.send(sse("done", summary))


class EventStream(StreamingResponse):
    """A ``text/event-stream`` answer whose events come from ``produce``, run beside the response.

    ``produce`` runs in a task of its own rather than as the body's async
    generator, so its task group never straddles a ``yield``. When the stream
    ends, or the client disconnects (Starlette's ``StreamingResponse`` listens
    for ``http.disconnect`` and stops), whatever ``produce`` still runs is cancelled.
    """

    media_type = "text/event-stream"

    def __init__(self, produce: Callable[[MemoryObjectSendStream[bytes]], Awaitable[None]]) -> None:
        self.events, self.received = anyio.create_memory_object_stream[bytes](EVENT_BUFFER)
        # no-store: a cache or proxy must neither replay a batch nor hold its events back.
        super().__init__(self.received, headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
        self.produce = produce

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(self.produce, self.events)
                await super().__call__(scope, receive, send)  # until the last event, or the client leaves
                group.cancel_scope.cancel()  # a client that left: the calls still in flight stop here
        finally:
            self.events.close()
            self.received.close()


STATIC_DIR = Path(__file__).with_name("static")

# The routes a batch may call, the query parameters each takes, and its calls per batch by default.
LESSONS: dict[str, tuple[tuple[str, ...], int]] = {
    "/ping/blocking": (("delay",), 10),
    "/ping/async": (("delay",), 10),
    "/ping/thread": (("delay",), 10),
    "/cpu/blocking": (("n",), 4),
    "/cpu/thread": (("n",), 4),
    "/cpu/process": (("n",), 4),
    "/universities/sync": (("country",), 1),
    "/universities/async": (("country", "max_concurrency"), 1),
    "/universities/gather": (("country",), 1),
    "/db/blocking": (("rows",), 3),
    "/db/thread": (("rows",), 3),
    "/db/to-thread": (("rows",), 3),
}
MAX_BATCH_ROUTES = 2  # side by side: two lessons on one time axis


def prefers_html(accept: str) -> bool:
    """True when ``Accept`` ranks ``text/html`` above ``application/json``: a browser, not curl's ``*/*``."""
    ranges: list[tuple[str, float]] = []
    for part in accept.split(","):
        kind, *params = (piece.strip() for piece in part.split(";"))
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0  # an unreadable weight counts as "not acceptable"
        ranges.append((kind.lower(), q if math.isfinite(q) else 0.0))

    def quality(media: str) -> float:
        # The most specific range that matches decides (RFC 9110, 12.5.1).
        family = media.split("/")[0] + "/*"
        matches = [(kind == media, kind == family, q) for kind, q in ranges if kind in (media, family, "*/*")]
        return max(matches)[2] if matches else 0.0

    return quality("text/html") > quality("application/json")


def read_routes(request: Request) -> list[str]:
    routes = request.query_params.getlist("route")
    known = ", ".join(LESSONS)
    if not routes or len(routes) > MAX_BATCH_ROUTES:
        raise HTTPException(400, f"route must be given once or twice (side by side), one of {known}")
    for route in routes:
        if route not in LESSONS:
            raise HTTPException(400, f"route must be one of {known}, got {route!r}")
    if len(set(routes)) < len(routes):
        raise HTTPException(400, f"route given twice: {routes[0]!r}; side by side takes two different routes")
    return routes


async def batch(request: Request) -> EventStream:
    """fires a batch of calls at one or two of the routes above, streams each result (Server-Sent Events).

    Try: ?route=/ping/async&calls=10&delay=1
    """
    settings = settings_of(request)
    routes = read_routes(request)
    default_calls = max(LESSONS[route][1] for route in routes)
    calls = read_number(request, "calls", kind=int, default=default_calls, high=settings.max_batch)
    # Every parameter is checked here, before anything runs, exactly as the route itself would check it.
    wanted = {name for route in routes for name in LESSONS[route][0]}
    values: dict[str, list[str]] = {}
    if "delay" in wanted:
        values["delay"] = [str(read_delay(request))]
    if "n" in wanted:
        values["n"] = [str(read_n(request))]
    if "rows" in wanted:
        values["rows"] = [str(read_rows(request))]
    if "country" in wanted:
        values["country"] = read_countries(request)
    if "max_concurrency" in wanted:
        ceiling = settings.max_concurrency
        values["max_concurrency"] = [
            str(read_number(request, "max_concurrency", kind=int, default=ceiling, high=ceiling))
        ]
    plan = [
        Call(route, index, tuple((name, value) for name in LESSONS[route][0] for value in values[name]))
        for index in range(calls)
        for route in routes  # interleaved, so neither route gets a head start
    ]
    base_url = own_address(request)
    if base_url is None:
        raise HTTPException(502, "no TCP address to send the batch to; serve on TCP to use /batch")
    job = Batch(
        base_url=base_url,
        calls=plan,
        plan={"routes": routes, "calls": calls, "params": values},
        client=request.state.client,
        slots=request.state.batch_slots,
        timeout=settings.batch_timeout,
    )
    return EventStream(functools.partial(run_batch, job))


LAG_SAMPLES = 64  # about three seconds of history at 50 ms when idle; a block is one sample, however long


class LoopLagMeter:
    """Sleeps a short interval over and over and records how late each wake-up came.

    A wake-up is late by as long as something else held the event loop: a
    ``time.sleep`` or a computation in an ``async def`` shows up here as one
    sample the size of the block. It only awaits a timer, so it works the same
    on asyncio's loop and uvloop, with no debug mode.
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.samples: collections.deque[tuple[float, float]] = collections.deque(maxlen=LAG_SAMPLES)
        self.max = 0.0

    async def run(self) -> None:
        while True:
            began = time.perf_counter()
            await anyio.sleep(self.interval)  # yields the loop; wakes late by however long others held it
            lag = max(0.0, time.perf_counter() - began - self.interval)
            self.samples.append((time.time(), lag))
            self.max = max(self.max, lag)

    def report(self) -> dict[str, Any]:
        recent = [lag for _, lag in self.samples]
        return {
            "interval": self.interval,
            "last": round(recent[-1], 4) if recent else 0.0,
            "recent_max": round(max(recent, default=0.0), 4),
            "max": round(self.max, 4),  # since the server started
            "samples": [[round(at, 3), round(lag, 4)] for at, lag in self.samples],  # [Unix time, seconds late]
        }


@contextlib.asynccontextmanager
async def measuring_loop_lag(interval: float) -> AsyncIterator[LoopLagMeter]:
    meter = LoopLagMeter(interval)
    async with anyio.create_task_group() as group:
        group.start_soon(meter.run)
        try:
            yield meter
        finally:
            group.cancel_scope.cancel()


# -------------------------------------------------------- errors, lifespan


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


async def upstream_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, UpstreamError)
    return JSONResponse({"detail": str(exc)}, status_code=exc.status_code)


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
    if settings.asyncio_debug:
        # On Python 3.11 uvicorn 0.54 starts its loop with debug=False, overriding
        # PYTHONASYNCIODEBUG and -X dev (3.12+ honour them); switching debug mode on
        # from inside the running loop works on every version, asyncio and uvloop alike.
        loop = asyncio.get_running_loop()
        loop.set_debug(True)
        loop.slow_callback_duration = settings.slow_callback
    async with measuring_loop_lag(settings.lag_interval) as lag_meter, contextlib.AsyncExitStack() as stack:
        stand_in = None
        if not settings.upstream_url:  # the stand-in gets its own process, loop and GIL: lessons here cannot slow it
            stand_in = await stack.enter_async_context(stand_in_server(settings.upstream_latency))
        state = await stack.enter_async_context(shared_clients(settings))
        yield {**state, "stand_in": stand_in, "lag_meter": lag_meter}


@functools.cache
def tls_context() -> ssl.SSLContext:
    """httpx's default TLS settings (certifi's CA bundle), built once per process and shared by its clients.

    httpx builds one for each client it creates, reading the whole bundle: about
    20 ms of CPU each time, paid at every start-up without this. Every client that
    shares it must speak HTTP/1.1 only: httpcore sets the protocols it offers (ALPN)
    on the context at each TLS connection, so an ``http2=True`` client would change
    them for the others.
    """
    return httpx.create_ssl_context(trust_env=False)  # like the clients, it ignores SSL_CERT_FILE


@contextlib.asynccontextmanager
async def shared_clients(settings: Settings) -> AsyncIterator[dict[str, Any]]:
    # One client of each kind per process, shared by every request. trust_env=False:
    # proxy variables must not reroute the calls to the stand-in on loopback.
    timeout = httpx.Timeout(settings.upstream_timeout)
    # Keep-alive as large as the pool: httpcore 1.0.9 compares max_keepalive_connections
    # with *all* its connections, so a smaller value closes idle ones under load.
    size = settings.upstream_connections
    limits = httpx.Limits(
        max_connections=size, max_keepalive_connections=size, keepalive_expiry=settings.upstream_keepalive
    )
    options: dict[str, Any] = {"timeout": timeout, "limits": limits, "trust_env": False, "verify": tls_context()}
    async with httpx.AsyncClient(**options) as client:
        with httpx.Client(**options) as sync_client:
            yield {
                "settings": settings,  # what handlers read, through settings_of(request)
                "client": client,
                "sync_client": sync_client,
                "upstream_slots": anyio.CapacityLimiter(settings.upstream_connections),
                "process_limiter": anyio.CapacityLimiter(settings.process_workers),
                # Batch calls share the client with the universities' upstream calls: holding at
                # most half its connections leaves the calls they make room to finish.
                "batch_slots": anyio.CapacityLimiter(max(1, settings.upstream_connections // 2)),
            }


def settings_of(request: Request) -> Settings:
    """The one way a handler reaches configuration: the lifespan's state, copied into each request."""
    settings: Settings = request.state.settings
    return settings


def build_starlette(settings: Settings) -> Starlette:
    """The Starlette app itself: routes, error handlers, lifespan. ``create_app`` wraps it."""
    routes = [
        Route("/", index),
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
        Route("/ping/until-gone", ping_until_gone),
        Route("/background", background),
        Route("/stream/thread", stream_thread),
        Route("/stream/blocking", stream_blocking),
        Route("/stream/async", stream_async),
        Route("/db/blocking", db_blocking),
        Route("/db/thread", db_thread),
        Route("/db/to-thread", db_to_thread),
        Route("/healthz", healthz),
        Route("/batch", batch),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
    ]
    starlette_app = Starlette(
        routes=routes,
        exception_handlers={HTTPException: http_error, UpstreamError: upstream_error, Exception: server_error},
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
