"""Every way an upstream can fail becomes a 502 or 504 JSON error, and the server carries on."""

from __future__ import annotations

import anyio
import pytest

from harness.servers import open_client, unused_port
from tests.faulty_upstream import MIXED_CALLS, SLOW
from tests.utils import ClientFn, ServeFn

FAULTS = [
    ("error", 502, "upstream answered 503"),
    ("badjson", 502, "invalid response"),
    ("notutf8", 502, "invalid response"),
    ("schema", 502, "'domains' must be a list of strings"),
    ("notalist", 502, "expected a JSON array"),
    ("huge", 502, "body larger than 100000 bytes"),
    ("endless", 502, "body larger than 100000 bytes"),
    ("reset", 502, "RemoteProtocolError"),
    ("hang", 504, "no answer within 0.5 s"),
    ("trickle", 504, "no answer within 0.5 s"),
]


async def assert_fault_maps_to(serve: ServeFn, upstream_url: str, status: int, cause: str, route: str) -> None:
    base = serve(upstream_url=upstream_url, upstream_timeout=0.5, upstream_max_bytes=100_000)
    async with open_client(base) as client:
        response = await client.get(route, params={"country": ["narnia"]})
        assert response.status_code == status, response.text
        detail = response.json()["detail"]
        assert "'narnia'" in detail and cause in detail
        # The server carries on, with no thread still held by the failed call.
        assert (await client.get("/ping/async?delay=0")).status_code == 200
        health = (await client.get("/healthz")).json()
    assert health["thread_pool"]["borrowed"] == 0


@pytest.mark.parametrize("route", ["/universities/sync", "/universities/async"])
@pytest.mark.parametrize(("fault", "status", "cause"), FAULTS, ids=[f[0] for f in FAULTS])
async def test_upstream_fault_is_a_clean_gateway_error(
    serve: ServeFn, faulty_upstream_url: str, route: str, fault: str, status: int, cause: str
) -> None:
    await assert_fault_maps_to(serve, f"{faulty_upstream_url}/{fault}", status, cause, route)


@pytest.mark.parametrize("route", ["/universities/sync", "/universities/async"])
async def test_refused_connection_is_a_502(serve: ServeFn, route: str) -> None:
    await assert_fault_maps_to(serve, f"http://127.0.0.1:{unused_port()}", 502, "ConnectError", route)


@pytest.mark.parametrize(("route", "left_running"), [("/universities/async", 0), ("/universities/gather", 2)])
async def test_after_one_failure_a_task_group_cancels_the_other_calls_and_gather_leaves_them_running(
    client_for: ClientFn, faulty_upstream_url: str, route: str, left_running: int
) -> None:
    # Two calls take SLOW seconds, one fails at once; both ways answer the client a 502 at once.
    before = dict(MIXED_CALLS)
    client = await client_for(upstream_url=f"{faulty_upstream_url}/mixed", upstream_timeout=10.0)
    response = await client.get(route, params={"country": ["slow", "fail", "slower"]})
    assert response.status_code == 502, response.text
    assert "'fail'" in response.json()["detail"]
    assert response.elapsed.total_seconds() < SLOW * 0.75  # not after the slow calls
    with anyio.fail_after(2):  # cancelled calls reach the upstream as hang-ups; gather's go on (or arrive late)
        while (
            MIXED_CALLS["abandoned"] - before["abandoned"] < 2 - left_running
            or MIXED_CALLS["in_flight"] - before["in_flight"] < left_running
        ):
            await anyio.sleep(0.01)
    assert MIXED_CALLS["in_flight"] - before["in_flight"] == left_running  # still running after the answer
    with anyio.fail_after(SLOW + 2):
        while MIXED_CALLS["in_flight"] > before["in_flight"]:
            await anyio.sleep(0.02)
    # gather's calls ran to the end and their answers were thrown away; the task group's never finished.
    assert MIXED_CALLS["answered"] - before["answered"] == left_running
    assert MIXED_CALLS["abandoned"] - before["abandoned"] == 2 - left_running
