"""One upstream API, several countries: one call after another, or all at once.

``fetch_all_sync`` loops over the countries with a blocking ``httpx.Client``:
its time is the sum of the upstream latencies. ``fetch_all_async`` starts every
call at once on a shared ``httpx.AsyncClient``, at most ``max_concurrency`` in
flight: its time is about the slowest call. ``StandInUpstream`` answers the
public universities API's ``/search`` from that API's own data set, by its
rules, in a server process of its own (``python -m universities``), so all of
this works offline through a real HTTP round trip, and nothing the app's event
loop suffers slows the "upstream" down.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import difflib
import functools
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx
import uvicorn
from starlette import responses
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

PUBLIC_API_URL = "http://universities.hipolabs.com"
DEFAULT_COUNTRIES = ("turkiye", "india", "australia")  # the data says Turkiye: "turkey" finds nothing
DATA_FILE = Path(__file__).with_name("data") / "world_universities_and_domains.json"  # see data/README.md


class JSONResponse(responses.JSONResponse):
    """Starlette's JSON answer plus a final newline, so two ``curl``s in a row print two lines."""

    def render(self, content: Any) -> bytes:
        return super().render(content) + b"\n"


@dataclass(frozen=True)
class University:
    """One record of the universities API; ``state-province`` may be null."""

    name: str
    country: str
    alpha_two_code: str
    state_province: str | None
    domains: tuple[str, ...]
    web_pages: tuple[str, ...]

    @classmethod
    def from_json(cls, data: Any) -> University:
        """Raises ``ValueError`` naming the first field that is missing or of the wrong type."""
        if not isinstance(data, dict):
            raise ValueError(f"expected an object, got {type(data).__name__}")
        for key in ("name", "country", "alpha_two_code"):
            if not isinstance(data.get(key), str):
                raise ValueError(f"{key!r} must be a string")
        if not isinstance(data.get("state-province", ""), str | None):
            raise ValueError("'state-province' must be a string or null")
        for key in ("domains", "web_pages"):
            value = data.get(key)
            if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
                raise ValueError(f"{key!r} must be a list of strings")
        return cls(
            name=data["name"],
            country=data["country"],
            alpha_two_code=data["alpha_two_code"],
            state_province=data.get("state-province"),
            domains=tuple(data["domains"]),
            web_pages=tuple(data["web_pages"]),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "country": self.country,
            "alpha_two_code": self.alpha_two_code,
            "state-province": self.state_province,
            "domains": list(self.domains),
            "web_pages": list(self.web_pages),
        }


class UpstreamError(Exception):
    """An upstream call that failed: 502 when it answered badly, 504 when it did not answer in time."""

    def __init__(self, country: str, cause: str, *, status_code: int = 502) -> None:
        super().__init__(f"upstream call for {country!r} failed: {cause}")
        self.country = country
        self.status_code = status_code


DECODE_IN_THREAD_BYTES = 64_000  # about 1 ms of decoding; the United States' 410 KB take about 7 ms


@dataclass(frozen=True, kw_only=True)
class Upstream:
    """Where to call and how much to put up with, for every call of one request."""

    search_url: str
    timeout: float  # seconds for a whole call, from connecting to the last byte
    max_bytes: int  # a longer body is refused before it is all in memory
    # Async calls in flight across the whole process, at most the client's pool size.
    # Waiting here is cheap; httpcore's own pool queue costs CPU for every waiting
    # request each time a connection frees up, which starves the loop under load.
    slots: anyio.CapacityLimiter | None = None


@dataclass(frozen=True)
class CountryResult:
    country: str
    universities: list[University]
    started: float  # seconds after the fan-out began
    finished: float

    def call_json(self) -> dict[str, Any]:
        return {
            "country": self.country,
            "started": round(self.started, 4),
            "finished": round(self.finished, 4),
            "duration": round(self.finished - self.started, 4),
            "count": len(self.universities),
            **({"hint": hint} if not self.universities and (hint := country_hint(self.country)) else {}),
        }


# ------------------------------------------------------------ one call


@contextlib.contextmanager
def upstream_faults(country: str, timeout: float) -> Iterator[None]:
    """Turns whatever the transport raises into an ``UpstreamError``."""
    try:
        yield
    except (httpx.TimeoutException, TimeoutError):
        raise UpstreamError(country, f"no answer within {timeout:g} s", status_code=504) from None
    except httpx.HTTPError as exc:
        raise UpstreamError(country, f"{type(exc).__name__}: {exc or 'connection failed'}") from None


