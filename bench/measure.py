"""The five measurements, each against real uvicorn servers on one stack.

1. Fan-out: ``/universities/sync`` takes N x L for N countries, ``/universities/async`` about L.
2. Concurrency: N pings at once take N x d when the loop blocks, d when they await,
   and ceil(N / 40) x d in the thread pool.
3. Throughput: requests per second of the app and its variants (``bench/variants.py``).
4. A timeline of 5 concurrent pings per route: a staircase when the loop blocks.
5. CPU work: one call and two at once per /cpu route, an instant ping sent beside each,
   and two blocking pings on one worker process and on two.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import statistics
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio

from bench.load import THROUGHPUT_PATH, batch, pinned, rates_at_once
from bench.variants import VARIANTS
from harness.servers import UvicornProcess, raw_get, uvicorn_process
from plumbing.settings import Settings
from stand_in import known_countries

BACKLOG = 2048  # uvicorn's listen queue: room for 1000 connections arriving at once

FANOUT_BOUND = 30
FANOUT_COUNTS = (1, 3, 10, 30)
FANOUT_ASYNC_REPEATS = 3  # async calls are cheap, so take a median; the sync ones run once
BIGGEST = ("United States", "Japan", "India", "China", "Germany")  # the data set's largest answers

CONCURRENCY = (1, 10, 100, 1000)
PING_DELAY = {"blocking": 0.1, "async": 1.0, "thread": 1.0}
BLOCKING_CAP = 100  # 1000 blocking pings would run one after another: 1000 x d
THREAD_TOKENS = Settings().thread_tokens

THROUGHPUT_ROUNDS = 5
THROUGHPUT_SECONDS = 2.0
WARMUP_SECONDS = 1.0
# Differences of a few percent, measured paired as well as in the rounds: (first, second): what first adds.
PAIRS = {
    ("app", "no-timing"): "the timing middleware",
    ("app", "no-print"): "printing the ping lines",
    ("app", "no-blocks"): "the block finder's watcher thread",
    ("no-print", "twin"): "this app's own layers, APP_CONSOLE=0",
    ("app", "twin"): "this app's own layers, by default",
}
PAIRED_ROUNDS = 8
IDLE_SECONDS = 10.0
IDLE_VARIANTS = ("bare-asgi", "no-blocks", "app")  # nothing running; the lag meter; the lag meter and the finder

TIMELINE_REQUESTS = 5
TIMELINE_DELAY = 0.5

CPU_N = 5_000_000  # about 0.4 s of pure-Python work on a 2-core EPYC
PING_AFTER = 0.2  # seconds into a busy call that the instant ping is sent

STARTED = time.monotonic()


def progress(message: str) -> None:
    print(f"[{time.monotonic() - STARTED:6.1f}s] {message}", file=sys.stderr, flush=True)


def app_env(**settings: str) -> dict[str, str]:
    # Only the settings named here: an APP_* variable in the caller's shell must not change the numbers.
    cleared = {key: "" for key in os.environ if key.startswith("APP_")}
    return cleared | {f"APP_{key.upper()}": value for key, value in settings.items()}


@contextlib.contextmanager
def serving(
    target: str, stack: str, cpus: Any, *, env: dict[str, str], factory: bool = False, **more: Any
) -> Iterator[str]:
    """``uvicorn target`` on the server CPU (or ``prefix=...``, ``workers=N``); yields its base URL."""
    options = ["--log-level", "warning", "--backlog", str(BACKLOG), "--timeout-graceful-shutdown", "1"]
    options += ["--factory"] * factory + (["--workers", str(more["workers"])] if "workers" in more else [])
    prefix = more.get("prefix", pinned(cpus, 0))
    with tempfile.TemporaryDirectory() as tmp, uvicorn_process(
        *options, tmp=Path(tmp), target=target, env=env, stack=stack, prefix=prefix
    ) as server:  # fmt: skip
        yield server.base_url
        report_log(target, server)


def report_log(target: str, server: UvicornProcess) -> None:
    if tail := [line for line in server.log_text().splitlines() if not line.startswith(("start /", "end   /"))]:
        progress(f"server {target} logged:\n" + "\n".join(tail[-15:]))


def measure_one(base_url: str, path: str, ideal: float) -> float:
    wall, [reply] = batch(base_url, [path], timeout=2 * ideal + 10)
    if reply.status != 200:
        raise RuntimeError(f"GET {path} answered {reply.status}: {reply.body[:300]!r}")
    return wall


def fanout(base_url: str, latency: float) -> list[dict[str, Any]]:
    rows = []
    for n in FANOUT_COUNTS:
        query = urllib.parse.urlencode([("country", country) for country in known_countries()[:n]])
        row: dict[str, Any] = {"countries": n}
        for kind, ideal in (("sync", n * latency), ("async", math.ceil(n / FANOUT_BOUND) * latency)):
            progress(f"fan-out: /universities/{kind} with {n} countries")
            repeats = FANOUT_ASYNC_REPEATS if kind == "async" else 1
            walls = [measure_one(base_url, f"/universities/{kind}?{query}", ideal) for _ in range(repeats)]
            wall = statistics.median(walls)
            row[kind] = {"wall": wall, "ideal": ideal, "ratio": wall / ideal, "walls": walls}
        rows.append(row)
    return rows


def large_answers(base_url: str, latency: float) -> dict[str, Any]:
    """Both routes over the biggest countries: the same calls, with 4,000-odd records to decode and re-encode."""
    query = urllib.parse.urlencode([("country", country) for country in BIGGEST])
    row: dict[str, Any] = {"countries": list(BIGGEST)}
    for kind, ideal in (("sync", len(BIGGEST) * latency), ("async", latency)):
        progress(f"large answers: /universities/{kind} with the {len(BIGGEST)} biggest countries")
        wall, [reply] = batch(base_url, [f"/universities/{kind}?{query}"], timeout=2 * ideal + 10)
        body = json.loads(reply.body)
        row[kind] = {"wall": wall, "ideal": ideal, "ratio": wall / ideal, "bytes": len(reply.body)}
        row["records"] = sum(call["count"] for call in body["calls"])
    return row


def ideal_waves(route: str, n: int) -> int:
    return {"blocking": n, "async": 1, "thread": math.ceil(n / THREAD_TOKENS)}[route]


def concurrency(base_url: str) -> list[dict[str, Any]]:
    rows = []
    for route, delay in PING_DELAY.items():
        for n in [n for n in CONCURRENCY if route != "blocking" or n <= BLOCKING_CAP]:
            progress(f"concurrency: {n} x /ping/{route}?delay={delay:g}")
            ideal = ideal_waves(route, n)
            wall, replies = batch(base_url, [f"/ping/{route}?delay={delay:g}"] * n, timeout=2 * ideal * delay + 10)
            records = [json.loads(reply.body) for reply in replies if reply.status == 200]
            last_start = max((r["started"] for r in records), default=math.nan) - min(r.sent for r in replies)
            rows.append(
                {"route": f"/ping/{route}", "n": n, "delay": delay, "wall": wall, "waves": wall / delay}
                | {"ideal": ideal, "failed": n - len(records), "last_start": last_start}
            )
    return rows


def throughput(servers: dict[str, str], cpus: Any) -> dict[str, Any]:
    for name, url in servers.items():
        progress(f"throughput: warming up {name}")
        rates_at_once([url], WARMUP_SECONDS, cpus)
    rounds: list[dict[str, float]] = []
    for number in range(1, THROUGHPUT_ROUNDS + 1):
        progress(f"throughput: round {number} of {THROUGHPUT_ROUNDS}, {THROUGHPUT_SECONDS:g} s per variant")
        order = list(servers) if number % 2 else list(servers)[::-1]  # so a slow drift favours no variant
        rounds.append({name: rates_at_once([servers[name]], THROUGHPUT_SECONDS, cpus)[0] for name in order})
    median = {name: statistics.median(r[name] for r in rounds) for name in servers}
    # Each ratio is taken within a round, where the machine's other load hits both variants alike.
    ratios = {f"app/{name}": statistics.median(r["app"] / r[name] for r in rounds) for name in servers}
    ratios |= {f"{a}/{b}": statistics.median(r[a] / r[b] for r in rounds) for a, b in PAIRS}
    of_bare = {name: statistics.median(r[name] / r["bare-asgi"] for r in rounds) for name in servers}
    paired = {f"{first}/{second}": paired_ratio(servers, first, second, cpus) for first, second in PAIRS}
    return {"rounds": rounds, "median": median, "ratios": ratios, "of_bare": of_bare, "paired": paired}


def paired_ratio(servers: dict[str, str], first: str, second: str, cpus: Any) -> dict[str, Any]:
    """first's rate over second's with both loaded at once: a change in the machine's speed hits both alike."""
    progress(f"throughput: {first} and {second} paired, {PAIRED_ROUNDS} x {THROUGHPUT_SECONDS:g} s")
    ratios = []
    for number in range(PAIRED_ROUNDS):
        # Both servers are busy on the one server CPU, which the kernel shares out evenly,
        # so their rates compare their costs per request. wrk starts in turn for either first.
        pair = [first, second] if number % 2 else [second, first]
        measured = rates_at_once([servers[name] for name in pair], THROUGHPUT_SECONDS, cpus)
        rates = dict(zip(pair, measured, strict=True))
        ratios.append(rates[first] / rates[second])
    return {"median": statistics.median(ratios), "ratios": ratios}


