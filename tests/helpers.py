"""Counting overlap from the server's own start/finish timestamps."""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import anyio
import httpx
import pytest

T = TypeVar("T")
R = TypeVar("R")


def start_end_order(records: Sequence[dict[str, Any]]) -> str:
    """'SESE' when the bodies ran one after another, 'SSEE' when they overlapped."""
    events = [(r["started"], 1, "S") for r in records] + [(r["finished"], 0, "E") for r in records]
    return "".join(letter for _, _, letter in sorted(events))  # an end sorts before a start at the same instant


def peak_in_flight(records: Sequence[dict[str, Any]]) -> int:
    """The largest number of endpoint bodies that were running at the same moment."""
    running = peak = 0
    for letter in start_end_order(records):
        running += 1 if letter == "S" else -1
        peak = max(peak, running)
    return peak


async def gather(fetch: Callable[[T], Awaitable[R]], items: Sequence[T]) -> list[R]:
    """Runs ``fetch(item)`` for every item at once; the results in the items' order."""
    results: dict[int, R] = {}

    async def run(index: int, item: T) -> None:
        results[index] = await fetch(item)

    async with anyio.create_task_group() as group:
        for index, item in enumerate(items):
            group.start_soon(run, index, item)
    return [results[index] for index in range(len(items))]


async def get_all(client: httpx.AsyncClient, urls: Sequence[str]) -> tuple[list[httpx.Response], float]:
    """Sends every GET at once; returns the responses in order and the wall time."""
    began = time.perf_counter()
    responses = await gather(client.get, urls)
    return responses, time.perf_counter() - began


def json_records(responses: Sequence[httpx.Response]) -> list[dict[str, Any]]:
    for response in responses:
        assert response.status_code == 200, response.text
    return [response.json() for response in responses]


async def wait_for_console_line(capsys: pytest.CaptureFixture[str], text: str) -> None:
    seen = ""
    with anyio.fail_after(10):
        while text not in seen:
            seen += capsys.readouterr().out
            await anyio.sleep(0.005)


async def instant_ping_during(
    client: httpx.AsyncClient, capsys: pytest.CaptureFixture[str], slow_url: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Sends ``/ping/async?delay=0`` once the server has printed that ``slow_url`` started."""
    slow: list[httpx.Response] = []

    async def send_slow() -> None:
        slow.append(await client.get(slow_url))

    async with anyio.create_task_group() as group:
        group.start_soon(send_slow)
        await wait_for_console_line(capsys, f"start {slow_url.split('?')[0]}")
        instant = await client.get("/ping/async?delay=0")
    return json_records(slow)[0], json_records([instant])[0]


async def raw_get(base_url: str, target: str) -> tuple[int, bytes]:
    """One GET on a connection of its own, read to the end: a load generator with nothing to spare."""
    host, port = base_url.removeprefix("http://").rsplit(":", 1)
    async with await anyio.connect_tcp(host, int(port)) as stream:
        await stream.send(f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
            while True:
                chunks.append(await stream.receive())
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


async def raw_get_all(base_url: str, targets: Sequence[str]) -> list[tuple[int, bytes]]:
    """Every GET at once, each on its own connection; results in order."""
    return await gather(functools.partial(raw_get, base_url), targets)