def check_head(country: str, upstream: Upstream, response: httpx.Response) -> None:
    """What both fetchers check before reading a body: the status, and the length it announces."""
    if not response.is_success:
        raise UpstreamError(country, f"upstream answered {response.status_code}")
    if int(response.headers.get("content-length") or 0) > upstream.max_bytes:
        raise UpstreamError(country, f"body larger than {upstream.max_bytes} bytes")


class CappedBody:
    """A body's bytes as they arrive, refused the moment they pass ``max_bytes``."""

    def __init__(self, country: str, max_bytes: int) -> None:
        self.country = country
        self.max_bytes = max_bytes
        self.data = bytearray()

    def feed(self, chunk: bytes) -> None:
        self.data += chunk
        if len(self.data) > self.max_bytes:
            raise UpstreamError(self.country, f"body larger than {self.max_bytes} bytes")


def parse_universities(country: str, body: bytes | bytearray) -> list[University]:
    try:
        data = json.loads(body)  # invalid UTF-8 is a ValueError too
        if not isinstance(data, list):
            raise ValueError(f"expected a JSON array, got {type(data).__name__}")
        records = [University.from_json(item) for item in data]
    except ValueError as exc:
        raise UpstreamError(country, f"invalid response: {exc}") from None
    return list(dict.fromkeys(records))  # the public API has served duplicates


def fetch_country_sync(client: httpx.Client, upstream: Upstream, country: str) -> list[University]:
    deadline = time.monotonic() + upstream.timeout
    body = CappedBody(country, upstream.max_bytes)
    with upstream_faults(country, upstream.timeout):
        with client.stream("GET", upstream.search_url, params={"country": country}) as response:
            check_head(country, upstream, response)
            for chunk in response.iter_bytes():
                body.feed(chunk)
                if time.monotonic() > deadline:  # a trickling body would beat the per-read timeout
                    raise TimeoutError
    return parse_universities(country, body.data)


async def fetch_country_async(client: httpx.AsyncClient, upstream: Upstream, country: str) -> list[University]:
    slot = upstream.slots or contextlib.nullcontext()
    body = CappedBody(country, upstream.max_bytes)
    with upstream_faults(country, upstream.timeout), anyio.fail_after(upstream.timeout):
        async with slot, client.stream("GET", upstream.search_url, params={"country": country}) as response:
            check_head(country, upstream, response)
            async for chunk in response.aiter_bytes():
                body.feed(chunk)
    if len(body.data) < DECODE_IN_THREAD_BYTES:
        return parse_universities(country, body.data)  # under a millisecond on the loop: cheaper than a thread hop
    # Measured (bench/stand_in_cost.py): decoding the 5 biggest countries on the loop made an instant ping wait
    # 19 ms, in a thread 11 ms. The thread still shares the GIL, but it yields it every 5 ms, so the loop runs.
    return await anyio.to_thread.run_sync(parse_universities, country, body.data, limiter=upstream.slots)  # loop serves


# ---------------------------------------------------------- many calls


def fetch_all_sync(client: httpx.Client, upstream: Upstream, countries: Sequence[str]) -> list[CountryResult]:
    began = time.perf_counter()
    results = []
    for country in countries:
        started = time.perf_counter() - began
        universities = fetch_country_sync(client, upstream, country)  # the next call waits for this one
        results.append(CountryResult(country, universities, started, time.perf_counter() - began))
    return results


async def fetch_timed(client: httpx.AsyncClient, upstream: Upstream, country: str, began: float) -> CountryResult:
    """One country's call, with when it started and finished relative to the request's ``began``."""
    started = time.perf_counter() - began
    universities = await fetch_country_async(client, upstream, country)  # yields the loop while waiting
    return CountryResult(country, universities, started, time.perf_counter() - began)


