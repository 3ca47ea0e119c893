"""Reading the loop thread's frames, as hard as it can be done: ``python -m bench.stress_watcher``.

The block finder samples every 20 ms and reads a frame's locals once per block.
Here the watcher samples every millisecond and reads the locals of every frame
on the loop thread at every sample (``request_of``, which walks ``f_locals``:
a snapshot dict on 3.11 and 3.12, a ``FrameLocalsProxy`` on 3.13), while 200
clients at a time call routes that await, stream, block, run in threads and
fan out. It passes when every call is answered and the watcher never failed.
Loopback only; about 7 s per stack.
"""

from __future__ import annotations

import platform
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

import loop_health
from asgi_app import create_app
from harness.servers import STACKS, open_client, uvicorn_process
from plumbing.settings import Settings

CLIENTS = 200
ROUNDS = 8
PATHS = [
    "/ping/async?delay=0.05",
    "/ping/thread?delay=0.05",
    "/ping/blocking?delay=0.002",
    "/stream/async?chunks=3&delay=0.01",
    "/stream/blocking?chunks=2&delay=0.002",
    "/db/to-thread?rows=20000",
    "/universities/async?country=Japan&country=Chile",
    "/healthz",
]
COUNTS = {"samples": 0, "locals_read": 0, "failures": 0}
SUMMARY = re.compile(r"stress: (\d+) samples, (\d+) locals read, (\d+) failures")

# --------------------------------------------------------------- in the server's process


class StressedWatcher(loop_health.Watcher):
    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.poll = 0.001

    def run(self) -> None:
        super().run()  # until the lifespan's shutdown stops it
        summary()

    def sample(self) -> float:
        COUNTS["samples"] += 1
        try:
            delay = super().sample()
            frame = sys._current_frames().get(self.loop_thread)
            loop_health.request_of(loop_health.walk(frame))  # every frame's locals, every millisecond
            COUNTS["locals_read"] += 1
            del frame
        except Exception:
            COUNTS["failures"] += 1
            raise
        return min(delay, self.poll)  # every millisecond, busy or not


def summary() -> None:
    line = f"stress: {COUNTS['samples']} samples, {COUNTS['locals_read']} locals read, {COUNTS['failures']} failures"
    print(line, flush=True)


def stressed_app() -> Any:
    loop_health.Watcher = StressedWatcher  # type: ignore[misc]  # this benchmark's one patch: a faster watcher
    return create_app(Settings.from_env())


# --------------------------------------------------------------- the load


async def load(base_url: str) -> tuple[int, int]:
    answered = failed = 0
    async with open_client(base_url) as client:

        async def one(path: str) -> None:
            nonlocal answered, failed
            reply = await client.get(path)
            answered, failed = answered + (reply.status_code == 200), failed + (reply.status_code != 200)

        for _ in range(ROUNDS):
            async with anyio.create_task_group() as group:
                for number in range(CLIENTS):
                    group.start_soon(one, PATHS[number % len(PATHS)])
    return answered, failed


def main() -> int:
    print(f"Python {platform.python_version()}: watcher every 1 ms, every frame's locals read at every sample")
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        for stack in STACKS:
            began = time.monotonic()
            env = {"APP_CONSOLE": "0", "APP_UPSTREAM_LATENCY": "0.01"}
            with uvicorn_process("--factory", tmp=Path(tmp), target="bench.stress_watcher:stressed_app", env=env,
                                 stack=stack) as server:  # fmt: skip
                answered, failed = anyio.run(load, server.base_url)
            log = server.log_text()
            [(samples, read, failures)] = SUMMARY.findall(log) or [("0", "0", "?")]
            crashed = "Traceback" in log  # uvicorn ends by re-raising the SIGTERM it was stopped with
            passed = failed == 0 and answered == CLIENTS * ROUNDS and failures == "0" and not crashed
            ok &= passed
            print(
                f"  {stack}: {answered} of {CLIENTS * ROUNDS} calls answered, {samples} samples, {read} locals read,"
                f" {failures} failures, exit {server.process.returncode}, {time.monotonic() - began:.0f} s:"
                f" {'PASS' if passed else 'FAIL'}"
            )
            if not passed:
                print(log[-3000:])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
