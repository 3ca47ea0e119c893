"""``GET /healthz``: liveness, and what this process holds right now.

The thread pool's tokens (borrowed, total, and ``def`` calls waiting for one),
the event loop's lag (``loop_health.py``), and the threads, tasks, open files
and memory the process holds: after a storm of failures these come back down,
which is how the tests show that nothing leaked.
"""

from __future__ import annotations

import asyncio
import os
import threading

import anyio.to_thread
from starlette.requests import Request

from plumbing.record import JSONResponse


async def healthz(request: Request) -> JSONResponse:
    """liveness, thread-pool use, event-loop lag, and the threads, tasks, files and memory held."""
    limiter = anyio.to_thread.current_default_thread_limiter()
    return JSONResponse(
        {
            "status": "ok",
            "pid": os.getpid(),
            "thread_pool": {
                "borrowed": limiter.borrowed_tokens,
                "total": limiter.total_tokens,
                "waiting": limiter.statistics().tasks_waiting,  # def endpoints queued for a thread
            },
            # What this process holds right now: after a storm of failures these come back down.
            "threads": threading.active_count(),
            "tasks": len(asyncio.all_tasks()),
            "open_fds": len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None,
            "rss_bytes": resident_bytes(),
            "batch_calls": {"borrowed": request.state.batch_slots.borrowed_tokens},
            "loop_lag": request.state.loop_health.report(),  # and the blocks it found
        }
    )


def resident_bytes() -> int | None:
    """Resident memory now (Linux); None where /proc is missing."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return None
