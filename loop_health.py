"""The event loop's health, in any ASGI app: how late its timer wakes up, and which line held it.

One heartbeat task sleeps ``interval`` seconds over and over and records how
late each wake-up came: the lag meter. A wake-up is late by as long as
something else held the loop. A watcher thread looks at the loop thread's
stack (``sys._current_frames()``) once after each heartbeat, and every 20 ms
while the heartbeat is overdue; when the same call of your own code is on it,
look after look, while the heartbeat cannot run, one step is holding the loop. Once it has held it for ``threshold``
seconds, the watcher names the request (method and path), the innermost frame
of your code (file, line, function, the source line) and, once the loop runs
again, how long it was held, as one WARNING on uvicorn's log. No debug mode,
nothing patched, the same on asyncio's loop and uvloop.

"Your own code" is every Python file under ``root`` (the working directory the
server started in, by default) that is not installed (no ``site-packages``, no
standard library) and is not this file. Copy this file into your project, then:

    app = LoopHealth(app)                   # any ASGI app
    app.add_middleware(LoopHealth)          # FastAPI or Starlette

It starts and stops with the lifespan, and puts itself in the lifespan state,
so an endpoint can show ``request.state.loop_health.report()``.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import inspect
import io
import linecache
import logging
import os
import platform
import sys
import sysconfig
import threading
import time
import tokenize
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from types import CodeType, FrameType
from typing import Any

import anyio

LAG_SAMPLES = 64  # about three seconds of history at 50 ms when idle; a block is one sample, however long
RECENT_BLOCKS = 16
TASK_CODE = inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR | inspect.CO_ITERABLE_COROUTINE
PAUSABLE = TASK_CODE | inspect.CO_GENERATOR  # frames that can leave the stack and come back
HELD, MOVED, UNSURE = "held", "moved", "unsure"
BUSY = 0.1  # of the time between two samples spent on a CPU: the loop thread was computing, not waiting for one
SCOPE_SEARCH = 400  # objects looked at, at most, to find a block's request from its frames


class LoopHealth:
    """ASGI middleware: the lag meter and the block finder for the app it wraps, for as long as its lifespan runs.

    ``threshold=0`` leaves the lag meter alone, with no watcher thread.
    """

    def __init__(self, app: Callable[..., Any], *, interval: float = 0.05, threshold: float = 0.1) -> None:
        self.app, self.interval, self.threshold = app, interval, threshold

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        async with watching_the_loop(interval=self.interval, threshold=self.threshold) as health:
            scope.setdefault("state", {})["loop_health"] = health  # what request.state copies
            await self.app(scope, receive, send)


@contextlib.asynccontextmanager
async def watching_the_loop(
    *, interval: float = 0.05, threshold: float = 0.1, root: str | None = None
) -> AsyncIterator[Health]:
    """Runs the heartbeat on this loop and, unless ``threshold`` is 0, the watcher thread, until the block ends."""
    health = Health(interval, threshold, root)
    async with anyio.create_task_group() as group:
        group.start_soon(health.heartbeat)
        if threshold > 0:
            health.start_watching(sys._getframe())
        try:
            yield health
        finally:
            health.stop_watching()
            group.cancel_scope.cancel()


class Health:
    def __init__(self, interval: float, threshold: float, root: str | None) -> None:
        self.interval, self.threshold, self.root = interval, threshold, root
        self.own: OwnCode | None = None  # made by the watcher thread: it asks the file system, the loop must not
        self.samples: collections.deque[tuple[float, float]] = collections.deque(maxlen=LAG_SAMPLES)
        self.max = 0.0
        self.beat = time.perf_counter()  # when the heartbeat last ran: the loop was free then
        self.blocks: collections.deque[dict[str, Any]] = collections.deque(maxlen=RECENT_BLOCKS)
        self.to_unix = time.time() - time.perf_counter()
        self.stopping = threading.Event()
        self.watcher: threading.Thread | None = None

    async def heartbeat(self) -> None:
        while True:
            began = time.perf_counter()
            await anyio.sleep(self.interval)  # yields the loop; wakes late by however long others held it
            self.beat = now = time.perf_counter()
            lag = max(0.0, now - began - self.interval)
            self.samples.append((now + self.to_unix, lag))
            self.max = max(self.max, lag)

    def report(self) -> dict[str, Any]:
        samples, blocks = list(self.samples), list(self.blocks)  # copies: the watcher appends from its thread
        recent = [lag for _, lag in samples]
        return {
            "interval": self.interval,
            "last": round(recent[-1], 4) if recent else 0.0,
            "recent_max": round(max(recent, default=0.0), 4),
            "max": round(self.max, 4),  # since the server started
            "samples": [[round(at, 3), round(lag, 4)] for at, lag in samples],  # [Unix time, seconds late]
            "block_threshold": self.threshold,
            "blocks": blocks,  # the recent ones, oldest first
        }

    # -------------------------------------------------------------- the watcher thread

    def start_watching(self, here: FrameType) -> None:
        # Frames of your code that run the loop itself (a script's uvicorn.run(app)) stay on the stack for
        # good: below every step, never one. Everything of the lifespan's task above them is a coroutine.
        outer = [f for f in walk(here) if not f.f_code.co_flags & TASK_CODE]
        loop_thread = threading.get_ident(), threading.get_native_id()
        watcher = Watcher(self, loop_thread, {(id(f), f.f_code) for f in outer})
        self.watcher = threading.Thread(target=watcher.run, name="loop-health watcher", daemon=True)
        self.watcher.start()

    def stop_watching(self) -> None:
        self.stopping.set()
        if self.watcher is not None:
            self.watcher.join(timeout=1)

    def blocked(self, run: Run, ended: float) -> None:
        assert self.own is not None
        seconds = ended - run.since
        file, line, function = run.lines.most_common(1)[0][0]
        source = code_only(linecache.getline(self.own.path(file), line))
        who = " ".join(run.request) if run.request else "a task outside any request"
        block = {"method": run.request[0], "path": run.request[1]} if run.request else {"method": None, "path": None}
        block |= {"file": file, "line": line, "function": function, "source": source, "seconds": round(seconds, 3)}
        block |= {"started": round(run.since + self.to_unix, 3), "ended": round(ended + self.to_unix, 3)}
        self.blocks.append(block)
        LOG.warning(
            "%s blocked the event loop for %.2f s at %s:%d in %s: %s", who, seconds, file, line, function, source
        )


LOG = logging.getLogger("uvicorn.error")  # uvicorn's own log: "WARNING:  GET /x blocked the event loop ..."


@dataclass
class Run:
    """Consecutive samples that found the same frame of your code on the loop thread, the heartbeat still."""

    key: tuple[int, CodeType]  # the outermost frame of your code: the same object, running the same code
    beat: float  # the heartbeat's last run when the step began
    since: float  # when the step began: between the sample before and the first that saw it
    last: float  # the latest sample that saw it
    lines: collections.Counter[tuple[str, int, str]] = field(default_factory=collections.Counter)
    request: tuple[str, str] | None = None
    looked: bool = False  # for the request, once


class Watcher:
    def __init__(self, health: Health, loop_thread: tuple[int, int], loop_frames: set[tuple[int, CodeType]]) -> None:
        (self.loop_thread, self.native_id), self.health, self.loop_frames = loop_thread, health, loop_frames
        self.poll = min(0.02, max(0.002, health.threshold / 5))  # five samples or more in a block
        self.run_: Run | None = None
        self.previous = time.perf_counter()
        self.cpu_clock = cpu_clock_of(self.loop_thread)
        self.cpu = self.cpu_time()
        self.frame: FrameType | None = None  # the last sample's innermost frame, at its instruction
        self.lasti = -1
        self.own_inner: FrameType | None = None  # and its innermost frame of your code

    def run(self) -> None:
        self.health.own = OwnCode(self.health.root or os.getcwd())
        failures, delay = 0, self.poll
        while not self.health.stopping.is_set():
            time.sleep(delay)  # cheaper than Event.wait(delay), which makes and drops a lock each time
            try:
                delay = self.sample()
            except Exception:  # the watcher must never take the server down, nor die quietly
                failures, delay = failures + 1, self.poll
                if failures == 1:
                    LOG.exception("loop-health watcher: a sample failed (it goes on)")

    def cpu_time(self) -> float:
        return time.clock_gettime(self.cpu_clock) if self.cpu_clock is not None else 0.0

    def sample(self) -> float:
        """Looks at the loop thread once; returns how long to sleep before the next look."""
        now, beat, health, cpu = time.perf_counter(), self.health.beat, self.health, self.cpu_time()
        assert health.own is not None
        frame, own = sys._current_frames().get(self.loop_thread), []
        try:
            own = [f for f in walk(frame) if health.own.holds(f.f_code.co_filename)] if frame is not None else []
            own = [f for f in own if (id(f), f.f_code) not in self.loop_frames]
            key = (id(own[-1]), own[-1].f_code) if own else None
            share = (cpu - self.cpu) / max(now - self.previous, 1e-9) if self.cpu_clock is not None else 1.0
            run = self.run_
            same = run is not None and key == run.key and beat == run.beat
            verdict = self.verdict(frame, own[0], share) if same and own else MOVED  # asks Linux: only when needed
            if run is not None and same and verdict != MOVED:
                if verdict == HELD:
                    run.last = now
                    self.note(run, own[0])
            else:
                if run is not None:
                    self.finish(run, now, beat)
                # It began after the last look and the heartbeat's run, and before the heartbeat was due.
                after = max(self.previous, beat)
                began = (after + max(after, min(now, beat + health.interval))) / 2
                run = self.run_ = Run(key, beat, began, now) if key else None
                if run is not None:
                    self.note(run, own[0])
            # Seen held once already: most likely a block. Find its request now, while its frames are
            # still there (once: it reads frame locals, slower than a sample).
            if run is not None and not run.looked and sum(run.lines.values()) >= 2:
                run.looked, run.request = True, request_of(walk(frame))
            # Held until the next sample, so that "the same frame" then means the same object, not a new
            # frame that happens to sit at the old one's address. No frame outlives the next sample.
            self.frame, self.lasti = frame, frame.f_lasti if frame is not None else -1
            self.own_inner = own[0] if own else None
        finally:
            del frame, own
        self.previous, self.cpu = now, cpu
        # Every `poll` while the heartbeat is overdue. While it runs on time, one look a little after
        # each of its runs is enough (a step seen then is still there, the same frame, at the next
        # look), and costs a wake-up of this thread a heartbeat rather than one every `poll`.
        return max(self.poll, beat + health.interval + self.poll - now)

    def verdict(self, frame: FrameType | None, own_inner: FrameType | None, cpu_share: float) -> str:
        """Has the step on the loop thread gone on since the last sample? HELD, MOVED, or UNSURE.

        Held: still at the very same instruction, in a system call (a sleep, a read) or computing (a
        query in C); or still in the same call of a plain function of yours, computing (a Python loop).
        A thread stays at one instruction when it only waits for the GIL or for a CPU too: unsure, which
        neither ends the step nor counts as seeing it.
        """
        if frame is not None and frame is self.frame and frame.f_lasti == self.lasti:
            state = kernel_state(self.native_id)
            if state is None or state == "syscall" or (state == "running" and cpu_share >= BUSY):
                return HELD  # no /proc to ask: the instruction decides
            return UNSURE
        if own_inner is None or own_inner is not self.own_inner:
            return MOVED
        if not own_inner.f_code.co_flags & PAUSABLE:  # a plain function cannot pause: it has not returned
            return HELD if cpu_share >= BUSY else UNSURE
        # A coroutine or generator frame of yours can pause and resume between two samples: only a
        # thread computing all along, with the heartbeat still, says it did not.
        return HELD if cpu_share >= 3 * BUSY else MOVED

    def note(self, run: Run, inner: FrameType) -> None:
        assert self.health.own is not None
        run.lines[(self.health.own.shown(inner.f_code.co_filename), inner.f_lineno, inner.f_code.co_name)] += 1

    def finish(self, run: Run, now: float, beat: float) -> None:
        # The heartbeat ran again: the loop was free by then. Otherwise another frame was seen: in between.
        ended = beat if beat != run.beat else (run.last + now) / 2
        held, overdue = ended - run.since, ended - (run.beat + self.health.interval)
        if held >= self.health.threshold and overdue > 0 and sum(run.lines.values()) >= 2:
            self.health.blocked(run, ended)


def code_only(line: str) -> str:
    """The source line without its comment: ``time.sleep(delay)  # blocks`` -> ``time.sleep(delay)``."""
    try:
        comments = [t for t in tokenize.generate_tokens(io.StringIO(line).readline) if t.type == tokenize.COMMENT]
    except (tokenize.TokenError, SyntaxError):  # a line that opens a bracket another one closes
        comments = []
    return (line[: comments[0].start[1]] if comments else line).strip()


