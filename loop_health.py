"""The event loop's health: how late its timer wakes up, while the app runs.

A task sleeps a short interval over and over and records how late each
wake-up came. A wake-up is late by as long as something else held the event
loop: a ``time.sleep`` or a computation in an ``async def`` shows up as one
sample the size of the block. It only awaits a timer, so it works the same on
asyncio's loop and uvloop, with no debug mode.
"""

from __future__ import annotations

import collections
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio

LAG_SAMPLES = 64  # about three seconds of history at 50 ms when idle; a block is one sample, however long


class LoopLagMeter:
    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.samples: collections.deque[tuple[float, float]] = collections.deque(maxlen=LAG_SAMPLES)
        self.max = 0.0

    async def run(self) -> None:
        while True:
            began = time.perf_counter()
            await anyio.sleep(self.interval)  # yields the loop; wakes late by however long others held it
            lag = max(0.0, time.perf_counter() - began - self.interval)
            self.samples.append((time.time(), lag))
            self.max = max(self.max, lag)

    def report(self) -> dict[str, Any]:
        recent = [lag for _, lag in self.samples]
        return {
            "interval": self.interval,
            "last": round(recent[-1], 4) if recent else 0.0,
            "recent_max": round(max(recent, default=0.0), 4),
            "max": round(self.max, 4),  # since the server started
            "samples": [[round(at, 3), round(lag, 4)] for at, lag in self.samples],  # [Unix time, seconds late]
        }


@contextlib.asynccontextmanager
async def measuring_loop_lag(interval: float) -> AsyncIterator[LoopLagMeter]:
    meter = LoopLagMeter(interval)
    async with anyio.create_task_group() as group:
        group.start_soon(meter.run)
        try:
            yield meter
        finally:
            group.cancel_scope.cancel()
