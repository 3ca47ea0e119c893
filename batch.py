"""Fire a batch of calls at this same server at once, and stream each result as it lands.

A browser is a poor judge of server concurrency: Chromium runs concurrent
requests for one URL one after another (its cache lock) and opens at most six
HTTP/1.1 connections per host, so a page that fired ten pings itself would
draw the browser's queue, not the server's. Here the server fires the batch
with its shared ``httpx.AsyncClient``, every call at the same instant, and
sends each answer to the page as a Server-Sent Event (``text/event-stream``)
the moment it arrives. Every time in an event is on this process's clock.

The stream is three kinds of event, each one ``event:`` line and one ``data:``
line of JSON, ended by a blank line::

    event: batch   the plan: routes, calls per route, parameters
    event: call    one finished call: when it was sent, started, finished, received
    event: done    the wall time of the whole batch

A client that disconnects cancels the calls still in flight.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
from anyio.streams.memory import MemoryObjectSendStream
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

EVENT_BUFFER = 16  # events waiting for a slow reader before the batch waits for it


def sse(event: str, data: Any) -> bytes:
    """One Server-Sent Event. Compact JSON never holds a newline, so one ``data:`` line carries it."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


@dataclass(frozen=True)
class Call:
    route: str  # one of the app's own lesson routes, never a URL from the client
    index: int  # 0, 1, ... within its route
    params: tuple[tuple[str, str], ...]


@dataclass(frozen=True, kw_only=True)
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
                    # Yields the loop until this call answers; the others are in flight meanwhile.
                    response = await batch.client.get(
                        f"{batch.base_url}{call.route}", params=call.params, timeout=batch.timeout
                    )
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
