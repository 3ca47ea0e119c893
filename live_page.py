"""The live page's server side: ``GET /`` for two audiences, and ``GET /batch``, which fires the calls.

A browser is a poor judge of server concurrency: Chromium runs concurrent
requests for one URL one after another (its cache lock) and opens at most six
HTTP/1.1 connections per host, so a page that fired ten pings itself would draw
the browser's queue, not the server's. So the page asks ``/batch`` to fire
them: the server sends every call at once with its shared ``httpx.AsyncClient``
and streams each answer to the page as a Server-Sent Event the moment it
arrives. Every time in an event is on this process's clock. The stream is three
kinds of event, each one ``event:`` line and one ``data:`` line of JSON::

    event: batch   the plan: routes, calls per route, parameters
    event: call    one finished call: when it was sent, started, finished, received
    event: done    the wall time of the whole batch

A client that disconnects cancels the calls still in flight.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import math
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import httpx
from anyio.streams.memory import MemoryObjectSendStream
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import Receive, Scope, Send

from plumbing.query import read_countries, read_delay, read_max_concurrency, read_n, read_number, read_rows
from plumbing.record import JSONResponse
from plumbing.settings import settings_of

STATIC_DIR = Path(__file__).with_name("static")
EVENT_BUFFER = 16  # events waiting for a slow reader before the batch waits for it
MAX_BATCH_ROUTES = 2  # side by side: two lessons on one time axis

# The routes a batch may call, the query parameters each takes, and its calls per batch by default.
BATCHABLE: dict[str, tuple[tuple[str, ...], int]] = {
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
# Each parameter a batch passes on, checked by the reader its route uses, in this order.
PARAMETERS: dict[str, Callable[[Request], list[str]]] = {
    "delay": lambda request: [str(read_delay(request))],
    "n": lambda request: [str(read_n(request))],
    "rows": lambda request: [str(read_rows(request))],
    "country": read_countries,
    "max_concurrency": lambda request: [str(read_max_concurrency(request))],
}

# ----------------------------------------------------------- GET /


async def index(request: Request) -> JSONResponse | FileResponse:
    # One URL, two audiences: a browser gets the live page, curl and API clients the JSON.
    vary = {"Vary": "Accept"}  # so a cache never hands one audience the other's answer
    if prefers_html(request.headers.get("accept", "")):
        return FileResponse(STATIC_DIR / "index.html", headers={**vary, "Cache-Control": "no-cache"})
    base = own_address(request) or "http://127.0.0.1:8000"
    routes = [
        {"path": path, "what": what, "try": f"curl '{base}{path}{query}'"}
        for path, what, query in route_index(request.app.routes)
    ]
    return JSONResponse({"app": "asgi_app", "routes": routes}, headers=vary)


def route_index(routes: list[BaseRoute], prefix: str = "") -> Iterator[tuple[str, str, str]]:
    """(path, what it shows, an example query) for every route, read from its endpoint's docstring."""
    for route in routes:
        if isinstance(route, Mount):
            yield from route_index(route.routes, prefix + route.path)
        elif isinstance(route, Route) and route.path != "/":
            what, _, rest = (inspect.getdoc(route.endpoint) or "").partition("\n")
            yield prefix + route.path, what.rstrip("."), rest.partition("Try:")[2].strip()


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


def own_address(request: Request) -> str | None:
    """``http://host:port`` this connection arrived on, read from its socket, never from the Host header."""
    if request.scope.get("server") is None:  # e.g. uvicorn --uds: no TCP address at all
        return None
    host, port = request.scope["server"]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


# ------------------------------------------------------ GET /batch


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


async def batch(request: Request) -> EventStream:
    """fires a batch of calls at one or two of the routes above, streams each result (Server-Sent Events).

    Try: ?route=/ping/async&calls=10&delay=1
    """
    settings = settings_of(request)
    routes = read_routes(request)
    default_calls = max(BATCHABLE[route][1] for route in routes)
    per_route = read_number(request, "calls", kind=int, default=default_calls, high=settings.max_batch)
    # Every parameter is checked here, before anything runs, exactly as the route itself would check it.
    wanted = {name for route in routes for name in BATCHABLE[route][0]}
    values = {name: read(request) for name, read in PARAMETERS.items() if name in wanted}
    calls = [
        Call(route, index, tuple((name, value) for name in BATCHABLE[route][0] for value in values[name]))
        for index in range(per_route)
        for route in routes  # interleaved, so neither route gets a head start
    ]
    base_url = own_address(request)
    if base_url is None:
        raise HTTPException(502, "no TCP address to send the batch to; serve on TCP to use /batch")
    job = Batch(
        base_url=base_url,
        calls=calls,
        plan={"routes": routes, "calls": per_route, "params": values},
        client=request.state.client,
        slots=request.state.batch_slots,
        timeout=settings.batch_timeout,
    )
    return EventStream(functools.partial(run_batch, job))


def read_routes(request: Request) -> list[str]:
    routes = request.query_params.getlist("route")
    known = ", ".join(BATCHABLE)
    if not routes or len(routes) > MAX_BATCH_ROUTES:
        raise HTTPException(400, f"route must be given once or twice (side by side), one of {known}")
    for route in routes:
        if route not in BATCHABLE:
            raise HTTPException(400, f"route must be one of {known}, got {route!r}")
    if len(set(routes)) < len(routes):
        raise HTTPException(400, f"route given twice: {routes[0]!r}; side by side takes two different routes")
    return routes


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


def sse(event: str, data: Any) -> bytes:
    """One Server-Sent Event. Compact JSON never holds a newline, so one ``data:`` line carries it."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


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
