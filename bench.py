"""Measure what blocking, awaiting and timing cost, against real uvicorn servers.

1. Fan-out: ``/universities/sync`` takes N x L for N countries, ``/universities/async`` about L.
2. Concurrency: N pings at once take N x d when the loop blocks, d when they await,
   and ceil(N / 40) x d in the thread pool.
3. Timing every response: requests per second with the pure ASGI ``TimingMiddleware``,
   without it, with ``BaseHTTPMiddleware``, as a bare ASGI callable and as FastAPI.
4. A timeline of 5 concurrent pings per route: a staircase when the loop blocks.

Every server is a ``python -m uvicorn`` subprocess on 127.0.0.1 that this script
starts and stops. Usage::

    pip install -r requirements-bench.txt && python bench.py [--json FILE] [--plot FILE.png]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import math
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import IO, Any

from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

import asgi_app
from universities import load_records

HERE = Path(__file__).resolve().parent
HOST = "127.0.0.1"
BACKLOG = 2048  # uvicorn's listen queue: room for 1000 connections arriving at once
OPEN_FILES = 8192  # 1000 client sockets and 1000 server sockets, with room to spare
STARTUP_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>

UPSTREAM_LATENCY = 0.5
FANOUT_BOUND = 30
FANOUT_COUNTS = (1, 3, 10, 30)
FANOUT_ASYNC_REPEATS = 3  # async calls are cheap, so take a median; the sync ones run once

CONCURRENCY = (1, 10, 100, 1000)
PING_DELAY = {"blocking": 0.1, "async": 1.0, "thread": 1.0}
BLOCKING_CAP = 100  # 1000 blocking pings would run one after another: 1000 x d
THREAD_TOKENS = asgi_app.Settings().thread_tokens

THROUGHPUT_PATH = "/ping/async?delay=0"
THROUGHPUT_ROUNDS = 5
THROUGHPUT_SECONDS = 2.0
WARMUP_SECONDS = 1.0
LOAD_CONNECTIONS = 64
PAIRS = (("app", "no-timing"), ("app", "no-print"))  # differences of a few percent: measured paired as well
PAIRED_ROUNDS = 8

TIMELINE_REQUESTS = 5
TIMELINE_DELAY = 0.5
COLORS = {"sync": "tab:red", "async": "tab:blue", "blocking": "tab:red", "thread": "tab:green"}

# name: (uvicorn import string, is a factory, what it is)
VARIANTS: dict[str, tuple[str, bool, str]] = {
    "app": ("asgi_app:app", False, "this app (pure ASGI TimingMiddleware)"),
    "no-timing": ("bench:app_without_timing", True, "this app without TimingMiddleware"),
    "base-http": ("bench:app_with_base_http_middleware", True, "timing by BaseHTTPMiddleware instead"),
    "no-print": ("bench:app_without_print", True, "this app, ping lines not printed"),
    "bare-asgi": ("bench:bare_asgi", False, "bare ASGI callable (the ceiling)"),
    "fastapi": ("bench_fastapi:app", False, 'FastAPI + @app.middleware("http")'),
}


# ---------------------------------------------------- apps uvicorn imports


def app_without_timing() -> ASGIApp:
    return asgi_app.create_app(asgi_app.Settings.from_env()).app  # the Starlette app inside TimingMiddleware


async def add_timing_headers(request: Request, call_next: RequestResponseEndpoint) -> Response:
    start = time.perf_counter()
    response = await call_next(request)
    elapsed = time.perf_counter() - start
    response.headers["X-Process-Time"] = f"{elapsed:.6f}"
    response.headers["Server-Timing"] = f"app;dur={elapsed * 1000:.3f}"
    return response


def app_with_base_http_middleware() -> ASGIApp:
    inner = asgi_app.create_app(asgi_app.Settings.from_env()).app
    inner.add_middleware(BaseHTTPMiddleware, dispatch=add_timing_headers)
    return inner


def app_without_print() -> ASGIApp:
    # A module global named print shadows the built-in for asgi_app's code only,
    # so this is the same app minus its two console lines per ping.
    asgi_app.print = lambda *args, **kwargs: None
    return asgi_app.app


async def bare_asgi(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers every request with the ping's JSON fields, and does nothing else."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    thread, now = threading.current_thread(), time.time()
    record = {"route": "/ping/async", "delay": 0.0, "pid": os.getpid(), "thread": thread.name}
    record |= {"thread_id": thread.native_id, "on_event_loop": True, "started": now, "finished": now}
    body = json.dumps(record, separators=(",", ":")).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# -------------------------------------------------------------- processes

STARTED = time.monotonic()


def progress(message: str) -> None:
    print(f"[{time.monotonic() - STARTED:6.1f}s] {message}", file=sys.stderr, flush=True)


def choose_cpus() -> tuple[int, int] | None:
    """(server CPU, load CPU), or None when the two cannot be pinned apart."""
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    return (allowed[0], allowed[1]) if shutil.which("taskset") and len(allowed) >= 2 else None


CPUS = choose_cpus()


def pinned(command: list[str], role: int) -> list[str]:
    return ["taskset", "-c", str(CPUS[role]), *command] if CPUS else command


def die_with_parent() -> None:
    # Runs in the child before exec: if this script is killed outright, the kernel stops the server.
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: IO[bytes]

    def wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while self.process.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection((HOST, self.port), timeout=0.5):
                return  # uvicorn listens only once the lifespan startup is done
            time.sleep(0.05)
        raise RuntimeError(f"server {self.name} did not start:\n{self.log_tail()}")

    def log_tail(self, lines: int = 15) -> str:
        self.log.seek(0)
        return "\n".join(self.log.read().decode(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextlib.contextmanager
def launch(name: str, target: str, *, factory: bool = False, env: Mapping[str, str]) -> Iterator[Server]:
    """Starts ``uvicorn target`` (call ``wait_ready`` before use) and stops it when the block ends."""
    port = free_port()
    options = f"--host {HOST} --port {port} --log-level warning --backlog {BACKLOG} --timeout-graceful-shutdown 1"
    command = [sys.executable, "-m", "uvicorn", target, *options.split(), *["--factory"] * factory]
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            pinned(command, 0),
            cwd=HERE,
            env=os.environ | env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,  # the pings print two lines each
            stderr=log,
            preexec_fn=die_with_parent,  # noqa: PLW1509 (no threads are running yet)
            start_new_session=True,  # Ctrl-C reaches only this script, which stops the server in order
        )
        server, interrupted = Server(name, port, process, log), False
        try:
            yield server
        except (KeyboardInterrupt, SystemExit):
            interrupted = True  # uvicorn then complains about the requests cut short: not news
            raise
        finally:
            server.stop()
            if not interrupted and (tail := server.log_tail()):
                progress(f"server {name} logged:\n{tail}")


def app_env(**settings: str) -> dict[str, str]:
    # Only the settings named here: an APP_* variable in the caller's shell must not change the numbers.
    cleared = {key: "" for key in os.environ if key.startswith("APP_")}
    return cleared | {f"APP_{key.upper()}": value for key, value in settings.items()}


# ------------------------------------------------------------- the clients


@dataclass(frozen=True)
class Reply:
    status: int  # 0 when the request failed before an answer
    body: bytes
    sent: float  # Unix time, comparable with the pings' started and finished
    received: float


async def get(port: int, path: str, timeout: float) -> Reply:
    """One GET on a fresh connection, ``Connection: close``, read to EOF."""
    sent, raw, writer = time.time(), b"", None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(HOST, port)
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: close\r\n\r\n".encode())
            raw = await reader.read()
    except (OSError, TimeoutError):
        pass  # counted as failed: status 0
    finally:
        if writer is not None:
            writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status = re.match(rb"HTTP/1\.[01] (\d{3})", head)
    return Reply(int(status.group(1)) if status else 0, body, sent, time.time())


def batch(port: int, paths: list[str], timeout: float) -> tuple[float, list[Reply]]:
    """All paths at once, one connection each; the wall time from the first connect to the last byte."""

    async def all_at_once() -> list[Reply]:
        return await asyncio.gather(*(get(port, path, timeout) for path in paths))

    began = time.perf_counter()
    replies = asyncio.run(all_at_once())
    return time.perf_counter() - began, replies


async def keep_alive_load(port: int, seconds: float) -> int:
    """The fallback when wrk is missing: requests answered over kept-alive connections in ``seconds``."""
    deadline = time.monotonic() + seconds
    request = f"GET {THROUGHPUT_PATH} HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n".encode()

    async def one_connection() -> int:
        reader, writer = await asyncio.open_connection(HOST, port)
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


def rates_at_once(ports: list[int], seconds: float) -> list[float]:
    """Requests per second answered on each port, all of them loaded at the same time."""
    if not shutil.which("wrk"):

        async def every_port() -> list[int]:
            return await asyncio.gather(*(keep_alive_load(port, seconds) for port in ports))

        return [done / seconds for done in asyncio.run(every_port())]
    options = f"-t1 -c{LOAD_CONNECTIONS} -d{seconds:g}s --timeout 5s"
    commands = [pinned(["wrk", *options.split(), f"http://{HOST}:{port}{THROUGHPUT_PATH}"], 1) for port in ports]
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
            progress(f"wrk reported errors:\n{out}")
    return [float(re.search(r"Requests/sec:\s*([\d.]+)", out).group(1)) for out in outs]


def requests_per_second(port: int, seconds: float) -> float:
    return rates_at_once([port], seconds)[0]


# --------------------------------------------------------------- the parts


def countries(n: int) -> list[str]:
    known = list(dict.fromkeys(record.country for record in load_records()))
    return (known + [f"Nowhere {i}" for i in range(len(known) + 1, n + 1)])[:n]  # unknown ones answer []


def measure_one(server: Server, path: str, ideal: float) -> float:
    wall, [reply] = batch(server.port, [path], timeout=2 * ideal + 10)
    if reply.status != 200:
        raise RuntimeError(f"GET {path} answered {reply.status}: {reply.body[:300]!r}")
    return wall


def fanout(server: Server, latency: float) -> list[dict[str, Any]]:
    rows = []
    for n in FANOUT_COUNTS:
        query = urllib.parse.urlencode([("country", country) for country in countries(n)])
        row: dict[str, Any] = {"countries": n}
        for kind, ideal in (("sync", n * latency), ("async", math.ceil(n / FANOUT_BOUND) * latency)):
            progress(f"fan-out: /universities/{kind} with {n} countries")
            repeats = FANOUT_ASYNC_REPEATS if kind == "async" else 1
            walls = [measure_one(server, f"/universities/{kind}?{query}", ideal) for _ in range(repeats)]
            wall = statistics.median(walls)
            row[kind] = {"wall": wall, "ideal": ideal, "ratio": wall / ideal, "walls": walls}
        rows.append(row)
    return rows


def ideal_waves(route: str, n: int) -> int:
    return {"blocking": n, "async": 1, "thread": math.ceil(n / THREAD_TOKENS)}[route]


def concurrency(server: Server) -> list[dict[str, Any]]:
    rows = []
    for route, delay in PING_DELAY.items():
        for n in [n for n in CONCURRENCY if route != "blocking" or n <= BLOCKING_CAP]:
            progress(f"concurrency: {n} x /ping/{route}?delay={delay:g}")
            ideal = ideal_waves(route, n)
            wall, replies = batch(server.port, [f"/ping/{route}?delay={delay:g}"] * n, timeout=2 * ideal * delay + 10)
            records = [json.loads(reply.body) for reply in replies if reply.status == 200]
            last_start = max((r["started"] for r in records), default=math.nan) - min(r.sent for r in replies)
            rows.append(
                {"route": f"/ping/{route}", "n": n, "delay": delay, "wall": wall, "waves": wall / delay}
                | {"ideal": ideal, "failed": n - len(records), "last_start": last_start}
            )
    return rows


def throughput(servers: dict[str, Server]) -> dict[str, Any]:
    for name, server in servers.items():
        progress(f"throughput: warming up {name}")
        requests_per_second(server.port, WARMUP_SECONDS)
    rounds: list[dict[str, float]] = []
    for number in range(1, THROUGHPUT_ROUNDS + 1):
        progress(f"throughput: round {number} of {THROUGHPUT_ROUNDS}, {THROUGHPUT_SECONDS:g} s per variant")
        order = list(servers) if number % 2 else list(servers)[::-1]  # so a slow drift favours no variant
        rounds.append({name: requests_per_second(servers[name].port, THROUGHPUT_SECONDS) for name in order})
    median = {name: statistics.median(r[name] for r in rounds) for name in servers}
    # Each ratio is taken within a round, where the machine's other load hits both variants alike.
    ratios = {f"app/{name}": statistics.median(r["app"] / r[name] for r in rounds) for name in servers}
    paired = {f"{first}/{second}": paired_ratio(servers[first], servers[second]) for first, second in PAIRS}
    return {"rounds": rounds, "median": median, "ratios": ratios, "paired": paired}


def paired_ratio(first: Server, second: Server) -> dict[str, Any]:
    """first's rate over second's with both loaded at once: a change in the machine's speed hits both alike."""
    progress(f"throughput: {first.name} and {second.name} paired, {PAIRED_ROUNDS} x {THROUGHPUT_SECONDS:g} s")
    ratios = []
    for number in range(PAIRED_ROUNDS):
        # Both servers are busy on the one server CPU, which the kernel shares out evenly,
        # so their rates compare their costs per request. wrk starts in turn for either first.
        pair = [first, second] if number % 2 else [second, first]
        measured = rates_at_once([server.port for server in pair], THROUGHPUT_SECONDS)
        rates = dict(zip((server.name for server in pair), measured, strict=True))
        ratios.append(rates[first.name] / rates[second.name])
    return {"median": statistics.median(ratios), "ratios": ratios}


