"""The block finder names the request and the line that held the loop, and never a loop that was only busy."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from harness.servers import REPO, line_of, open_client, uvicorn_process
from loop_health import LoopHealth, OwnCode, code_only
from tests.utils import BOTH_STACKS, ServeFn, cpu_rounds, health

WARNING = re.compile(r"WARNING: +(\S+) (\S+) blocked the event loop for (\d+\.\d\d) s at (\S+):(\d+) in (\w+): (.+)")


# Each blocking route, and where its block must be named: (file, function, the line's text).
BLOCKING = {
    "/ping/blocking?delay=0.3": ("asgi_app.py", "ping_blocking", "time.sleep(delay)  # blocks the event loop"),
    f"/cpu/blocking?n={cpu_rounds(0.2)}": ("asgi_app.py", "burn_cpu", "x = (x * 1103515245 + 12345) & 0x7FFFFFFF"),
    "/db/blocking?rows=1000000": ("next_questions.py", "count_rows", "db.execute(COUNT_ROWS, (rows,))"),
    "/stream/blocking?chunks=2&delay=0.2": ("next_questions.py", "chunks_blocking", "time.sleep(stream.delay)  # noqa"),
}
# The same work done the right way, each long enough to be one if it held the loop: never reported.
CONTROLS = [
    "/ping/async?delay=0.3",
    "/ping/thread?delay=0.3",
    f"/cpu/thread?n={cpu_rounds(0.2)}",
    f"/cpu/process?n={cpu_rounds(0.2)}",
    "/db/thread?rows=1000000",
    "/db/to-thread?rows=1000000",
    "/stream/async?chunks=2&delay=0.2",
    "/stream/thread?chunks=2&delay=0.2",
]
BATCH = "/batch?route=/ping/async&route=/ping/thread&calls=20&delay=0.3"
FAN_OUT = "/universities/async?" + "&".join(f"country={name}" for name in (
    "Turkiye", "India", "Australia", "Germany", "France", "Japan", "Canada", "Brazil", "Italy", "Spain",
    "Chile", "Peru", "Kenya", "Norway", "Poland", "Egypt", "Mexico", "Ghana", "Nepal", "Cuba"))  # fmt: skip


async def blocks_once_there(client: httpx.AsyncClient, count: int) -> list[dict[str, Any]]:
    """The blocks /healthz reports, once there are ``count`` (a block is reported when the loop runs again)."""
    with anyio.fail_after(5):
        while len(blocks := (await health(client))["loop_lag"]["blocks"]) < count:
            await anyio.sleep(0.05)
    return blocks


@BOTH_STACKS
async def test_every_blocking_route_is_named_at_its_own_line_and_no_other_route_ever(
    tmp_path: Path, stack: str
) -> None:
    with uvicorn_process(tmp=tmp_path, stack=stack, env={"APP_UPSTREAM_LATENCY": "0.2"}) as server:
        async with open_client(server.base_url) as client:
            # All at once, with a 40-call batch and a 20-country fan-out through the stand-in: a busy loop.
            answers = await anyio.gather(*(client.get(path) for path in [*CONTROLS, BATCH, FAN_OUT]))
            assert [answer.status_code for answer in answers] == [200] * (len(CONTROLS) + 2), answers[-1].text
            assert answers[-2].text.count("event: call") == 40 and len(answers[-1].json()["calls"]) == 20
            assert (await health(client))["loop_lag"]["blocks"] == []
            for path in BLOCKING:
                assert (await client.get(path)).status_code == 200
            blocks = await blocks_once_there(client, len(BLOCKING))
    assert [block["path"] for block in blocks] == [path.split("?")[0] for path in BLOCKING]
    for block, (file, function, text) in zip(blocks, BLOCKING.values(), strict=True):
        assert (block["method"], block["file"], block["function"]) == ("GET", file, function), block
        assert block["line"] == line_of(file, text), block
        assert block["source"] == code_only((REPO / file).read_text().splitlines()[block["line"] - 1]), block
        assert block["started"] < block["ended"]
    ping = blocks[0]
    assert 0.25 < ping["seconds"] < 0.6, ping  # the 0.3 s sleep, give or take a sample
    console = [WARNING.search(line) for line in server.log_text().splitlines() if "blocked the event loop" in line]
    assert [(m[2], m[4], int(m[5]), m[6]) for m in console if m] == [
        (b["path"], b["file"], b["line"], b["function"]) for b in blocks
    ], server.log_text()
    assert console[0] and console[0][7] == "time.sleep(delay)"


# --------------------------------------------------- a copy in another app


async def nap(request: Request) -> PlainTextResponse:
    time.sleep(0.3)  # noqa: ASYNC251 -- the second app's own blocking line, which the report must name
    return PlainTextResponse("slept")


async def report(request: Request) -> JSONResponse:
    return JSONResponse(request.state.loop_health.report())


SECOND_APP = LoopHealth(Starlette(routes=[Route("/nap", nap), Route("/report", report)]))


async def test_wrapped_around_another_asgi_app_it_names_that_apps_line(serve: ServeFn) -> None:
    async with open_client(serve(app=SECOND_APP)) as client:
        assert (await client.get("/nap")).status_code == 200
        with anyio.fail_after(5):
            while not (blocks := (await client.get("/report")).json()["blocks"]):
                await anyio.sleep(0.05)
    [block] = blocks
    assert (block["method"], block["path"], block["function"]) == ("GET", "/nap", "nap")
    here = "tests/test_block_finder.py"
    assert (block["file"], block["line"]) == (here, line_of(here, "the second app" + "'s own blocking line"))


def test_the_applications_code_is_its_own_files_not_installed_ones(tmp_path: Path) -> None:
    own = OwnCode(str(REPO))
    assert own.holds(str(REPO / "asgi_app.py")) and own.shown(str(REPO / "asgi_app.py")) == "asgi_app.py"
    assert not own.holds(httpx.__file__)  # site-packages, even inside the project's .venv
    assert not own.holds(re.__file__)  # the standard library
    assert not own.holds(str(REPO / "loop_health.py"))  # the finder itself
    assert not own.holds("<frozen runpy>")
    assert not own.holds(str(tmp_path / "elsewhere.py"))  # outside the project


# ----------------------------------------------------- the docs' FastAPI example

FASTAPI_EXAMPLE = re.compile(r"<!-- fastapi example -->\n```python\n(.*?)```", re.DOTALL)


async def test_the_fastapi_example_in_the_docs_works_as_printed(tmp_path: Path) -> None:
    page = (REPO / "docs" / "finding-blocks.md").read_text()
    [example] = FASTAPI_EXAMPLE.findall(page)
    project = tmp_path / "project"
    project.mkdir()
    (project / "main.py").write_text(example)
    shutil.copy(REPO / "loop_health.py", project)  # "copy this file into your project"
    with uvicorn_process(tmp=tmp_path, target="main:app", cwd=project) as server:
        async with open_client(server.base_url) as client:
            assert (await client.get("/blocking")).status_code == 200
            with anyio.fail_after(5):
                while not (blocks := (await client.get("/healthz")).json()["blocks"]):
                    await anyio.sleep(0.05)
    sleep_line = next(n for n, line in enumerate(example.splitlines(), 1) if "time.sleep(" in line)
    assert [(b["path"], b["file"], b["line"]) for b in blocks] == [("/blocking", "main.py", sleep_line)]
    assert "GET /blocking blocked the event loop for" in server.log_text()
    assert f"at main.py:{sleep_line} in blocking: time.sleep(" in server.log_text()
    assert f"at main.py:{sleep_line} in" in page  # the line the page says it prints