def cpu_seconds(pid: int) -> float:
    """CPU time of every thread of the process, to the nanosecond (the first field of each schedstat)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that has just ended
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def idle_cpu(stack: str, cpus: Any) -> dict[str, float]:
    """Share of one core each variant uses with no request at all, measured side by side over IDLE_SECONDS."""
    progress(f"idle: {', '.join(IDLE_VARIANTS)} side by side, {IDLE_SECONDS:g} s with no request")
    with contextlib.ExitStack() as servers, tempfile.TemporaryDirectory() as tmp:
        processes = {}
        for name in IDLE_VARIANTS:
            target, _, env, _ = VARIANTS[name]
            server = uvicorn_process(
                tmp=Path(tmp), target=target, env=app_env() | env, stack=stack, prefix=pinned(cpus, 0)
            )
            processes[name] = servers.enter_context(server).process.pid
        time.sleep(1.0)  # start-up is over
        before = {name: cpu_seconds(pid) for name, pid in processes.items()}
        time.sleep(IDLE_SECONDS)
        return {name: (cpu_seconds(pid) - before[name]) / IDLE_SECONDS for name, pid in processes.items()}


def timeline(base_url: str) -> dict[str, list[dict[str, float]]]:
    bars = {}
    for route in PING_DELAY:
        progress(f"timeline: {TIMELINE_REQUESTS} x /ping/{route}?delay={TIMELINE_DELAY:g}")
        path = f"/ping/{route}?delay={TIMELINE_DELAY:g}"
        _, replies = batch(base_url, [path] * TIMELINE_REQUESTS, timeout=TIMELINE_REQUESTS * TIMELINE_DELAY + 10)
        zero = min(reply.sent for reply in replies)
        ok = [json.loads(r.body) | {"sent": r.sent, "received": r.received} for r in replies if r.status == 200]
        bars[f"/ping/{route}"] = [
            {key: record[key] - zero for key in ("sent", "started", "finished", "received")}
            for record in sorted(ok, key=lambda record: record["started"])
        ]
    return bars


async def ping_during(base_url: str, busy_path: str) -> float:
    """Seconds an instant ``/ping/async?delay=0`` takes when sent ``PING_AFTER`` s into ``busy_path``."""
    async with anyio.create_task_group() as group:
        group.start_soon(raw_get, base_url, busy_path)
        await anyio.sleep(PING_AFTER)
        reply = await raw_get(base_url, "/ping/async?delay=0")
    return reply.received - reply.sent


def cpu_work(base_url: str) -> list[dict[str, Any]]:
    batch(base_url, ["/cpu/process?n=1"] * 2, timeout=30)  # the process pool started before timing
    rows = []
    for route in ("blocking", "thread", "process"):
        progress(f"cpu: /cpu/{route}?n={CPU_N}, one call, two at once, and an instant ping beside it")
        path = f"/cpu/{route}?n={CPU_N}"
        one, _ = batch(base_url, [path], timeout=60)
        two, _ = batch(base_url, [path] * 2, timeout=60)
        ping = anyio.run(ping_during, base_url, f"/cpu/{route}?n={2 * CPU_N}")
        rows.append({"route": f"/cpu/{route}", "one": one, "two": two, "instant_ping": ping})
    return rows


def blocking_pair(base_url: str) -> float:
    """Two /ping/blocking?delay=1, the second sent 0.1 s after the first: wall time of the pair."""

    async def pair() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(raw_get, base_url, "/ping/blocking?delay=1")
            await anyio.sleep(0.1)
            group.start_soon(raw_get, base_url, "/ping/blocking?delay=1")

    began = time.perf_counter()
    anyio.run(pair)
    return time.perf_counter() - began


def run(stack: str, latency: float, cpus: Any) -> dict[str, Any]:
    """Every measurement on one stack."""
    results: dict[str, Any] = {}
    progress(f"stack {stack}")
    with contextlib.ExitStack() as stack_of_servers:  # all at once, so a variant that cannot start fails early
        servers = {
            name: stack_of_servers.enter_context(serving(target, stack, cpus, factory=factory, env=app_env() | env))
            for name, (target, factory, env, _) in VARIANTS.items()
        }
        results["throughput"] = throughput(servers, cpus)
    results["idle"] = idle_cpu(stack, cpus)
    bound = str(FANOUT_BOUND)
    env = app_env(upstream_latency=f"{latency:g}", max_countries=bound, max_concurrency=bound)
    with serving("asgi_app:app", stack, cpus, env=env) as url:
        for kind in ("sync", "async"):
            measure_one(url, f"/universities/{kind}?country=turkiye", latency)  # warm-up: the stand-in, connections
        results["fanout"] = fanout(url, latency)
        results["large"] = large_answers(url, latency)
    with serving("asgi_app:app", stack, cpus, env=app_env()) as url:
        batch(url, [THROUGHPUT_PATH] * 10, timeout=10)  # warm-up
        results["concurrency"] = concurrency(url)
        results["timeline"] = timeline(url)
    both_cpus = ["taskset", "-c", f"{cpus[0]},{cpus[1]}"] if cpus else []  # processes need a second core
    with serving("asgi_app:app", stack, None, env=app_env(), prefix=both_cpus) as url:
        results["cpu"] = cpu_work(url)
        progress("workers: two /ping/blocking?delay=1 0.1 s apart, one worker")
        results["workers"] = {"1": blocking_pair(url)}
    with serving("asgi_app:app", stack, None, env=app_env(), prefix=both_cpus, workers=2) as url:
        progress("workers: two /ping/blocking?delay=1 0.1 s apart, --workers 2")
        results["workers"]["2"] = blocking_pair(url)
    return results