def timeline(server: Server) -> dict[str, list[dict[str, float]]]:
    bars = {}
    for route in PING_DELAY:
        progress(f"timeline: {TIMELINE_REQUESTS} x /ping/{route}?delay={TIMELINE_DELAY:g}")
        path = f"/ping/{route}?delay={TIMELINE_DELAY:g}"
        _, replies = batch(server.port, [path] * TIMELINE_REQUESTS, timeout=TIMELINE_REQUESTS * TIMELINE_DELAY + 10)
        zero = min(reply.sent for reply in replies)
        ok = [json.loads(r.body) | {"sent": r.sent, "received": r.received} for r in replies if r.status == 200]
        bars[f"/ping/{route}"] = [
            {key: record[key] - zero for key in ("sent", "started", "finished", "received")}
            for record in sorted(ok, key=lambda record: record["started"])
        ]
    return bars


# -------------------------------------------------------------- the report


def targets(results: dict[str, Any]) -> list[tuple[bool, str]]:
    ratios = results["throughput"]["ratios"]
    ping = next(row for row in results["concurrency"] if row["route"] == "/ping/async" and row["n"] == 1000)
    fan = {row["countries"]: row["async"]["ratio"] for row in results["fanout"]}
    cost, in_rounds = 1 - results["throughput"]["paired"]["app/no-timing"]["median"], 1 - ratios["app/no-timing"]
    return [
        (cost <= 0.05, f"timing middleware costs <= 5% of throughput: {cost:+.1%} paired ({in_rounds:+.1%} in rounds)"),
        (ratios["app/fastapi"] >= 4, f"this app >= 4x the FastAPI version: {ratios['app/fastapi']:.2f}x"),
        (ratios["app/bare-asgi"] >= 0.5, f"this app >= 0.5x the bare ASGI ceiling: {ratios['app/bare-asgi']:.2f}x"),
        (
            ping["waves"] <= 1.2 and not ping["failed"],
            f"1000 concurrent /ping/async?delay=1 within 1.2 s: {ping['wall']:.2f} s, {ping['failed']} failed",
        ),
        (fan[3] <= 1.1, f"async fan-out, 3 countries, within 1.1 x L: {fan[3]:.2f} x L"),
        (fan[30] <= 1.25, f"async fan-out, 30 countries (bound 30), within 1.25 x L: {fan[30]:.2f} x L"),
    ]


