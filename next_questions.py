"""The questions readers ask once blocking versus awaiting makes sense, one route each.

- The client that leaves: ``/ping/until-gone`` stops its work when the client
  hangs up; ``/ping/async`` and ``/ping/thread`` (in ``asgi_app.py``) run on.
- Background tasks: ``/background`` answers, then its job holds a thread-pool token.
- Streaming: ``/stream/thread``, ``/stream/blocking``, ``/stream/async`` make the
  same chunks from a plain iterator, a blocking async generator and an awaiting one.
- A blocking database driver: ``/db/blocking``, ``/db/thread``, ``/db/to-thread``
  run one ``sqlite3`` query from ``async def``, from ``def``, and through a thread.

The app's routes list (``asgi_app.py``) serves them; ``docs/next-questions.md`` shows each with curl.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import anyio.to_thread
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import StreamingResponse

from plumbing.query import read_chunks, read_delay, read_rows
from plumbing.record import REQUEST_NUMBERS, JSONResponse, run_record, say, where_am_i
from plumbing.settings import settings_of

# ------------------------------------------------------------ the client that leaves


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


# ------------------------------------------------------------------ background tasks


def background_job(number: int, delay: float) -> None:
    say(f"start background job #{number} delay={delay}")
    time.sleep(delay)  # holds a thread-pool token, the same ones def endpoints wait for
    say(f"end   background job #{number}")


async def background(request: Request) -> JSONResponse:
    """BackgroundTask with a plain def: runs after the answer, on the def endpoints' thread pool.

    Try: ?delay=2
    """
    delay = read_delay(request)
    with run_record(request, delay=delay) as record:
        job = BackgroundTask(background_job, next(REQUEST_NUMBERS), delay)  # runs once the answer is sent
    return JSONResponse(record, background=job)


# ------------------------------------------------------------------------- streaming


@dataclasses.dataclass
class Stream:
    """What a /stream route sends: ``count`` chunks, ``delay`` seconds apart, each noted on the console."""

    route: str
    count: int
    delay: float
    console: bool

    def chunk(self, number: int, began: float) -> str:
        if self.console:
            say(f"chunk {self.route} #{number} of {self.count}")
        return json.dumps({"chunk": number, "sent": round(time.perf_counter() - began, 4)}) + "\n"


def read_stream(request: Request) -> Stream:
    count = read_chunks(request)
    return Stream(request.scope["route"].path, count, read_delay(request), settings_of(request).console)


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


# ---------------------------------------------------------- a blocking database driver

# Counts 1..rows in SQLite itself: a query that takes time in proportion to ?rows=, like a slow report.
COUNT_ROWS = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?) SELECT count(*) FROM c"


def count_rows(rows: int) -> dict[str, Any]:
    """One query on a connection of its own, in memory and closed after: nothing shared, nothing on disk."""
    began = time.perf_counter()
    with contextlib.closing(sqlite3.connect(":memory:")) as db:
        (counted,) = db.execute(COUNT_ROWS, (rows,)).fetchone()
    return {"rows": counted, "seconds": round(time.perf_counter() - began, 4), **where_am_i()}


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
