"""What the tests share besides fixtures: the stacks to run on, helpers, and how to count overlap.

Fixtures live in ``conftest.py``; the servers and raw clients themselves in
``harness/servers.py`` (shared with the benchmark and the screenshot script).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from asgi_app import burn_cpu
from harness.servers import STACKS

# Runs a test module (or test) once per stack: `pytestmark = BOTH_STACKS`.
BOTH_STACKS = pytest.mark.parametrize("stack", list(STACKS), indirect=True, scope="module")

ServeFn = Callable[..., str]
ClientFn = Callable[..., Awaitable[httpx.AsyncClient]]


class Room:
    """A readers-writer lock across xdist workers, from two lock files.

    Most tests only wait, so the suite runs on several processes, each test
    inside the room with the others. The few timed parts whose claim needs free
    cores (a CPU ratio) take the room to themselves with ``to_myself()``. The
    one waiting for it holds the gate, so no new test enters in the meantime.
    """

    def __init__(self, directory: Path) -> None:
        self.gate = open(directory / "gate.lock", "a")  # noqa: SIM115 -- held for the whole session
        self.room = open(directory / "room.lock", "a")  # noqa: SIM115

    def enter(self) -> None:
        fcntl.flock(self.gate, fcntl.LOCK_EX)
        fcntl.flock(self.room, fcntl.LOCK_SH)
        fcntl.flock(self.gate, fcntl.LOCK_UN)

    def leave(self) -> None:
        fcntl.flock(self.room, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def to_myself(self) -> Iterator[None]:
        self.leave()
        fcntl.flock(self.gate, fcntl.LOCK_EX)
        fcntl.flock(self.room, fcntl.LOCK_EX)  # waits for the tests already inside to finish
        try:
            yield
        finally:
            fcntl.flock(self.room, fcntl.LOCK_UN)
            fcntl.flock(self.gate, fcntl.LOCK_UN)
            self.enter()

    def close(self) -> None:
        self.gate.close()
        self.room.close()


# ------------------------------------------------------------------ clients


@functools.cache
def cpu_rounds(seconds: float) -> int:
    """The ``n`` for /cpu/* that takes about ``seconds`` of CPU on this interpreter.

    A fixed ``n`` does not do: Debian's Python 3.11 runs the loop twice as fast
    as pyenv's 3.13, so 3,000,000 rounds were 0.15 s on one and 0.30 s on the
    other. CPU time, not the clock, so a busy machine does not shrink it.
    """
    sample = 200_000
    fastest = min(burn_cpu(sample)["cpu_seconds"] for _ in range(3))  # a first run may pay for a cold cache
    return round(sample * seconds / max(fastest, 1e-4))


async def get_all(client: httpx.AsyncClient, urls: Sequence[str]) -> tuple[list[httpx.Response], float]:
    """Sends every GET at once; returns the responses in order and the wall time."""
    began = time.perf_counter()
    responses = await anyio.amap(client.get, urls)
    return responses, time.perf_counter() - began


async def error_detail(client: httpx.AsyncClient, url: str | httpx.URL, status: int = 400, **params: str) -> str:
    """GETs ``url`` (with ``params``), checks it failed with ``status`` and a JSON body; returns its ``detail``."""
    response = await client.get(url, params=params or None)
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str), response.text
    return detail


async def health(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/healthz")
    assert response.status_code == 200, response.text
    return response.json()


def json_records(responses: Sequence[httpx.Response]) -> list[dict[str, Any]]:
    for response in responses:
        assert response.status_code == 200, response.text
    return [response.json() for response in responses]


# ------------------------------------------------------- what ran when


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


class Console:
    """What the servers running in this process have printed so far, read through ``capsys``."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys
        self.text = ""

    def read(self) -> str:
        self.text += self.capsys.readouterr().out
        return self.text

    async def wait_for(self, line: str, count: int = 1, timeout: float = 10) -> str:
        with anyio.fail_after(timeout):
            while self.read().count(line) < count:
                await anyio.sleep(0.005)
        return self.text


async def wait_for_console_line(capsys: pytest.CaptureFixture[str], text: str) -> None:
    await Console(capsys).wait_for(text)


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


def assert_waited_only_if(must_wait: bool, busy: dict[str, Any], instant: dict[str, Any]) -> None:
    """The instant call started after the busy one finished if it ``must_wait``; else finished first."""
    if must_wait:
        assert instant["started"] >= busy["finished"], (busy, instant)
    else:
        assert instant["finished"] < busy["finished"], (busy, instant)