def report(results: dict[str, Any]) -> str:
    meta = results["meta"]
    lines = [f"load: {meta['load']}; {meta['pinning']}", meta["versions"], ""]
    lines += fanout_lines(results["fanout"], meta["latency"]) + [""]
    lines += concurrency_lines(results["concurrency"]) + [""]
    lines += throughput_lines(results["throughput"]) + [""]
    lines.append(
        f"4. Timeline: {TIMELINE_REQUESTS} concurrent pings, d = {TIMELINE_DELAY:g} s (seconds after the first)"
    )
    for route, bars in results["timeline"].items():
        starts = " ".join(f"{bar['started']:.2f}" for bar in bars)
        lines.append(f"   {route:<15} bodies start at {starts}; last answer at {max(b['received'] for b in bars):.2f}")
    lines += ["", "Targets"] + [f"   {'PASS' if ok else 'MISS'}  {text}" for ok, text in targets(results)]
    return "\n".join(lines + ["", f"whole bench: {meta['wall']:.0f} s"])


def fanout_lines(rows: list[dict[str, Any]], latency: float) -> list[str]:
    lines = [
        f"1. Fan-out, upstream latency L = {latency:g} s, bound {FANOUT_BOUND}"
        f" (async: median of {FANOUT_ASYNC_REPEATS})"
    ]
    lines.append(f"   {'countries':>9} {'sync':>8} {'ideal':>7} {'ratio':>6}   {'async':>7} {'ideal':>6} {'ratio':>6}")
    for row in rows:
        sync, fan = row["sync"], row["async"]
        lines.append(
            f"   {row['countries']:>9} {sync['wall']:>7.2f}s {sync['ideal']:>6.2f}s {sync['ratio']:>6.2f}"
            f"   {fan['wall']:>6.2f}s {fan['ideal']:>5.2f}s {fan['ratio']:>6.2f}"
        )
    return lines


