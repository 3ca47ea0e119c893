"""The stand-in is the real API: its data, its /search rules, and a process of its own."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from asgi_app import create_app
from harness.servers import REPO, is_running, open_client, running_server, uvicorn_process
from plumbing.settings import Settings
from tests.utils import ClientFn, error_detail


@functools.cache
def data() -> list[dict[str, Any]]:
    """The bundled data set, read on first use: the processes that run none of these tests never parse it."""
    return json.loads((REPO / "data" / "world_universities_and_domains.json").read_text(encoding="utf-8"))


# ------------------------------------------- the API's rules, written again


def is_word(char: str) -> bool:
    return char.isalnum() or char == "_"


def starts_a_word(text: str, index: int) -> bool:
    """Where a regular expression's ``\\b`` would match: a word character on one side only."""
    before = index > 0 and is_word(text[index - 1])
    after = index < len(text) and is_word(text[index])
    return before != after


def reference_search(query: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """data/README.md's description, in plain loops, with name_contains taken literally."""
    given: dict[str, str] = {}
    for key, value in query:
        given.setdefault(key, value)  # the first of a repeated parameter
    country = given.get("country", "").lower()
    name = given.get("name", "").lower()
    contains = given.get("name_contains", "").lower()
    domain = given.get("domain", "")

    def name_fits(record: dict[str, Any]) -> bool:
        words = record["name"].lower().split(" ")
        if " ".join(words).startswith(name):
            return True
        for word in words[1:]:
            if word.startswith(name):
                return True
        return False

    def contains_fits(record: dict[str, Any]) -> bool:
        text = record["name"].lower()
        for index in range(len(text)):
            if text[index : index + len(contains)] == contains and starts_a_word(text, index):
                return True
        return False

    def country_fits(record: dict[str, Any]) -> bool:
        return record["country"].lower() == country

    result = []
    for record in data():
        if name and country:
            keep = name_fits(record) and country_fits(record)
        elif contains and country:
            keep = contains_fits(record) and country_fits(record)
        elif contains:
            keep = contains_fits(record)
        elif name:
            keep = name_fits(record)
        elif country:
            keep = country_fits(record)
        elif domain:
            keep = domain in record["domains"]
        else:
            keep = True
        if keep:
            result.append(record)
    if given.get("offset"):
        result = result[int(given["offset"]) :]
    if given.get("limit"):
        result = result[: int(given["limit"])]
    return result


QUERIES = [
    "name=ustr",  # no name has a word starting "ustr"
    "country=Australia&limit=2",
    "domain=u.edu.au",  # exact domains only
    "domain=metu.edu.tr",
    "domain=METU.EDU.TR",  # case-sensitive
    "domain=edu.tr",
    "name=middle",
    "name=iddle",  # inside a word: nothing
    "name=MIDDLE%20EAST",
    "name=middle&country=turkiye",
    "name=middle&country=Turkiye&name_contains=zzz",  # name + country comes first
    "name_contains=tech&country=Turkiye",
    "name_contains=institute",
    "name_contains=univ&name=middle",  # name_contains comes before name
    "name_contains=st.",  # literal here: the API would read "." as any character
    "name_contains=(",  # a 500 at the API, literal here
    "country=Turkiye&domain=metu.edu.tr",  # country wins over domain
    "country=turkey",  # the data says Turkiye
    "country=KOREA,%20REPUBLIC%20OF",
    "country=C%C3%B4te%20d%27Ivoire",
    "country=India&offset=5&limit=3",
    "country=Australia&offset=2",
    "country=India&limit=0",
    "country=United%20States&offset=2340",
    "country=India&country=Japan",  # the first value counts
    "name=&country=Chile",  # an empty parameter is no parameter
    "offset=10000",
    "",  # no parameter at all: every record
]


@pytest.fixture(scope="module")
def stand_in_base() -> Iterator[str]:
    with running_server(create_app(Settings(upstream_latency=0))) as base:
        yield base


@pytest.mark.parametrize("query", QUERIES)
async def test_stand_in_answers_as_the_reference_of_the_api_rules(stand_in_base: str, query: str) -> None:
    pairs = httpx.QueryParams(query).multi_items()
    async with open_client(stand_in_base) as client:
        response = await client.get(httpx.URL("/upstream/search", query=query.encode()))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    expected = reference_search(pairs)
    assert response.json() == expected
    assert [list(record) for record in response.json()] == [list(record) for record in expected]  # key order too


@pytest.mark.parametrize(
    ("query", "named"),
    [("limit=abc", "limit"), ("offset=-1", "offset"), ("limit=1e3", "limit"), ("offset=%D9%A3", "offset")],
)
async def test_bad_limit_or_offset_is_a_json_400_not_the_apis_500(stand_in_base: str, query: str, named: str) -> None:
    async with open_client(stand_in_base) as client:
        detail = await error_detail(client, httpx.URL("/upstream/search", query=query.encode()))
    assert detail.startswith(f"{named} must be a whole number")


async def test_a_hostile_pattern_is_searched_literally_and_promptly(stand_in_base: str) -> None:
    async with open_client(stand_in_base) as client:
        began = time.perf_counter()
        response = await client.get("/upstream/search", params={"name_contains": "(a+)+$" + "a" * 50})
    assert response.status_code == 200, response.text
    assert response.json() == [] and time.perf_counter() - began < 1


# ------------------------------------------------ a process of its own


async def test_stand_in_runs_in_another_process_and_stops_with_the_server() -> None:
    # Its start-up time is a figure, not a test: `python -m bench.stand_in_cost` measures it.
    with running_server(create_app(Settings(upstream_latency=0))) as base:
        async with open_client(base) as client:
            stats = (await client.get("/upstream/stats")).json()
            health = (await client.get("/healthz")).json()
    assert stats["pid"] != health["pid"]
    with anyio.fail_after(2):
        while is_running(stats["pid"]):
            await anyio.sleep(0.02)  # stopped with the server


def stand_ins_started_here() -> set[int]:
    """The pids of this process's children that run ``python -m stand_in``."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if parent == os.getpid() and b"stand_in" in (stat.parent / "cmdline").read_bytes():
                found.add(int(stat.parent.name))
    return found


async def test_a_refused_request_does_not_start_the_stand_in(client_for: ClientFn) -> None:
    client = await client_for(upstream_latency=0)
    before = stand_ins_started_here()
    for query in ("max_concurrency=0", "country=", "country=a&country=a&max_concurrency=x"):
        await error_detail(client, f"/universities/async?{query}")
    await error_detail(client, "/universities/sync?country=")
    assert stand_ins_started_here() - before == set()
    assert (await client.get("/universities/async?country=chile")).status_code == 200
    assert len(stand_ins_started_here() - before) == 1  # the first call it needs starts it


async def test_stand_in_exits_when_its_parent_is_killed(tmp_path: Path) -> None:
    with uvicorn_process(env={"APP_UPSTREAM_LATENCY": "0"}, tmp=tmp_path) as server:
        child = httpx.get(f"{server.base_url}/upstream/stats", timeout=5).json()["pid"]
        server.process.send_signal(signal.SIGKILL)  # no lifespan shutdown: only the closed stdin pipe tells the child
        server.process.wait(timeout=5)
        with anyio.fail_after(3):
            while is_running(child):
                await anyio.sleep(0.02)


async def test_blocked_loop_does_not_slow_a_def_endpoints_upstream_calls_only_its_answer(client_for: ClientFn) -> None:
    latency, block = 0.2, 1.0
    client = await client_for(upstream_latency=latency)
    answers: dict[str, dict[str, Any]] = {}
    arrived: dict[str, float] = {}
    assert (await client.get("/upstream/stats")).status_code == 200  # the stand-in starts on first use

    async def get(name: str, url: str) -> None:
        response = await client.get(url)
        arrived[name] = time.time()
        assert response.status_code == 200, response.text
        answers[name] = response.json()

    async with anyio.create_task_group() as group:
        group.start_soon(get, "sync", "/universities/sync?country=turkiye&country=india&country=chile")
        with anyio.fail_after(5):  # the first upstream call has begun, in a worker thread
            while (await client.get("/upstream/stats")).json()["in_flight"] == 0:
                await anyio.sleep(0.01)
        group.start_soon(get, "blocking", f"/ping/blocking?delay={block}")
    sync, blocking = answers["sync"], answers["blocking"]
    durations = [call["duration"] for call in sync["calls"]]
    # Were the stand-in on the app's loop, no call could end while the loop slept, and the one
    # caught by the block would last until the block ended.
    assert sync["finished"] < blocking["finished"]  # the calls were all done while the loop slept
    assert max(durations) < block  # none held up by the block (each takes about its 0.2 s)
    assert arrived["sync"] >= blocking["finished"]  # but the answer is sent through the loop: it waited


# ---------------------------------------------------------- large answers

BIGGEST = ["United States", "Japan", "India", "China", "Germany"]


def distinct_records(country: str) -> int:
    return len({json.dumps(record, sort_keys=True) for record in data() if record["country"] == country})


async def test_fanout_over_the_biggest_countries_brings_every_record(stand_in_base: str) -> None:
    async with open_client(stand_in_base) as client:
        response = await client.get("/universities/async", params={"country": BIGGEST})
    assert response.status_code == 200, response.text
    body = response.json()
    assert [call["count"] for call in body["calls"]] == [distinct_records(country) for country in BIGGEST]
    assert body["calls"][0]["count"] > 2000 and len(response.content) > 700_000
    assert {record["country"] for record in body["universities"]["United States"]} == {"United States"}


@pytest.mark.parametrize("route", ["/universities/sync", "/universities/async"])
async def test_a_body_exactly_at_the_byte_limit_passes_and_one_byte_over_is_a_502(
    client_for: ClientFn, stand_in_base: str, route: str
) -> None:
    async with open_client(stand_in_base) as client:
        size = len((await client.get("/upstream/search", params={"country": "United States"})).content)
    for limit, status in ((size, 200), (size - 1, 502)):
        client = await client_for(upstream_latency=0, upstream_max_bytes=limit)
        response = await client.get(route, params={"country": "United States"})
        assert response.status_code == status, response.text
        if status == 200:
            assert len(response.json()["universities"]["United States"]) == distinct_records("United States")
        else:
            assert response.json()["detail"].endswith(f"body larger than {limit} bytes")


async def test_no_stand_in_runs_when_an_upstream_url_is_set(client_for: ClientFn) -> None:
    client = await client_for(upstream_url="http://127.0.0.1:9")
    for path in ("/upstream/search", "/upstream/stats"):
        assert "APP_UPSTREAM_URL" in await error_detail(client, path, status=404)