def cpu_clock_of(thread: int) -> int | None:
    """The clock of CPU time the thread has used (Linux, macOS); None where there is none."""
    try:
        return time.pthread_getcpuclockid(thread)
    except (AttributeError, OSError):
        return None


FUTEX = {"x86_64": 202, "amd64": 202, "aarch64": 98, "arm64": 98, "riscv64": 98}.get(platform.machine().lower())


def kernel_state(native_id: int) -> str | None:
    """What the thread is doing, says Linux: "running" (or waiting for a CPU), "lock" (a futex: the GIL or
    a thread lock), "syscall" (any other: a sleep, a read); None where there is no /proc to ask."""
    try:
        with open(f"/proc/self/task/{native_id}/syscall", "rb") as syscall:
            call = syscall.read().split(maxsplit=1)[0]
    except (OSError, IndexError):
        return None
    if call == b"running":
        return "running"
    return "lock" if FUTEX is not None and call == b"%d" % FUTEX else "syscall"


def walk(frame: FrameType | None) -> list[FrameType]:
    """The frames from ``frame`` outwards: the innermost first."""
    frames = []
    while frame is not None:
        frames.append(frame)
        frame = frame.f_back
    return frames


def request_of(frames: list[FrameType]) -> tuple[str, str] | None:
    """(method, path) of the request these frames serve, from an ASGI ``scope`` they hold.

    A request's own task has a frame with a ``scope`` local. A task it started
    (a ``StreamingResponse`` makes its body in one) has none, but its frames hold
    the ``send`` it was given, whose closures and bound methods lead back to one.
    """
    seen: set[int] = set()
    todo: list[Any] = []
    for frame in frames:
        local = frame.f_locals  # a snapshot on 3.11 and 3.12, a read-only view here on 3.13 (PEP 667)
        if is_http_scope(local.get("scope")):
            return local["scope"]["method"], local["scope"]["path"]
        todo += [value for name, value in local.items() if name in ("send", "receive", "self", "func")]
    while todo and len(seen) < SCOPE_SEARCH:
        value = todo.pop()
        if id(value) in seen:
            continue
        seen.add(id(value))
        scope = value if isinstance(value, dict) else getattr(value, "scope", None)
        if is_http_scope(scope):
            return scope["method"], scope["path"]
        if inspect.ismethod(value):
            todo += [value.__self__, value.__func__]
        elif isinstance(value, functools.partial):
            todo += [value.func, *value.args]
        elif inspect.isfunction(value):
            todo += [cell.cell_contents for cell in value.__closure__ or () if cell_filled(cell)]
    return None