def concurrency_lines(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["2. Concurrent pings: wall time / d (ideal in brackets), one new connection per request"]
    lines.append(f"   {'route':<15} {'d':>5}" + "".join(f"{n:>14}" for n in CONCURRENCY))
    for route, delay in PING_DELAY.items():
        cells = {row["n"]: row for row in rows if row["route"] == f"/ping/{route}"}
        text = "".join(f"{cell_text(cells.get(n)):>14}" for n in CONCURRENCY)
        lines.append(f"   /ping/{route:<9} {delay:>4g}s{text}")
    widest = max((row for row in rows if row["route"] == "/ping/async"), key=lambda row: row["n"])
    lines.append(f"   /ping/blocking stops at {BLOCKING_CAP} with a short d: it runs one request at a time")
    lines.append(f"   /ping/thread runs {THREAD_TOKENS} at a time (the AnyIO thread pool's tokens)")
    lines.append(
        f"   {widest['n']} x /ping/async: the last body began {widest['last_start']:.2f} s after the first connect"
    )
    return lines


def cell_text(row: dict[str, Any] | None) -> str:
    if row is None:
        return "skipped"
    return f"{row['waves']:.2f} ({row['ideal']})" + (f" {row['failed']} failed" if row["failed"] else "")


def throughput_lines(data: dict[str, Any]) -> list[str]:
    lines = [f"3. Requests per second on {THROUGHPUT_PATH}, {LOAD_CONNECTIONS} connections kept alive"]
    rounds = f"{THROUGHPUT_ROUNDS} interleaved rounds x {THROUGHPUT_SECONDS:g} s"
    lines.append(f"   {rounds}: the median, and the median of the ratios within each round")
    for name, (_, _, what) in VARIANTS.items():
        ratio = 1 / data["ratios"][f"app/{name}"]
        lines.append(f"   {name:<10} {what:<40} {data['median'][name]:>8.0f}  {ratio:>5.2f}x this app")
    lines.append(
        f"   app / FastAPI {data['ratios']['app/fastapi']:.2f}x, app / bare ASGI {data['ratios']['app/bare-asgi']:.2f}x"
    )
    lines.append("   share of throughput it costs    paired (both loaded at once)    in the rounds")
    for (first, second), what in zip(PAIRS, ("the timing middleware", "printing the ping lines"), strict=True):
        key = f"{first}/{second}"
        lines.append(f"   {what:<31} {1 - data['paired'][key]['median']:>+28.1%}    {1 - data['ratios'][key]:>+13.1%}")
    return lines


# ------------------------------------------------------------------ charts


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 2, figsize=(15, 10))
    plot_fanout(axes[0][0], results["fanout"], results["meta"]["latency"])
    plot_concurrency(axes[0][1], results["concurrency"])
    plot_throughput(axes[1][0], results["throughput"])
    plot_timeline(axes[1][1], results["timeline"])
    figure.suptitle("Blocking, awaiting and timing in a Starlette app (uvicorn, one worker)", fontsize=14)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_fanout(ax: Any, rows: list[dict[str, Any]], latency: float) -> None:
    for offset, kind in ((-0.2, "sync"), (0.2, "async")):
        xs = [x + offset for x in range(len(rows))]
        walls = [row[kind]["wall"] for row in rows]
        ax.bar(xs, walls, 0.4, color=COLORS[kind], label=f"/universities/{kind}")
        ax.scatter(xs, [row[kind]["ideal"] for row in rows], marker="_", s=400, color="black", zorder=3)
        for x, wall in zip(xs, walls, strict=True):
            ax.text(x, wall, f"{wall:.2f}", ha="center", va="bottom", fontsize=8)
    ax.scatter([], [], marker="_", s=400, color="black", label="ideal: N x L and L")
    labels = [f"{row['countries']} {'country' if row['countries'] == 1 else 'countries'}" for row in rows]
    ax.set(xticks=range(len(rows)), xticklabels=labels, yscale="log", ylabel="wall time (s, log scale)")
    ax.set_title(f"1. Fan-out to an upstream with latency L = {latency:g} s")
    ax.legend()


