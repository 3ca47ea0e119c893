"""The public universities API, offline: its own data set, its ``/search`` rules, a process of its own.

``GET /search`` answers from ``data/world_universities_and_domains.json`` by the
rules ``data/README.md`` reads from the API's source, after a set latency; ``GET
/stats`` counts the searches in flight, the most ever in flight, and those
served. It runs as its own server process (``python -m stand_in``), so whatever
the lessons do to the app's event loop, the "upstream" keeps its latency, as a
real one would. The app starts it on first use (``StandInProcess``).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

from plumbing.record import JSONResponse

DATA_FILE = Path(__file__).with_name("data") / "world_universities_and_domains.json"  # see data/README.md


def load_records(path: Path = DATA_FILE) -> list[dict[str, Any]]:
    """The data set's records exactly as written: same keys, same key order, same values."""
    return json.loads(path.read_text(encoding="utf-8"))


@functools.cache
def known_countries(path: Path = DATA_FILE) -> tuple[str, ...]:
    return tuple(sorted({record["country"] for record in load_records(path)}))


# ------------------------------------------------------------ the rules


class SearchError(ValueError):
    """A query the real API would answer with a 500; the stand-in answers 400 naming the parameter."""


def first(params: Mapping[str, Sequence[str]], name: str) -> str:
    values = params.get(name) or [""]
    return values[0]  # Flask's request.args.get: the first value when a parameter repeats


def name_matches(wanted: str, name: str) -> bool:
    """The API's ``name``: a prefix of the whole name, or of any word after the first."""
    low = name.lower()
    return low.startswith(wanted) or any(word.startswith(wanted) for word in low.split(" ")[1:])


def search_records(records: Sequence[dict[str, Any]], params: Mapping[str, Sequence[str]]) -> list[dict[str, Any]]:
    """The public API's ``/search``: ONE filter, chosen in the API's order, then offset, then limit.

    ``params`` maps each query parameter to its values, in order. ``name_contains``
    is matched literally at a word start: the API compiles it as a regular
    expression, which lets ``(`` crash it and ``(a+)+$`` stall it, so here it is
    escaped (``st.`` finds "St. John's" but not "State").
    """
    country, name = first(params, "country").lower(), first(params, "name").lower()
    contains, domain = first(params, "name_contains").lower(), first(params, "domain")
    offset, limit = whole_number(params, "offset"), whole_number(params, "limit")
    pattern = re.compile(r"\b" + re.escape(contains))
    if name and country:
        found = [r for r in records if name_matches(name, r["name"]) and r["country"].lower() == country]
    elif contains and country:
        found = [r for r in records if pattern.search(r["name"].lower()) and r["country"].lower() == country]
    elif contains:
        found = [r for r in records if pattern.search(r["name"].lower())]
    elif name:
        found = [r for r in records if name_matches(name, r["name"])]
    elif country:
        found = [r for r in records if r["country"].lower() == country]
    elif domain:
        found = [r for r in records if domain in r["domains"]]
    else:
        found = list(records)
    found = found[offset:] if offset is not None else found
    return found[:limit] if limit is not None else found


def whole_number(params: Mapping[str, Sequence[str]], name: str) -> int | None:
    raw = first(params, name)
    if not raw:
        return None
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 9:
        raise SearchError(f"{name} must be a whole number from 0 to 999999999, got {raw!r}")
    return int(raw)


# ------------------------------------------------------------ the server


class StandInUpstream:
    """The public API's ``GET /search``, offline, on the real data, with a set latency.

    ``GET /stats`` reports how many searches were in flight at most, so tests can
    check a fan-out's bound.
    """

    def __init__(self, records: Sequence[dict[str, Any]], *, latency: float) -> None:
        self.records = list(records)
        self.latency = latency
        self.in_flight = 0
        self.peak_in_flight = 0
        self.served = 0

    def routes(self) -> list[Route]:
        return [Route("/search", self.search), Route("/stats", self.stats)]

    async def search(self, request: Request) -> JSONResponse:
        params: dict[str, list[str]] = {}
        for key, value in request.query_params.multi_items():
            params.setdefault(key, []).append(value)
        try:
            found = search_records(self.records, params)
        except SearchError as exc:
            return JSONResponse({"detail": str(exc)}, status_code=400)
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            await anyio.sleep(self.latency)  # a slow remote server: waits without blocking the loop
        finally:
            self.in_flight -= 1
        self.served += 1
        return JSONResponse(found)

    async def stats(self, request: Request) -> JSONResponse:
        counts = {"in_flight": self.in_flight, "peak_in_flight": self.peak_in_flight, "served": self.served}
        return JSONResponse({**counts, "pid": os.getpid()})  # the stand-in's own process, not the app's


