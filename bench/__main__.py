"""``python -m bench``: what blocking, awaiting and timing cost, on both uvicorn stacks.

Every server is a ``python -m uvicorn`` subprocess on 127.0.0.1 that the
benchmark starts and stops (``tests.utils.uvicorn_process``, as the tests do).
Each stack gets every measurement of ``bench/measure.py``; the report names the
stack on every figure. Usage::

    .venv/bin/pip install -q -r requirements-bench.txt && .venv/bin/python -m bench [--json FILE] [--plot FILE.png]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

from bench.load import choose_cpus
from bench.measure import STARTED, progress, run
from bench.report import report
from harness.servers import DEFAULT_STACK, STACKS

UPSTREAM_LATENCY = 0.5
OPEN_FILES = 8192  # 1000 client sockets and 1000 server sockets, with room to spare


def raise_open_files() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = OPEN_FILES if hard == resource.RLIM_INFINITY else min(OPEN_FILES, hard)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))  # the servers inherit it too


def describe(latency: float, cpus: tuple[int, int] | None) -> dict[str, Any]:
    throughput_load = "wrk" if shutil.which("wrk") else "our asyncio keep-alive client (no wrk: a lower bound)"
    pinning = (
        f"server on CPU {cpus[0]}, load on CPU {cpus[1]} (taskset)" if cpus else "not pinned (no taskset or 1 CPU)"
    )
    names = ("uvicorn", "uvloop", "httptools", "h11", "starlette", "fastapi")
    return {
        "latency": latency,
        "load": f"{throughput_load} for throughput, raw GETs on their own connections for batches",
        "pinning": pinning,
        "python": sys.version.split()[0],
        "versions": f"Python {sys.version.split()[0]}, "
        + ", ".join(f"{name} {version(name)}" for name in names)
        + f", {os.cpu_count()} CPUs",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the raw numbers here")
    parser.add_argument("--plot", type=Path, metavar="FILE.png", help=f"draw the {DEFAULT_STACK} charts here")
    parser.add_argument("--latency", type=float, default=UPSTREAM_LATENCY, help="upstream latency L of the fan-out")
    parser.add_argument("--stack", choices=list(STACKS), action="append", help="only this stack (default: both)")
    args = parser.parse_args(argv)
    if args.plot:
        from bench.plot import plot  # missing matplotlib should fail now, not after minutes of measuring
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # so finally blocks stop servers
    raise_open_files()
    cpus = choose_cpus()
    if cpus:
        os.sched_setaffinity(0, {cpus[1]})  # our client runs beside wrk, away from the server
    meta = describe(args.latency, cpus)
    progress(f"load: {meta['load']}; {meta['pinning']}")
    try:
        by_stack = {stack: run(stack, args.latency, cpus) for stack in args.stack or STACKS}
    except KeyboardInterrupt:
        progress("interrupted; every server was stopped")
        return 130
    meta["wall"] = time.monotonic() - STARTED
    print(report(meta, by_stack))
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "stacks": by_stack}, indent=2))
    if args.plot:
        stack = DEFAULT_STACK if DEFAULT_STACK in by_stack else next(iter(by_stack))
        plot(by_stack[stack], args.latency, stack, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