def plot_concurrency(ax: Any, rows: list[dict[str, Any]]) -> None:
    for route, delay in PING_DELAY.items():
        mine = [row for row in rows if row["route"] == f"/ping/{route}"]
        ns = [row["n"] for row in mine]
        label = f"/ping/{route}, d = {delay:g} s"
        ax.plot(ns, [row["waves"] for row in mine], "o-", color=COLORS[route], label=label)
        ax.plot(ns, [row["ideal"] for row in mine], ":", color=COLORS[route], linewidth=3, alpha=0.5)
    ax.set(xscale="log", yscale="log", xlabel="concurrent requests", ylabel="wall time / d (dotted: ideal)")
    ax.set_title("2. Concurrent pings (blocking capped at 100)")
    ax.legend()


def plot_throughput(ax: Any, data: dict[str, Any]) -> None:
    names = list(VARIANTS)[::-1]
    values = [data["median"][name] for name in names]
    colors = ["tab:orange" if name == "app" else "tab:purple" for name in names]
    ax.barh([VARIANTS[name][2] for name in names], values, color=colors)
    for y, (name, value) in enumerate(zip(names, values, strict=True)):
        ax.text(value, y, f" {value:.0f} ({1 / data['ratios'][f'app/{name}']:.2f}x)", va="center")
    ax.set(
        xlabel="requests per second, median of rounds (x: ratio to this app within a round)",
        xlim=(0, max(values) * 1.25),
    )
    ax.set_title(f"3. Throughput on {THROUGHPUT_PATH}")


