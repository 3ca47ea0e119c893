"""What BlockBuster catches in this app, and what it cannot: a test suite's way of finding blocking calls."""

from __future__ import annotations

from pathlib import Path

import anyio
import httpx

from harness.servers import open_client, uvicorn_process
from tests.utils import cpu_rounds, health

RIGHT = ("/ping/async?delay=0.1", "/ping/thread?delay=0.1", "/db/to-thread?rows=1000", "/stream/async?chunks=2&delay=0")


async def test_blockbuster_catches_the_blocking_calls_it_patches_and_not_a_pure_python_loop(tmp_path: Path) -> None:
    # BlockBuster switched on in the server's own process, as a project's test fixture would in its own.
    with uvicorn_process(tmp=tmp_path, target="tests.blockbuster_app:app") as server:
        async with open_client(server.base_url) as client:
            caught = {path: await client.get(path) for path in ("/ping/blocking?delay=0.2", "/db/blocking?rows=1000")}
            try:
                async with client.stream("GET", "/stream/blocking?chunks=3&delay=0.1") as stream:
                    streamed = (stream.status_code, b"".join([chunk async for chunk in stream.aiter_bytes()]))
            except httpx.RemoteProtocolError:
                streamed = (stream.status_code, b"cut off")
            missed = await client.get(f"/cpu/blocking?n={cpu_rounds(0.2)}")
            try:
                right = [await client.get(path) for path in RIGHT]
            except httpx.HTTPError as exc:  # the server's log says which call BlockBuster stopped, and where
                raise AssertionError(server.log_text()) from exc
            with anyio.fail_after(5):  # the block finder, in the same server, names what BlockBuster missed
                while not (blocks := (await health(client))["loop_lag"]["blocks"]):
                    await anyio.sleep(0.05)
    log = server.log_text()
    assert [answer.status_code for answer in caught.values()] == [500, 500], log
    assert "BlockingError: Blocking call to time.sleep" in log
    assert "BlockingError: Blocking call to sqlite3.Connection.execute" in log
    assert streamed == (200, b"cut off"), streamed  # caught after the headers had gone: the body breaks off
    assert missed.status_code == 200, missed.text  # a pure-Python loop calls nothing BlockBuster patches
    assert [answer.status_code for answer in right] == [200] * 4
    assert [(block["path"], block["function"]) for block in blocks] == [("/cpu/blocking", "burn_cpu")]
