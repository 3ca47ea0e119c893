"""What production sends: fault storms, load, shutdown mid-request, slow and stuck clients."""

from __future__ import annotations

import json
import random
import resource
import signal
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from harness.servers import open_client, raw_connection, raw_get, raw_get_all, unused_port, uvicorn_process
from tests.utils import BOTH_STACKS, peak_in_flight
from tests.utils import health as client_health

pytestmark = pytest.mark.slow

KEEPALIVE = 0.25  # seconds an idle upstream connection is kept, shortened for the test
STORM_FAULTS = ["refuse", "reset", "hang", "trickle", "endless", "notutf8", "badjson", "error", "schema"]


@pytest.fixture(autouse=True)
def enough_file_descriptors() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096 <= hard or soft < hard < 4096:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))  # children inherit it


async def health(base_url: str) -> dict[str, Any]:
    async with open_client(base_url, timeout=10) as client:
        return await client_health(client)


async def health_with_pools_drained(base_url: str) -> dict[str, Any]:
    """/healthz once idle keep-alive connections have expired and both clients have dropped them.

    A pool closes expired connections when it is next used, so one healthy call
    through each client (``/storm`` with the country ``echo``) leaves one each.
    """
    await anyio.sleep(KEEPALIVE * 2)
    for route in ("/universities/sync", "/universities/async"):
        reply = await raw_get(base_url, f"{route}?country=echo")
        assert reply.status == 200, reply.body
    return await health(base_url)


async def settled_health(base_url: str, baseline: dict[str, Any]) -> dict[str, Any]:
    """/healthz once its files and tasks are back to the baseline, or after 10 s, whichever is first."""
    with anyio.move_on_after(10):
        while True:
            now = await health(base_url)
            if all(now[key] <= baseline[key] for key in ("open_fds", "tasks")):
                break
            await anyio.sleep(0.2)
    return now


def storm_targets(rng: random.Random) -> list[str]:
    """90 universities requests, each meeting three faults at random; 30 per way of calling."""
    targets = []
    for index in range(90):
        query = "&".join(f"country={fault}" for fault in rng.sample(STORM_FAULTS, 3))
        route = ("/universities/sync", "/universities/async", "/universities/gather")[index % 3]
        targets.append(f"{route}?{query}")
    return targets


@pytest.mark.parametrize("upstream_kind", ["faulty", "refusing"])
async def test_fault_storm_leaves_nothing_behind(tmp_path: Path, faulty_upstream_url: str, upstream_kind: str) -> None:
    rng = random.Random(20261121)
    url = f"{faulty_upstream_url}/storm" if upstream_kind == "faulty" else f"http://127.0.0.1:{unused_port()}"
    env = {
        "APP_UPSTREAM_URL": url,
        "APP_UPSTREAM_TIMEOUT": "0.5",
        "APP_UPSTREAM_MAX_BYTES": "100000",
        "APP_UPSTREAM_KEEPALIVE": str(KEEPALIVE),
    }
    drained = health_with_pools_drained if upstream_kind == "faulty" else health
    with uvicorn_process(env=env, tmp=tmp_path) as server:
        idle = await health(server.base_url)
        await raw_get_all(server.base_url, storm_targets(rng))  # warm-up: pools and threads fill
        baseline = await drained(server.base_url)
        results = await raw_get_all(server.base_url, storm_targets(rng))
        statuses = {reply.status for reply in results}
        assert statuses <= {502, 504}, statuses
        assert all("detail" in json.loads(reply.body) for reply in results)
        await drained(server.base_url)
        after = await settled_health(server.base_url, baseline)
    assert after["open_fds"] <= baseline["open_fds"], (baseline, after)
    assert after["tasks"] <= baseline["tasks"], (baseline, after)
    # Idle pool threads linger for a while, but never more than the pool's size.
    assert after["threads"] <= idle["threads"] + after["thread_pool"]["total"], (idle, after)
    # No bound on rss_bytes: glibc keeps memory per thread arena as pool threads come and go, so
    # it rises for a few storms and levels off (measured on 3.13: 73, 91, 114, 103, 105, 105 MiB
    # after storms 1-6). It cannot tell a leak from that; the counts above can.


