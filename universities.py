"""One upstream API, several countries: one call after another, or all at once.

``fetch_all_sync`` loops over the countries with a blocking ``httpx.Client``:
its time is the sum of the upstream latencies. ``fetch_all_async`` starts every
call at once on a shared ``httpx.AsyncClient``, at most ``max_concurrency`` in
flight: its time is about the slowest call. ``StandInUpstream`` serves the
public universities API's ``/search`` from a local data file, so all of this
works offline through a real HTTP round trip.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
from starlette.requests import Request
from starlette import responses
from starlette.routing import Route

PUBLIC_API_URL = "http://universities.hipolabs.com"
DEFAULT_COUNTRIES = ("turkey", "india", "australia")
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


class BodyReader:
    """Checks the status, collects the body up to the size cap, then parses the records."""

    def __init__(self, country: str, upstream: Upstream, response: httpx.Response) -> None:
        self.country = country
        self.max_bytes = upstream.max_bytes
        self.body = bytearray()
        if not response.is_success:
            raise UpstreamError(country, f"upstream answered {response.status_code}")
        if int(response.headers.get("content-length") or 0) > self.max_bytes:
            raise UpstreamError(country, f"body larger than {self.max_bytes} bytes")

    def feed(self, chunk: bytes) -> None:
        self.body += chunk
        if len(self.body) > self.max_bytes:
            raise UpstreamError(self.country, f"body larger than {self.max_bytes} bytes")

    def universities(self) -> list[University]:
        try:
            data = json.loads(self.body)  # invalid UTF-8 is a ValueError too
            if not isinstance(data, list):
                raise ValueError(f"expected a JSON array, got {type(data).__name__}")
            records = [University.from_json(item) for item in data]
        except ValueError as exc:
            raise UpstreamError(self.country, f"invalid response: {exc}") from None
        return list(dict.fromkeys(records))  # the public API has served duplicates


def fetch_country_sync(client: httpx.Client, upstream: Upstream, country: str) -> list[University]:
    deadline = time.monotonic() + upstream.timeout
    with upstream_faults(country, upstream.timeout):
        with client.stream("GET", upstream.search_url, params={"country": country}) as response:
            reader = BodyReader(country, upstream, response)
            for chunk in response.iter_bytes():
                reader.feed(chunk)
                if time.monotonic() > deadline:  # a trickling body would beat the per-read timeout
                    raise TimeoutError
    return reader.universities()


async def fetch_country_async(client: httpx.AsyncClient, upstream: Upstream, country: str) -> list[University]:
    slot = upstream.slots or contextlib.nullcontext()
    with upstream_faults(country, upstream.timeout), anyio.fail_after(upstream.timeout):
        async with slot, client.stream("GET", upstream.search_url, params={"country": country}) as response:
            reader = BodyReader(country, upstream, response)
            async for chunk in response.aiter_bytes():
                reader.feed(chunk)
    return reader.universities()


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
    results: dict[str, CountryResult] = {}
    began = time.perf_counter()

    async def fetch(country: str) -> None:
        async with limiter:  # waits here while max_concurrency calls are in flight
            started = time.perf_counter() - began
            universities = await fetch_country_async(client, upstream, country)  # yields the loop while waiting
            results[country] = CountryResult(country, universities, started, time.perf_counter() - began)

    try:
        async with anyio.create_task_group() as group:
            for country in countries:
                group.start_soon(fetch, country)
    except ExceptionGroup as group:
        # Not `except* UpstreamError`: CPython 3.11.0-3.11.3 wrap an exception raised
        # inside an except* clause in a new group (Debian 12's python3 is 3.11.2).
        failures = group.subgroup(UpstreamError)
        if failures is None:
            raise
        raise first_leaf(failures) from None
    return [results[country] for country in countries]


def first_leaf(group: BaseExceptionGroup[Any]) -> BaseException:
    first = group.exceptions[0]
    return first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


# ------------------------------------------------- the stand-in upstream


def load_records(path: Path = DATA_FILE) -> list[University]:
    return [University.from_json(item) for item in json.loads(path.read_text(encoding="utf-8"))]


class StandInUpstream:
    """The public API's ``GET /search?country=&name=&domain=``, offline, with a set latency.

    ``country`` matches whole and case-insensitively; ``name`` and ``domain``
    match any part, as the public API does. ``GET /stats`` reports how many
    searches were in flight at most, so tests can check a fan-out's bound.
    """

    def __init__(self, records: Sequence[University], *, latency: float) -> None:
        self.records = list(records)
        self.latency = latency
        self.in_flight = 0
        self.peak_in_flight = 0
        self.served = 0

    def routes(self) -> list[Route]:
        return [Route("/search", self.search), Route("/stats", self.stats)]

    async def search(self, request: Request) -> JSONResponse:
        params = request.query_params
        country = params.get("country", "").casefold()
        name = params.get("name", "").casefold()
        domain = params.get("domain", "").casefold()
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            await anyio.sleep(self.latency)  # a slow remote server: waits without blocking the loop
        finally:
            self.in_flight -= 1
        self.served += 1
        found = [
            record.to_json()
            for record in self.records
            if (not country or record.country.casefold() == country)
            and name in record.name.casefold()
            and (not domain or any(domain in d.casefold() for d in record.domains))
        ]
        return JSONResponse(found)

    async def stats(self, request: Request) -> JSONResponse:
        return JSONResponse({"in_flight": self.in_flight, "peak_in_flight": self.peak_in_flight, "served": self.served})
