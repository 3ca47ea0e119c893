"""The questions after blocking versus awaiting: the client that leaves, background tasks,
streaming, a blocking database driver. (Gather versus a task group: test_upstream_faults.py.)"""

from __future__ import annotations

import json
import re
import time

import anyio
import httpx
import pytest

from harness.servers import open_client, raw_connection
from tests.utils import ClientFn, Console, ServeFn, assert_waited_only_if, health, instant_ping_during, json_records

TOOK = re.compile(r"end   (\S+) #\d+ took (\d+\.\d+)s")


def took(console: str, route: str) -> float:
    """Seconds the console's end line for ``route`` reports."""
    [seconds] = [float(s) for path, s in TOOK.findall(console) if path == route]
    return seconds


# ---------------------------------------------------------- the client that leaves


async def test_an_async_endpoint_runs_to_the_end_for_a_client_that_left(
    serve: ServeFn, capsys: pytest.CaptureFixture[str]
) -> None:
    console, base = Console(capsys), serve()
    async with raw_connection(base, "/ping/async?delay=0.6"):
        await console.wait_for("start /ping/async")
    text = await console.wait_for("end   /ping/async")  # the client hung up; the sleep went on
    assert took(text, "/ping/async") >= 0.59  # all 0.6 s of it (uvloop's timers tick in whole milliseconds)


async def test_watching_for_the_disconnect_cancels_the_work_when_the_client_leaves(
    serve: ServeFn, capsys: pytest.CaptureFixture[str]
) -> None:
    console, base = Console(capsys), serve()
    async with raw_connection(base, "/ping/until-gone?delay=5"):
        await console.wait_for("start /ping/until-gone")
    text = await console.wait_for("end   /ping/until-gone", timeout=2.5)
    assert took(text, "/ping/until-gone") < 2.5  # cut short, not the 5 s asked for
    async with open_client(base) as client:
        stayed = await client.get("/ping/until-gone?delay=0.1")
    assert stayed.status_code == 200, stayed.text
    assert stayed.json()["client_left"] is False


async def test_a_thread_runs_on_for_a_client_that_left_and_keeps_its_token_until_it_ends(
    serve: ServeFn, capsys: pytest.CaptureFixture[str]
) -> None:
    console, base = Console(capsys), serve()
    async with open_client(base) as client:
        async with raw_connection(base, "/ping/thread?delay=0.8"):
            await console.wait_for("start /ping/thread")
        gone = await health(client)  # the client has left; the thread cannot be told
        assert "end   /ping/thread" not in console.read()
        await console.wait_for("end   /ping/thread")
        with anyio.fail_after(2):
            while (back := await health(client))["thread_pool"]["borrowed"] > 0:
                await anyio.sleep(0.01)
    assert gone["thread_pool"]["borrowed"] == 1
    assert back["thread_pool"]["borrowed"] == 0
    assert took(console.text, "/ping/thread") >= 0.8


# ---------------------------------------------------------------- background tasks


async def test_background_jobs_answer_first_then_hold_the_threads_def_endpoints_wait_for(
    client_for: ClientFn, capsys: pytest.CaptureFixture[str]
) -> None:
    console = Console(capsys)
    client = await client_for(thread_tokens=2)
    responses = await anyio.gather(client.get("/background?delay=0.6"), client.get("/background?delay=0.6"))
    json_records(responses)
    answered = console.read()
    assert "end   background job" not in answered  # both answers left before either job ended
    await console.wait_for("start background job", count=2)
    busy = await health(client)
    ping = await client.get("/ping/thread?delay=0")
    assert ping.status_code == 200, ping.text
    text = console.read()
    assert busy["thread_pool"]["borrowed"] == 2  # the jobs hold both tokens
    # The def endpoint waited for a background job to give a token back.
    assert text.index("end   background job") < text.index("start /ping/thread")


# --------------------------------------------------------------------- streaming


async def chunk_arrivals(client: httpx.AsyncClient, url: str) -> list[float]:
    """When each line of a streamed answer arrived, in seconds after the request was sent."""
    began, arrivals = time.perf_counter(), []
    async with client.stream("GET", url) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            json.loads(line)
            arrivals.append(time.perf_counter() - began)
    return arrivals