def stand_in_app(latency: float) -> Starlette:
    return Starlette(routes=StandInUpstream(load_records(), latency=latency).routes())


class StandInProcess:
    """The stand-in's own server process, on a loopback socket bound at once, started on first use.

    Binding first makes the address known at once, and a call made before the
    child is ready waits in the socket's backlog instead of failing. Starting
    on first use means an app that never calls the universities routes never
    pays for the child (about 0.15 s of CPU).
    """

    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.process: subprocess.Popen[bytes] | None = None
        self.lock = threading.Lock()  # the sync route asks from worker threads

    def started_url(self) -> str:
        with self.lock:
            if self.process is None:
                fd = self.listener.fileno()
                command = [sys.executable, "-m", "stand_in", "--fd", str(fd), "--latency", repr(self.latency)]
                self.process = subprocess.Popen(
                    command, cwd=Path(__file__).parent, stdin=subprocess.PIPE, pass_fds=(fd,),
                    start_new_session=True,  # a Ctrl-C in the terminal is for the app; the app then stops the child
                )  # fmt: skip
                self.listener.close()  # the child's copy remains: if the child dies, calls are refused, not queued
        return self.url

    async def started_url_async(self) -> str:
        """``started_url`` for the event loop: the first start (a fork and an exec) runs in a thread."""
        return self.url if self.process is not None else await anyio.to_thread.run_sync(self.started_url)

    def stop(self) -> None:
        with self.lock:
            self.listener.close()
            if self.process is None:
                return
            assert self.process.stdin is not None
            self.process.stdin.close()  # alone, this makes it exit: what saves it when the app is killed
            # The stand-in holds no state and the app's clients are closed by now: killing it
            # costs nothing, where a graceful stop would add 0.1-0.4 s to every shutdown.
            self.process.kill()
            self.process.wait()  # a SIGKILL is quick


@contextlib.asynccontextmanager
async def stand_in_server(latency: float) -> AsyncIterator[StandInProcess]:
    stand_in = StandInProcess(latency)
    try:
        yield stand_in
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(stand_in.stop)  # reaps the child in a thread, not on the loop


def serve_stand_in(argv: Sequence[str] | None = None) -> None:
    """``python -m stand_in [--port 0] [--latency 0.5]``: the stand-in as a server of its own.

    It listens on 127.0.0.1 (or on the listening socket ``--fd`` it was handed),
    prints ``listening on http://127.0.0.1:PORT`` once it accepts, and exits when
    its standard input closes: a parent that dies never leaves it behind.
    """
    parser = argparse.ArgumentParser(prog="python -m stand_in", description=serve_stand_in.__doc__)
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--fd", type=int, help="a listening socket inherited from the parent")
    parser.add_argument("--latency", type=float, default=0.5, help="seconds per search")
    args = parser.parse_args(argv)
    sockets = [socket.socket(fileno=args.fd)] if args.fd is not None else None
    # Idle connections are kept longer than the app's client keeps them (APP_UPSTREAM_KEEPALIVE, 5 s), so
    # the client always drops one first; at uvicorn's own 5 s both sides could close the same one at once.
    config = uvicorn.Config(
        stand_in_app(args.latency), host="127.0.0.1", port=args.port, log_level="warning", timeout_keep_alive=75
    )
    server = uvicorn.Server(config)

    def exit_when_stdin_closes() -> None:
        while sys.stdin.buffer.read(4096):
            pass  # nothing is ever sent: the pipe only tells us the parent is alive
        server.should_exit = True

    threading.Thread(target=exit_when_stdin_closes, name="stdin-watch", daemon=True).start()

    async def run() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(server.serve, sockets)
            while not server.started and not server.should_exit:
                await anyio.sleep(0.01)
            if server.started and args.fd is None:  # a parent that handed over a socket knows the port
                port = server.servers[0].sockets[0].getsockname()[1]
                print(f"listening on http://127.0.0.1:{port}", flush=True)

    anyio.run(run)


if __name__ == "__main__":
    serve_stand_in()