def plot_timeline(ax: Any, timeline_bars: dict[str, list[dict[str, float]]]) -> None:
    labels = []
    for route, bars in timeline_bars.items():
        color = COLORS[route.rpartition("/")[2]]
        for number, bar in enumerate(bars, 1):
            row = len(labels)
            ax.barh(row, bar["started"] - bar["sent"], left=bar["sent"], color=color, alpha=0.2)
            ax.barh(row, bar["finished"] - bar["started"], left=bar["started"], color=color)
            labels.append(f"{route} #{number}")
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    ax.set_xlabel("seconds after the first request (pale: waiting, solid: the body running)")
    ax.set_title(f"4. Timeline of {TIMELINE_REQUESTS} concurrent pings, d = {TIMELINE_DELAY:g} s")


# -------------------------------------------------------------------- main


def raise_open_files() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = OPEN_FILES if hard == resource.RLIM_INFINITY else min(OPEN_FILES, hard)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))  # the servers inherit it too


def run(latency: float) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:  # first, so a variant that cannot start fails within seconds
        servers = {
            name: stack.enter_context(launch(name, target, factory=factory, env=app_env()))
            for name, (target, factory, _) in VARIANTS.items()
        }
        for server in servers.values():
            server.wait_ready()
        results["throughput"] = throughput(servers)
    bound = str(FANOUT_BOUND)
    env = app_env(upstream_latency=f"{latency:g}", max_countries=bound, max_concurrency=bound)
    with launch("fan-out", "asgi_app:app", env=env) as server:
        server.wait_ready()
        for kind in ("sync", "async"):
            measure_one(server, f"/universities/{kind}?country=turkiye", latency)  # warm-up: imports, connections
        results["fanout"] = fanout(server, latency)
    with launch("pings", "asgi_app:app", env=app_env()) as server:
        server.wait_ready()
        batch(server.port, [THROUGHPUT_PATH] * 10, timeout=10)  # warm-up
        results["concurrency"] = concurrency(server)
        results["timeline"] = timeline(server)
    return results


