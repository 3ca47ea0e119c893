"""Every way of finding a block, tried on every blocking route: ``python -m bench.detection``.

For each way (asyncio's debug mode, the lag meter alone, the block finder,
BlockBuster, ``py-spy dump`` of the live process) and each stack, it starts
the app as that way needs, calls each blocking route once, and reads what the
way reported: caught at all, the route's path, the blocking line (file:line).
It prints the Markdown table of docs/finding-blocks.md. Loopback only; about a
minute.
"""

from __future__ import annotations

import contextlib
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx

from harness.servers import STACKS, UvicornProcess, line_of, open_client, uvicorn_process

# Each blocking route, about half a second of block, and the line that blocks.
ROUTES = {
    "/ping/blocking?delay=0.5": ("asgi_app.py", "time.sleep(delay)  # blocks the event loop"),
    "/cpu/blocking?n=6000000": ("asgi_app.py", "x = (x * 1103515245 + 12345) & 0x7FFFFFFF"),
    "/db/blocking?rows=2500000": ("next_questions.py", "db.execute(COUNT_ROWS, (rows,))"),
    "/stream/blocking?chunks=2&delay=0.5": ("next_questions.py", "time.sleep(stream.delay)  # noqa"),
}


@dataclass
class Found:
    caught: bool
    route: bool
    line: bool


@dataclass
class Way:
    name: str
    env: dict[str, str]
    read: Callable[[UvicornProcess, httpx.AsyncClient, str, str, str], Awaitable[Found]]
    target: str = "asgi_app:app"
    during: bool = False  # looks at the process while the call runs, not after


async def debug_mode(server: UvicornProcess, client: httpx.AsyncClient, log: str, path: str, where: str) -> Found:
    reports = [line for line in log.splitlines() if re.search(r"Executing <.*> took \d", line)]
    return Found(bool(reports), any(path in line for line in reports), any(where in line for line in reports))


async def lag_meter(server: UvicornProcess, client: httpx.AsyncClient, log: str, path: str, where: str) -> Found:
    report = (await client.get("/healthz")).json()["loop_lag"]
    caught = report["recent_max"] >= 0.3
    return Found(caught, path in str(report), where in str(report))  # a report of lags only


async def block_finder(server: UvicornProcess, client: httpx.AsyncClient, log: str, path: str, where: str) -> Found:
    blocks = (await client.get("/healthz")).json()["loop_lag"]["blocks"]
    mine = [block for block in blocks if block["ended"] > time.time() - 3]
    named = [f"{block['file']}:{block['line']}" for block in mine]
    warned = [line for line in log.splitlines() if "blocked the event loop" in line]
    return Found(bool(mine) and bool(warned), any(b["path"] == path for b in mine), where in named)


async def blockbuster(server: UvicornProcess, client: httpx.AsyncClient, log: str, path: str, where: str) -> Found:
    caught = "BlockingError" in log
    file, line = where.split(":")
    in_traceback = f'{file}", line {line}' in log
    # The error's own lines (uvicorn's "Exception in ASGI application" and the traceback) name no path.
    error = log[log.find("Exception in ASGI application") :] if caught else ""
    return Found(caught, caught and path in error.split("BlockingError")[0], in_traceback)


async def py_spy(server: UvicornProcess, client: httpx.AsyncClient, log: str, path: str, where: str) -> Found:
    dump = subprocess.run(
        [shutil.which("py-spy") or "py-spy", "dump", "--pid", str(server.process.pid)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    text = dump.stdout + dump.stderr
    file, line = where.split(":")
    return Found(f"{file}:{line}" in text, path in text, f"{file}:{line}" in text)


WAYS = [
    Way(
        "asyncio debug mode (`APP_ASYNCIO_DEBUG=1`)", {"APP_ASYNCIO_DEBUG": "1", "APP_BLOCK_THRESHOLD": "0"}, debug_mode
    ),
    Way("the lag meter alone (`APP_BLOCK_THRESHOLD=0`)", {"APP_BLOCK_THRESHOLD": "0"}, lag_meter),
    Way("the block finder (default)", {}, block_finder),
    Way(
        "BlockBuster (in the server's process)", {"APP_BLOCK_THRESHOLD": "0"}, blockbuster, "tests.blockbuster_app:app"
    ),
    Way("`py-spy dump` of the live process", {"APP_BLOCK_THRESHOLD": "0"}, py_spy, during=True),
]


async def call(client: httpx.AsyncClient, target: str) -> None:
    with contextlib.suppress(httpx.RemoteProtocolError):  # BlockBuster breaks a stream off mid-body
        await client.get(target)


async def try_way(way: Way, stack: str, tmp: Path) -> dict[str, Found]:
    found = {}
    env = {"APP_CONSOLE": "0", **way.env}
    with uvicorn_process(tmp=tmp, target=way.target, env=env, stack=stack) as server:
        async with open_client(server.base_url) as client:
            await client.get("/healthz")  # the first request's one-time costs, before any block
            await anyio.sleep(0.3)
            for target, (file, text) in ROUTES.items():
                path, where = target.split("?")[0], f"{file}:{line_of(file, text)}"
                since = len(server.log_text())
                if way.during:
                    async with anyio.create_task_group() as group:
                        group.start_soon(call, client, target)
                        await anyio.sleep(0.25)  # inside the half-second block
                        found[path] = await way.read(server, client, "", path, where)
                else:
                    await call(client, target)
                    await anyio.sleep(0.3)  # what is reported once the loop runs again is in by then
                    found[path] = await way.read(server, client, server.log_text()[since:], path, where)
                await anyio.sleep(0.2)
    return found


def cell(found: Found) -> str:
    """What one way told about one block: nothing, that it happened, and which line and route."""
    if not found.caught:
        return "missed"
    named = [what for what, yes in (("route", found.route), ("line", found.line)) if yes]
    return "caught, " + " and ".join(named) if named else "caught, unnamed"


async def main() -> None:
    paths = [target.split("?")[0] for target in ROUTES]
    print(f"Python {platform.python_version()}; each route blocks about 0.5 s\n")
    print("| way | " + " | ".join(f"`{path}`" for path in paths) + " | loops |")
    print("|---|" + "---|" * (len(paths) + 1))
    with tempfile.TemporaryDirectory() as tmp:
        for way in WAYS:
            by_stack = {stack: await try_way(way, stack, Path(tmp)) for stack in STACKS}
            rows = {stack: [cell(found[path]) for path in paths] for stack, found in by_stack.items()}
            if len({tuple(row) for row in rows.values()}) == 1:
                print(f"| {way.name} | {' | '.join(next(iter(rows.values())))} | both |", flush=True)
            else:
                for stack, row in rows.items():
                    print(f"| {way.name} | {' | '.join(row)} | {stack} |", flush=True)


if __name__ == "__main__":
    if shutil.which("py-spy") is None:
        sys.exit("py-spy is not installed: pip install -r requirements-bench.txt")
    anyio.run(main)