async def test_thousand_concurrent_async_pings_all_answer_and_none_is_called_a_block(tmp_path: Path) -> None:
    with uvicorn_process(tmp=tmp_path) as server:
        # 1.5 s each: time enough for all 1000 to connect while other tests load the machine.
        results = await raw_get_all(server.base_url, ["/ping/async?delay=1.5"] * 1000)
        after = await health(server.base_url)
    assert [reply.status for reply in results] == [200] * 1000
    records = [json.loads(reply.body) for reply in results]
    assert peak_in_flight(records) > 900  # all of them asleep together, give or take the stragglers
    # A loop that was busy accepting a thousand connections, never held by one step: no block.
    assert after["loop_lag"]["blocks"] == [], after["loop_lag"]["blocks"]
    assert "blocked the event loop" not in server.log_text()


async def test_healthz_answers_while_def_calls_queue_for_threads(tmp_path: Path) -> None:
    delay = 0.3
    with uvicorn_process(tmp=tmp_path) as server:
        async with anyio.create_task_group() as group:
            sending = group.start_soon(raw_get_all, server.base_url, [f"/ping/thread?delay={delay}"] * 120)
            with anyio.fail_after(10):
                while (await health(server.base_url))["thread_pool"]["borrowed"] < 40:
                    await anyio.sleep(0.02)
            busy = await health(server.base_url)
    # An async def endpoint needs no thread: it answered while def calls still queued for one.
    assert busy["thread_pool"]["borrowed"] == busy["thread_pool"]["total"] == 40, busy
    assert busy["thread_pool"]["waiting"] > 0, busy
    results = sending.return_value  # start_soon's task handle (AnyIO 4.16)
    assert [reply.status for reply in results] == [200] * 120
    assert peak_in_flight([json.loads(reply.body) for reply in results]) == 40


async def test_sigterm_lets_requests_in_flight_finish(tmp_path: Path) -> None:
    env = {"APP_UPSTREAM_LATENCY": "1", "PYTHONWARNINGS": "always::ResourceWarning"}
    with uvicorn_process("--timeout-graceful-shutdown", "5", env=env, tmp=tmp_path) as server:
        targets = ["/ping/async?delay=1"] * 20 + ["/ping/thread?delay=1"] * 5 + ["/universities/async"]
        async with anyio.create_task_group() as group:
            sending = group.start_soon(raw_get_all, server.base_url, targets)
            with anyio.fail_after(10):  # every ping and the three upstream searches have started
                while server.log_text().count("start /ping/") < 25 or (await health(server.base_url))["tasks"] < 30:
                    await anyio.sleep(0.02)
            server.process.send_signal(signal.SIGTERM)
        returncode = server.process.wait(timeout=10)
    results = sending.return_value  # start_soon's task handle (AnyIO 4.16)
    assert [reply.status for reply in results] == [200] * len(targets)
    assert returncode in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has shut down cleanly
    log = server.log_text()
    assert log.index("Application shutdown complete") > log.rindex('"GET /universities/async HTTP/1.1" 200')
    assert "ResourceWarning" not in log, log


@BOTH_STACKS
async def test_request_cut_by_shutdown_gets_a_json_503_and_no_traceback(tmp_path: Path, stack: str) -> None:
    with uvicorn_process("--timeout-graceful-shutdown", "1", tmp=tmp_path, stack=stack) as server:
        targets = ["/ping/async?delay=5", "/ping/thread?delay=5"]
        async with anyio.create_task_group() as group:
            sending = group.start_soon(raw_get_all, server.base_url, targets)
            with anyio.fail_after(10):
                while server.log_text().count("start /ping/") < 2:
                    await anyio.sleep(0.02)
            began = time.perf_counter()
            server.process.send_signal(signal.SIGTERM)
        cut_after = time.perf_counter() - began
        server.process.wait(timeout=10)
    results = sending.return_value
    assert [reply.status for reply in results] == [503, 503], results
    assert [json.loads(reply.body) for reply in results] == [{"detail": "the server is shutting down"}] * 2
    assert cut_after < 4  # cut at the 1 s timeout, not left to run their 5 s
    log = server.log_text()
    assert log.count("cut by shutdown: answered 503") == 2, log
    assert "Traceback" not in log, log


