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
import contextlib
import dataclasses
import itertools
import logging
import math
import os
import re
import sys
import threading
import time
import unicodedata
import urllib.parse
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import anyio
import anyio.to_process
import anyio.to_thread
import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from universities import (
    DEFAULT_COUNTRIES,
    CountryResult,
    JSONResponse,
    StandInUpstream,
    Upstream,
    UpstreamError,
    fetch_all_async,
    fetch_all_sync,
    load_records,
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
    upstream_url: str = ""  # universities API base URL; empty = the stand-in in this app
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


TIMING_HEADERS = (b"x-process-time", b"server-timing")


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
    if not math.isfinite(value) or not low <= value <= high:
        limit = f"{high:g}" if kind is float else str(high)
        raise HTTPException(
            400, f"{name} must be between {low} and {limit}{' ' + unit if unit else ''}, got {values[0]!r}"
        )
    return value


def read_delay(request: Request) -> float:
    max_delay = request.app.state.settings.max_delay
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
def run_record(route: str, **params: float) -> Iterator[dict[str, Any]]:
    """Prints a start and an end line, and fills in where and when the body ran."""
    number = next(REQUEST_NUMBERS)
    record: dict[str, Any] = {"route": route, **params, **where_am_i()}
    shown = " ".join(f"{key}={value}" for key, value in params.items())
    print(f"start {route} #{number} {shown} thread={record['thread']} ({record['thread_id']})", flush=True)
    record["started"] = time.time()
    yield record
    record["finished"] = time.time()
    print(f"end   {route} #{number} took {record['finished'] - record['started']:.3f}s", flush=True)


async def ping_blocking(request: Request) -> JSONResponse:
    delay = read_delay(request)
    with run_record("/ping/blocking", delay=delay) as record:
        time.sleep(delay)  # blocks the event loop: no other request runs until it returns
    return JSONResponse(record)


async def ping_async(request: Request) -> JSONResponse:
    delay = read_delay(request)
    with run_record("/ping/async", delay=delay) as record:
        await anyio.sleep(delay)  # yields the event loop: other requests run meanwhile
    return JSONResponse(record)


def ping_thread(request: Request) -> JSONResponse:
    # A plain def: Starlette hands the whole call to anyio.to_thread.run_sync,
    # so it holds one thread-pool token from here to the return.
    delay = read_delay(request)
    with run_record("/ping/thread", delay=delay) as record:
        time.sleep(delay)  # blocks this worker thread only; the event loop stays free
    return JSONResponse(record)


def burn_cpu(n: int) -> dict[str, Any]:
    """``n`` rounds of pure-Python arithmetic: it never waits, and holds the GIL throughout."""
    began = time.perf_counter()
    x = 1
    for _ in range(n):
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF
    return {"result": x, "seconds": round(time.perf_counter() - began, 4), **where_am_i()}


def read_n(request: Request) -> int:
    return read_number(request, "n", kind=int, default=5_000_000, high=request.app.state.settings.max_cpu_n)


async def cpu_blocking(request: Request) -> JSONResponse:
    n = read_n(request)
    with run_record("/cpu/blocking", n=n) as record:
        record["work"] = burn_cpu(n)  # computes on the event loop: every other request waits
    return JSONResponse(record)


def cpu_thread(request: Request) -> JSONResponse:
    n = read_n(request)
    with run_record("/cpu/thread", n=n) as record:
        record["work"] = burn_cpu(n)  # the loop stays free, but threads share one GIL: no speed-up
    return JSONResponse(record)


async def cpu_process(request: Request) -> JSONResponse:
    n = read_n(request)
    with run_record("/cpu/process", n=n) as record:
        limiter = request.state.process_limiter
        record["work"] = await anyio.to_process.run_sync(burn_cpu, n, limiter=limiter)  # another process, own GIL
    return JSONResponse(record)


# -------------------------------------------------------------- universities


def read_countries(request: Request) -> list[str]:
    """Distinct ``?country=`` values in order (case-insensitively), or the articles' three."""
    settings: Settings = request.app.state.settings
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


def upstream_for(request: Request) -> Upstream:
    settings: Settings = request.app.state.settings
    base = settings.upstream_url.rstrip("/")
    if not base:
        # The stand-in is mounted in this very server: call the address this
        # connection arrived on (its socket), never one named by a request header.
        if request.scope.get("server") is None:  # e.g. uvicorn --uds
            raise HTTPException(502, "no TCP address to reach the stand-in upstream on; set APP_UPSTREAM_URL")
        host, port = request.scope["server"]
        base = f"http://[{host}]:{port}/upstream" if ":" in host else f"http://{host}:{port}/upstream"
    return Upstream(
        search_url=f"{base}/search",
        timeout=settings.upstream_timeout,
        max_bytes=settings.upstream_max_bytes,
        slots=request.state.upstream_slots,
    )


def universities_json(route: str, results: list[CountryResult], began: float, **extra: Any) -> JSONResponse:
    return JSONResponse(
        {
            "route": route,
            **extra,
            "elapsed": round(time.perf_counter() - began, 4),
            "calls": [result.call_json() for result in results],
            "universities": {r.country: [u.to_json() for u in r.universities] for r in results},
        }
    )


def universities_sync(request: Request) -> JSONResponse:
    # A plain def, so it runs in a worker thread: the blocking client below
    # holds that thread, not the event loop, for the whole loop of calls.
    began = time.perf_counter()
    countries, upstream = read_countries(request), upstream_for(request)
    results = fetch_all_sync(request.state.sync_client, upstream, countries)  # one call after another
    return universities_json("/universities/sync", results, began)


async def universities_async(request: Request) -> JSONResponse:
    began = time.perf_counter()
    countries, upstream = read_countries(request), upstream_for(request)
    ceiling = request.app.state.settings.max_concurrency
    limit = read_number(request, "max_concurrency", kind=int, default=ceiling, high=ceiling)
    results = await fetch_all_async(request.state.client, upstream, countries, max_concurrency=limit)  # all at once
    return universities_json("/universities/async", results, began, max_concurrency=limit)


# ----------------------------------------------------------- index, health

ROUTE_GUIDE: dict[str, tuple[str, str]] = {
    "/ping/blocking": ("async def + time.sleep: blocks the event loop, calls run one after another", "?delay=1"),
    "/ping/async": ("async def + await anyio.sleep: yields the loop, calls overlap", "?delay=1"),
    "/ping/thread": ("plain def + time.sleep: runs in the AnyIO thread pool, overlaps up to its size", "?delay=1"),
    "/cpu/blocking": ("async def + pure-Python loop: freezes the event loop for everyone", "?n=5000000"),
    "/cpu/thread": (
        "plain def + the same loop: loop stays free, but the GIL lets one thread compute at a time",
        "?n=5000000",
    ),
    "/cpu/process": ("anyio.to_process.run_sync: the loop runs in a worker process, on another core", "?n=5000000"),
    "/universities/sync": (
        "plain def + httpx.Client: one upstream call per country, one after another",
        "?country=turkey&country=india",
    ),
    "/universities/async": (
        "async def + shared httpx.AsyncClient: all countries at once, bounded",
        "?country=turkey&country=india",
    ),
    "/upstream/search": ("the offline stand-in for the public universities API", "?country=turkey"),
    "/upstream/stats": ("the stand-in's searches in flight now, the most ever in flight, and served", ""),
    "/healthz": ("liveness, thread-pool use, and the threads, tasks, files and memory held", ""),
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
    return JSONResponse(
        {
            "status": "ok",
            "pid": os.getpid(),
            "thread_pool": {"borrowed": limiter.borrowed_tokens, "total": limiter.total_tokens},
            # What this process holds right now: after a storm of failures these come back down.
            "threads": threading.active_count(),
            "tasks": len(asyncio.all_tasks()),
            "open_fds": len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None,
            "rss_bytes": resident_bytes(),
        }
    )


def resident_bytes() -> int | None:
    """Resident memory now (Linux); None where /proc is missing."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return None


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
    # One client of each kind per process, shared by every request. trust_env=False:
    # proxy variables must not reroute the calls to the stand-in on loopback.
    timeout = httpx.Timeout(settings.upstream_timeout)
    # Keep-alive as large as the pool: httpcore 1.0.9 compares max_keepalive_connections
    # with *all* its connections, so a smaller value closes idle ones under load.
    size = settings.upstream_connections
    limits = httpx.Limits(
        max_connections=size, max_keepalive_connections=size, keepalive_expiry=settings.upstream_keepalive
    )
    async with httpx.AsyncClient(timeout=timeout, limits=limits, trust_env=False) as client:
        with httpx.Client(timeout=timeout, limits=limits, trust_env=False) as sync_client:
            yield {
                "client": client,
                "sync_client": sync_client,
                "upstream_slots": anyio.CapacityLimiter(settings.upstream_connections),
                "process_limiter": anyio.CapacityLimiter(settings.process_workers),
            }


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
        Mount("/upstream", routes=StandInUpstream(load_records(), latency=settings.upstream_latency).routes()),
        Route("/healthz", healthz),
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