@pytest.mark.parametrize("route", ["/stream/thread", "/stream/blocking", "/stream/async"])
async def test_streamed_chunks_arrive_over_time_not_at_the_end(client: httpx.AsyncClient, route: str) -> None:
    arrivals = await chunk_arrivals(client, f"{route}?chunks=4&delay=0.2")
    assert len(arrivals) == 4
    assert arrivals[-1] - arrivals[0] > 2 * 0.2  # ideal 0.6: three gaps of a delay each


@pytest.mark.parametrize(("route", "loop_held"), [("/stream/thread", False), ("/stream/blocking", True)])
async def test_only_the_async_generator_that_sleeps_holds_everyone_between_chunks(
    client: httpx.AsyncClient, route: str, loop_held: bool
) -> None:
    arrived: dict[str, float] = {}
    async with client.stream("GET", f"{route}?chunks=3&delay=0.4") as response:
        lines = response.aiter_lines()  # held in a name: an abandoned iterator closes the stream
        await anext(lines)  # the first chunk is here; the next is being made for 0.4 s

        async def read_the_rest() -> None:
            await anext(lines)
            arrived["second chunk"] = time.perf_counter()
            async for _ in lines:
                pass

        async def ping() -> None:
            response = await client.get("/ping/async?delay=0")
            assert response.status_code == 200, response.text
            arrived["ping"] = time.perf_counter()

        async with anyio.create_task_group() as group:
            group.start_soon(read_the_rest)
            group.start_soon(ping)
    # In the thread, the next chunk is made off the loop: the ping answers long before it.
    assert (arrived["ping"] > arrived["second chunk"]) is loop_held


@pytest.mark.parametrize(("route", "made_after_leaving"), [("/stream/async", 0), ("/stream/thread", 1)])
async def test_a_client_leaving_mid_stream_stops_the_stream_at_the_next_chunk(
    serve: ServeFn, capsys: pytest.CaptureFixture[str], route: str, made_after_leaving: int
) -> None:
    console, base = Console(capsys), serve()
    # 0.4 s apart: the client leaves well before the next chunk is due, even on a busy machine.
    async with raw_connection(base, f"{route}?chunks=100&delay=0.4") as stream:
        await stream.receive()  # the head and the first chunk
        await console.wait_for(f"chunk {route} #1 ")  # the second is made, and on its way
        made = console.read().count(f"chunk {route} ")
    await anyio.sleep(0.8)  # two more chunks' time
    # Starlette's StreamingResponse watches for the disconnect and cancels the stream; a step
    # already running in a thread cannot be stopped, so it finishes its chunk first.
    assert console.read().count(f"chunk {route} ") <= made + made_after_leaving


async def test_a_stream_that_blocks_the_loop_cannot_even_notice_its_client_left(
    serve: ServeFn, capsys: pytest.CaptureFixture[str]
) -> None:
    console, base = Console(capsys), serve()
    async with raw_connection(base, "/stream/blocking?chunks=6&delay=0.1") as stream:
        await stream.receive()
    # The loop never runs between chunks, so nothing reads the disconnect: all six are made.
    await console.wait_for("chunk /stream/blocking #5 of 6", timeout=5)


# ------------------------------------------------------ a blocking database driver


@pytest.mark.parametrize(
    ("route", "must_wait"), [("/db/blocking", True), ("/db/thread", False), ("/db/to-thread", False)]
)
async def test_a_sqlite_query_holds_the_loop_only_when_called_from_async_def(
    client: httpx.AsyncClient, capsys: pytest.CaptureFixture[str], route: str, must_wait: bool
) -> None:
    busy, instant = await instant_ping_during(client, capsys, f"{route}?rows=3000000")
    assert busy["query"]["rows"] == 3_000_000
    assert busy["query"]["on_event_loop"] is must_wait
    assert_waited_only_if(must_wait, busy, instant)


async def test_every_query_gets_its_own_connection_and_closes_it(client: httpx.AsyncClient) -> None:
    baseline = await health(client)
    for route in ("/db/blocking", "/db/thread", "/db/to-thread"):
        response = await client.get(f"{route}?rows=1000")
        assert response.status_code == 200, response.text
        assert response.json()["query"]["rows"] == 1000
    after = await health(client)
    assert after["open_fds"] <= baseline["open_fds"]  # in memory, closed: no file, no handle left