def is_http_scope(value: Any) -> bool:
    return isinstance(value, dict) and value.get("type") in ("http", "websocket") and "path" in value


def cell_filled(cell: Any) -> bool:
    try:
        cell.cell_contents  # noqa: B018 -- an empty cell raises ValueError
    except ValueError:
        return False
    return True


class OwnCode:
    """Which files are the application's: under ``root``, not installed, not the standard library, not this one."""

    def __init__(self, root: str) -> None:
        self.root = os.path.realpath(root)
        installed = {sysconfig.get_path(name) for name in ("stdlib", "platstdlib", "purelib", "platlib")}
        self.installed = tuple(os.path.realpath(path) + os.sep for path in installed if path)
        self.here = os.path.realpath(__file__)
        self.known: dict[str, str | None] = {}  # co_filename -> the path shown, or None when not ours

    def holds(self, filename: str) -> bool:
        if filename not in self.known:
            path = os.path.realpath(os.path.join(self.root, filename))
            ours = (
                not filename.startswith("<")  # <frozen runpy>, <string>: no file of yours
                and path.startswith(self.root + os.sep)
                and not path.startswith(self.installed)
                and os.sep + "site-packages" + os.sep not in path
                and path != self.here
            )
            self.known[filename] = os.path.relpath(path, self.root) if ours else None
        return self.known[filename] is not None

    def shown(self, filename: str) -> str:
        return self.known[filename] or filename

    def path(self, shown: str) -> str:
        return os.path.join(self.root, shown)
