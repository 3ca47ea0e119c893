"""The load: batches of raw GETs sent at once, and requests per second from wrk.

Servers run on one CPU and the load on another where ``taskset`` can pin
them apart, so the load generator does not take the server's core.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import time

import anyio

from harness.servers import Reply, raw_get_all

LOAD_CONNECTIONS = 64
THROUGHPUT_PATH = "/ping/async?delay=0"


def choose_cpus() -> tuple[int, int] | None:
    """(server CPU, load CPU), or None when the two cannot be pinned apart."""
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    return (allowed[0], allowed[1]) if shutil.which("taskset") and len(allowed) >= 2 else None


def pinned(cpus: tuple[int, int] | None, role: int) -> list[str]:
    """The command prefix that keeps a server (role 0) or the load (role 1) on its CPU."""
    return ["taskset", "-c", str(cpus[role])] if cpus else []


def batch(base_url: str, paths: list[str], timeout: float) -> tuple[float, list[Reply]]:
    """All paths at once, one connection each; the wall time from the first connect to the last byte."""
    began = time.perf_counter()
    replies = anyio.run(raw_get_all, base_url, paths, timeout)
    return time.perf_counter() - began, replies


async def keep_alive_load(base_url: str, seconds: float) -> int:
    """The fallback when wrk is missing: requests answered over kept-alive connections in ``seconds``."""
    host, port = base_url.removeprefix("http://").rsplit(":", 1)
    deadline = time.monotonic() + seconds
    request = f"GET {THROUGHPUT_PATH} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()

    async def one_connection() -> int:
        reader, writer = await asyncio.open_connection(host, int(port))
        done = 0
        while time.monotonic() < deadline:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(int(re.search(rb"(?i)content-length: *(\d+)", head).group(1)))
            done += 1
        writer.close()
        return done

    async with asyncio.timeout(seconds + 10):
        return sum(await asyncio.gather(*(one_connection() for _ in range(LOAD_CONNECTIONS))))


def rates_at_once(base_urls: list[str], seconds: float, cpus: tuple[int, int] | None) -> list[float]:
    """Requests per second answered by each server, all of them loaded at the same time."""
    if not shutil.which("wrk"):

        async def every_server() -> list[int]:
            return await asyncio.gather(*(keep_alive_load(url, seconds) for url in base_urls))

        return [done / seconds for done in asyncio.run(every_server())]
    options = f"-t1 -c{LOAD_CONNECTIONS} -d{seconds:g}s --timeout 5s"
    commands = [[*pinned(cpus, 1), "wrk", *options.split(), f"{url}{THROUGHPUT_PATH}"] for url in base_urls]
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for command in commands]
    try:
        outs = [run.communicate(timeout=seconds + 20)[0] for run in runs]
    finally:
        for run in runs:
            if run.poll() is None:
                run.kill()
                run.wait()
    for out in outs:
        if "Non-2xx" in out or "Socket errors" in out:
            raise RuntimeError(f"wrk reported errors:\n{out}")
    return [float(re.search(r"Requests/sec:\s*([\d.]+)", out).group(1)) for out in outs]
