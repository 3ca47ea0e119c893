"""What the stand-in's process costs at start-up, and what big answers cost the event loop.

``python -m bench.stand_in_cost`` first starts the app in this process five
times (``running_server``, as the tests do) and prints how long until uvicorn
reports started, and until a first ``/upstream/stats`` through the app has
answered (the child is up). Then it serves the app twice in a subprocess (uvicorn,
default stack): as shipped (``thread``: bodies over ``DECODE_IN_THREAD_BYTES``
decoded in ``anyio.to_thread.run_sync``), and with every body decoded on the loop (``loop``). Against each it
sends ``/universities/async`` for the five biggest countries (about 4,100
records, 720 KB) while a second connection sends ``/ping/async?delay=0`` back to
back, and prints the slowest ping and the fan-out's time, per round.
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
from starlette.types import ASGIApp

import universities
from asgi_app import create_app
from harness.servers import running_server, uvicorn_process
from plumbing.settings import Settings

BIGGEST = ["United States", "Japan", "India", "China", "Germany"]
ROUNDS = 7


def app_decoding_on_the_loop() -> ASGIApp:
    """The app as it was before bodies over ``DECODE_IN_THREAD_BYTES`` went to a thread."""
    universities.DECODE_IN_THREAD_BYTES = sys.maxsize  # every body decoded on the loop
    return create_app(Settings.from_env())


TARGETS = {"loop": ("bench.stand_in_cost:app_decoding_on_the_loop", "--factory"), "thread": ("asgi_app:app",)}


@contextlib.contextmanager
def server(mode: str) -> Iterator[str]:
    target, *options = TARGETS[mode]
    env = {"APP_UPSTREAM_LATENCY": "0.05", "APP_CONSOLE": "0"}
    with tempfile.TemporaryDirectory() as tmp, uvicorn_process(*options, tmp=Path(tmp), target=target, env=env) as up:
        yield up.base_url


async def one_round(base: str) -> tuple[float, float]:
    pings: list[float] = []
    async with httpx.AsyncClient(base_url=base, timeout=30) as fan, httpx.AsyncClient(base_url=base) as pinger:
        await fan.get("/universities/async", params={"country": BIGGEST})  # warm: connections, caches
        done = anyio.Event()
        elapsed = 0.0

        async def fan_out() -> None:
            nonlocal elapsed
            response = await fan.get("/universities/async", params={"country": BIGGEST})
            assert response.status_code == 200, response.text
            elapsed = response.json()["elapsed"]
            done.set()

        async with anyio.create_task_group() as group:
            group.start_soon(fan_out)
            while not done.is_set():
                began = time.perf_counter()
                await pinger.get("/ping/async?delay=0")
                pings.append(time.perf_counter() - began)
    return max(pings), elapsed


def measure_startup() -> None:
    for _ in range(5):
        began = time.perf_counter()
        with running_server(create_app(Settings(upstream_latency=0))) as base:
            started = time.perf_counter() - began
            assert httpx.get(f"{base}/upstream/stats", timeout=5).status_code == 200
            answered = time.perf_counter() - began
        print(f"start-up: server started {started:.3f} s, first stand-in answer {answered:.3f} s")


async def measure() -> None:
    print(f"Python {sys.version.split()[0]}, uvicorn defaults; {ROUNDS} rounds; seconds")
    for mode in ("loop", "thread"):
        with server(mode) as base:
            rounds = [await one_round(base) for _ in range(ROUNDS)]
        worst = [r[0] for r in rounds]
        fan = [r[1] for r in rounds]
        print(
            f"{mode:6}  slowest instant ping: median {statistics.median(worst):.4f} "
            f"(range {min(worst):.4f}-{max(worst):.4f});  fan-out elapsed median {statistics.median(fan):.4f}"
        )


def main() -> None:
    measure_startup()
    anyio.run(measure)


if __name__ == "__main__":
    main()