def describe(latency: float) -> dict[str, Any]:
    throughput_load = "wrk" if shutil.which("wrk") else "our asyncio keep-alive client (no wrk: a lower bound)"
    batch_load = "our asyncio client on raw streams (Connection: close)"
    pinning = (
        f"server on CPU {CPUS[0]}, load on CPU {CPUS[1]} (taskset)" if CPUS else "not pinned (no taskset or 1 CPU)"
    )
    packages = ", ".join(f"{name} {version(name)}" for name in ("uvicorn", "h11", "starlette", "fastapi"))
    return {
        "latency": latency,
        "load": f"{throughput_load} for throughput, {batch_load} for batches",
        "pinning": pinning,
        "versions": f"Python {sys.version.split()[0]}, {packages}, {os.cpu_count()} CPUs",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the raw numbers here")
    parser.add_argument("--plot", type=Path, metavar="FILE.png", help="draw the charts here (matplotlib)")
    parser.add_argument("--latency", type=float, default=UPSTREAM_LATENCY, help="upstream latency L of the fan-out")
    args = parser.parse_args(argv)
    if args.plot:
        import matplotlib  # noqa: F401 (missing, it should fail now, not after minutes of measuring)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # so finally blocks stop servers
    raise_open_files()
    if CPUS:
        os.sched_setaffinity(0, {CPUS[1]})  # our client runs beside wrk, away from the server
    meta = describe(args.latency)
    progress(f"load: {meta['load']}; {meta['pinning']}")
    try:
        results = {"meta": meta} | run(args.latency)
    except KeyboardInterrupt:
        progress("interrupted; every server was stopped")
        return 130
    meta["wall"] = time.monotonic() - STARTED
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if args.plot:
        plot(results, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
