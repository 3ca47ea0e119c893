"""The three ping routes: what blocks the event loop, what yields it, what uses threads."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.utils import (
    BOTH_STACKS,
    ClientFn,
    get_all,
    instant_ping_during,
    json_records,
    peak_in_flight,
    start_end_order,
)

DELAY = 0.2


@BOTH_STACKS  # a core claim: it holds on uvloop+httptools and asyncio+h11 alike
async def test_time_sleep_in_async_def_serializes_requests(client: httpx.AsyncClient) -> None:
    responses, elapsed = await get_all(client, [f"/ping/blocking?delay={DELAY}"] * 3)
    records = json_records(responses)
    assert peak_in_flight(records) == 1
    assert start_end_order(records) == "SESESE"
    assert all(r["on_event_loop"] for r in records)
    assert elapsed / DELAY > 2.5  # three delays back to back


@BOTH_STACKS
async def test_await_in_async_def_overlaps_requests(client: httpx.AsyncClient) -> None:
    responses, elapsed = await get_all(client, [f"/ping/async?delay={DELAY}"] * 10)
    records = json_records(responses)
    assert peak_in_flight(records) == 10
    assert start_end_order(records) == "S" * 10 + "E" * 10
    assert all(r["on_event_loop"] for r in records)
    assert elapsed / DELAY < 5  # ten delays side by side, not one after another (10)


@BOTH_STACKS
async def test_def_endpoint_runs_in_thread_pool_and_overlaps(client: httpx.AsyncClient) -> None:
    delay = 0.5  # a new thread per call the first time: time for all ten to start on a busy machine
    responses, elapsed = await get_all(client, [f"/ping/thread?delay={delay}"] * 10)
    records = json_records(responses)
    assert peak_in_flight(records) == 10
    assert not any(r["on_event_loop"] for r in records)
    assert len({r["thread_id"] for r in records}) == 10
    assert elapsed / delay < 5  # ten delays side by side, not one after another (10)


@BOTH_STACKS
async def test_def_endpoint_queues_in_waves_beyond_thread_limit(client_for: ClientFn) -> None:
    client = await client_for(thread_tokens=2)
    health = (await client.get("/healthz")).json()
    assert health["thread_pool"] == {"borrowed": 0, "total": 2, "waiting": 0}
    responses, elapsed = await get_all(client, [f"/ping/thread?delay={DELAY}"] * 6)
    records = sorted(json_records(responses), key=lambda r: r["started"])
    assert peak_in_flight(records) == 2
    # Six calls through two tokens: three waves, each wave starts after the one before ends.
    for wave in (1, 2):
        first_end_before = min(r["finished"] for r in records[2 * (wave - 1) : 2 * wave])
        assert all(r["started"] >= first_end_before for r in records[2 * wave : 2 * wave + 2])
    assert elapsed / DELAY > 2.5  # three waves of DELAY; the counts above are the proof


@BOTH_STACKS
async def test_instant_async_ping_waits_for_a_blocking_ping(
    client: httpx.AsyncClient, capsys: pytest.CaptureFixture[str]
) -> None:
    blocking, instant = await instant_ping_during(client, capsys, "/ping/blocking?delay=0.5")
    assert instant["started"] >= blocking["finished"]


@BOTH_STACKS
async def test_instant_async_ping_need_not_wait_for_a_thread_ping(
    client: httpx.AsyncClient, capsys: pytest.CaptureFixture[str]
) -> None:
    threaded, instant = await instant_ping_during(client, capsys, "/ping/thread?delay=0.5")
    assert instant["finished"] < threaded["finished"]


@pytest.mark.parametrize(
    ("route", "expected"),
    [
        ("/ping/blocking", "start,end,start,end"),
        ("/ping/async", "start,start,end,end"),
        ("/ping/thread", "start,start,end,end"),
    ],
)
async def test_console_shows_start_and_end_lines_in_order(
    client: httpx.AsyncClient, capsys: pytest.CaptureFixture[str], route: str, expected: str
) -> None:
    capsys.readouterr()
    responses, _ = await get_all(client, [f"{route}?delay={DELAY}"] * 2)
    json_records(responses)
    lines = [line.split()[0] for line in capsys.readouterr().out.splitlines() if route in line]
    assert ",".join(lines) == expected


async def test_delay_defaults_to_one_second(client: httpx.AsyncClient) -> None:
    began = time.perf_counter()
    response = await client.get("/ping/async")
    assert response.status_code == 200, response.text
    assert response.json()["delay"] == 1.0
    assert time.perf_counter() - began >= 1.0