async def fetch_all_async(
    client: httpx.AsyncClient, upstream: Upstream, countries: Sequence[str], *, max_concurrency: int
) -> list[CountryResult]:
    # A task group with a capacity limiter rather than asyncio.gather with a
    # semaphore: when one call fails, the group cancels the calls still running
    # and waits for them to finish, so no request outlives this function and no
    # connection is left half-read. gather would raise the first error and leave
    # the other calls running, unobserved.
    limiter = anyio.CapacityLimiter(max_concurrency)
    began = time.perf_counter()

    async def fetch(country: str) -> CountryResult:
        async with limiter:  # waits here while max_concurrency calls are in flight
            return await fetch_timed(client, upstream, country, began)

    try:
        async with anyio.create_task_group() as group:
            calls = [group.start_soon(fetch, country) for country in countries]  # task handles, in order
    except ExceptionGroup as group:
        # Not `except* UpstreamError`: CPython 3.11.0-3.11.3 wrap an exception raised
        # inside an except* clause in a new group (Debian 12's python3 is 3.11.2).
        failures = group.subgroup(UpstreamError)
        if failures is None:
            raise
        raise first_leaf(failures) from None
    return [call.return_value for call in calls]


async def fetch_all_gather(
    client: httpx.AsyncClient, upstream: Upstream, countries: Sequence[str], *, max_concurrency: int
) -> list[CountryResult]:
    """The articles' way: ``asyncio.gather`` with an ``asyncio.Semaphore``, kept to show what it costs.

    The first failure is raised at once, and the calls still running are left
    to run: their connections stay busy and their results are thrown away.
    """
    semaphore = asyncio.Semaphore(max_concurrency)
    began = time.perf_counter()

    async def fetch(country: str) -> CountryResult:
        async with semaphore:  # waits here while max_concurrency calls are in flight
            return await fetch_timed(client, upstream, country, began)

    return await asyncio.gather(*(fetch(country) for country in countries))  # a failure leaves the rest running


def first_leaf(group: BaseExceptionGroup[Any]) -> BaseException:
    first = group.exceptions[0]
    return first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


# ------------------------------------------------- the stand-in upstream


def load_records(path: Path = DATA_FILE) -> list[dict[str, Any]]:
    """The data set's records exactly as written: same keys, same key order, same values."""
    return json.loads(path.read_text(encoding="utf-8"))


@functools.cache
def known_countries(path: Path = DATA_FILE) -> tuple[str, ...]:
    return tuple(sorted({record["country"] for record in load_records(path)}))


def country_hint(country: str) -> str | None:
    """A near-miss's likely meaning (``turkey`` -> ``Turkiye``) from the bundled data, or None.

    A word-prefix match first (``korea`` -> ``Korea, Republic of``), then difflib
    with a high cutoff: at difflib's default 0.6, ``atlantis`` suggested Albania and
    ``usa`` Tunisia; at 0.75 those stay quiet and ``turkey`` still finds ``Turkiye``.
    """
    wanted = country.strip().lower()
    by_lower = {name.lower(): name for name in known_countries()}
    if len(wanted) < HINT_MIN_LENGTH or wanted in by_lower:
        return None  # "uk" would suggest Ukraine
    found = [
        name
        for low, name in by_lower.items()
        if re.search(r"\b" + re.escape(wanted), low) or wanted.startswith(low + " ")  # "united states of america"
    ]
    found = found or [by_lower[low] for low in difflib.get_close_matches(wanted, by_lower, n=2, cutoff=HINT_CUTOFF)]
    if not found:
        return None
    return f"no universities for {country!r}; did you mean {' or '.join(repr(name) for name in found[:3])}?"


HINT_CUTOFF = 0.75
HINT_MIN_LENGTH = 3


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


class StandInUpstream:
    """The public API's ``GET /search``, offline, on the real data, with a set latency.

    ``GET /stats`` reports how many searches were in flight at most, so tests can
    check a fan-out's bound. It runs as its own server process (``python -m
    universities``), so nothing the lessons do to their event loop reaches it.
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
                command = [sys.executable, "-m", "universities", "--fd", str(fd), "--latency", repr(self.latency)]
                self.process = subprocess.Popen(
                    command, cwd=Path(__file__).parent, stdin=subprocess.PIPE, pass_fds=(fd,),
                    start_new_session=True,  # a Ctrl-C in the terminal is for the app; the app then stops the child
                )  # fmt: skip
                self.listener.close()  # the child's copy remains: if the child dies, calls are refused, not queued
        return self.url

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
    """``python -m universities [--port 0] [--latency 0.5]``: the stand-in as a server of its own.

    It listens on 127.0.0.1 (or on the listening socket ``--fd`` it was handed),
    prints ``listening on http://127.0.0.1:PORT`` once it accepts, and exits when
    its standard input closes: a parent that dies never leaves it behind.
    """
    parser = argparse.ArgumentParser(prog="python -m universities", description=serve_stand_in.__doc__)
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