async def test_slow_header_sender_does_not_hold_up_others(tmp_path: Path) -> None:
    with uvicorn_process(tmp=tmp_path) as server:
        host, port = server.base_url.removeprefix("http://").rsplit(":", 1)
        latencies: list[float] = []
        async with await anyio.connect_tcp(host, int(port)) as slow:
            request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
            for index, byte in enumerate(request[:20]):  # a second of trickling, never finished
                await slow.send(bytes([byte]))
                if index % 2 == 0:
                    began = time.perf_counter()
                    reply = await raw_get(server.base_url, "/ping/async?delay=0")
                    assert reply.status == 200
                    latencies.append(time.perf_counter() - began)
                await anyio.sleep(0.05)
    assert max(latencies) < 1.0  # each answered while the slow client was mid-request (held up: never)


async def test_client_that_never_reads_does_not_hold_up_others(tmp_path: Path) -> None:
    with uvicorn_process(env={"APP_UPSTREAM_LATENCY": "0"}, tmp=tmp_path) as server:
        reply = await raw_get(server.base_url, "/upstream/search?limit=0")
        assert reply.status == 200  # the proxy's pooled connection to the stand-in's process is part of the baseline
        baseline = await health(server.base_url)
        host, port = server.base_url.removeprefix("http://").rsplit(":", 1)
        async with await anyio.connect_tcp(host, int(port)) as stuck:
            # 300 pipelined requests for every record (2.2 MB each) that are never read.
            await stuck.send(b"GET /upstream/search HTTP/1.1\r\nHost: x\r\n\r\n" * 300)
            await anyio.sleep(1)
            stuck_health = await health(server.base_url)
            began = time.perf_counter()
            reply = await raw_get(server.base_url, "/ping/async?delay=0")
            assert reply.status == 200
            assert time.perf_counter() - began < 0.5
        after = await settled_health(server.base_url, baseline)
    assert stuck_health["rss_bytes"] < baseline["rss_bytes"] + 32 * 2**20  # the answers wait, not pile up
    assert after["tasks"] <= baseline["tasks"] and after["open_fds"] <= baseline["open_fds"]


LEFT_MID_CALL = [
    "/ping/until-gone?delay=0.5",
    "/background?delay=0.3",
    "/stream/thread?chunks=8&delay=0.1",
    "/stream/blocking?chunks=5&delay=0.05",
    "/stream/async?chunks=8&delay=0.1",
    "/db/blocking?rows=300000",
    "/db/thread?rows=300000",
    "/db/to-thread?rows=300000",
]  # /universities/gather, whose abandoned calls run on by design, is in the fault storm


async def test_clients_leaving_every_new_route_mid_call_leave_nothing_behind(tmp_path: Path) -> None:
    with uvicorn_process(tmp=tmp_path) as server:
        await raw_get_all(server.base_url, LEFT_MID_CALL)  # warm-up: threads, the process's first buffers
        baseline = await health(server.base_url)

        async def leave(target: str) -> None:
            async with raw_connection(server.base_url, target):
                await anyio.sleep(0.05)  # sent, and gone before any answer is complete

        async with anyio.create_task_group() as group:
            for target in LEFT_MID_CALL * 3:
                group.start_soon(leave, target)
        after = await settled_health(server.base_url, baseline)
    assert after["tasks"] <= baseline["tasks"], (baseline, after)
    assert after["open_fds"] <= baseline["open_fds"], (baseline, after)
    assert after["thread_pool"]["borrowed"] == 0, after
