"""One upstream API, several countries: one call after another, or all at once.

``fetch_all_sync`` loops over the countries with a blocking ``httpx.Client``:
its time is the sum of the upstream latencies. ``fetch_all_async`` starts every
call at once on a shared ``httpx.AsyncClient``, at most ``max_concurrency`` in
flight: its time is about the slowest call. ``fetch_all_gather`` is the
articles' ``asyncio.gather``, kept to show what it leaves behind when a call
fails. Below them: one call, then the guards every call passes (timeout, size,
shape). The upstream itself, offline, is ``stand_in.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import json
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.to_thread
import httpx

from stand_in import known_countries


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


# ---------------------------------------------------------- many calls


def fetch_all_sync(client: httpx.Client, upstream: Upstream, countries: Sequence[str]) -> list[CountryResult]:
    began = time.perf_counter()
    results = []
    for country in countries:
        started = time.perf_counter() - began
        universities = fetch_country_sync(client, upstream, country)  # the next call waits for this one
        results.append(CountryResult(country, universities, started, time.perf_counter() - began))
    return results


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


# ------------------------------------------------------------ one call

DECODE_IN_THREAD_BYTES = 64_000  # about 1 ms of decoding; the United States' 410 KB take about 7 ms


async def fetch_timed(client: httpx.AsyncClient, upstream: Upstream, country: str, began: float) -> CountryResult:
    """One country's call, with when it started and finished relative to the request's ``began``."""
    started = time.perf_counter() - began
    universities = await fetch_country_async(client, upstream, country)  # yields the loop while waiting
    return CountryResult(country, universities, started, time.perf_counter() - began)


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
    # A big body is decoded in a thread, so the loop serves others meanwhile (docs/fan-out.md measures it).
    # Its thread counts against the same slots as the calls: never more decoding than calls allowed,
    # and none of the 40 tokens that def endpoints wait for.
    return await anyio.to_thread.run_sync(parse_universities, country, body.data, limiter=upstream.slots)


# ------------------------------------------------------------ the guards


class UpstreamError(Exception):
    """An upstream call that failed: 502 when it answered badly, 504 when it did not answer in time."""

    def __init__(self, country: str, cause: str, *, status_code: int = 502) -> None:
        super().__init__(f"upstream call for {country!r} failed: {cause}")
        self.country = country
        self.status_code = status_code


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


# ----------------------------------------------- an empty answer's hint

HINT_CUTOFF = 0.75
HINT_MIN_LENGTH = 3


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
