"""The text report: every figure under the name of the stack it was measured on, and the targets."""

from __future__ import annotations

from typing import Any

from bench.load import LOAD_CONNECTIONS, THROUGHPUT_PATH
from bench.measure import (
    BLOCKING_CAP,
    CONCURRENCY,
    CPU_N,
    FANOUT_ASYNC_REPEATS,
    FANOUT_BOUND,
    PAIRS,
    PING_DELAY,
    THREAD_TOKENS,
    THROUGHPUT_ROUNDS,
    THROUGHPUT_SECONDS,
    TIMELINE_DELAY,
    TIMELINE_REQUESTS,
)
from bench.variants import VARIANTS

# The lowest app / FastAPI and app / bare-ASGI throughput ratios we hold ourselves to, per stack.
RATIO_TARGETS = {"uvloop+httptools": {"fastapi": 4.0, "bare-asgi": 0.55}, "asyncio+h11": {"bare-asgi": 0.75}}
TIMING_COST_TARGET = 0.05
BLOCK_FINDER_COST_TARGET = 0.02
# This app's own layers against plain Starlette doing the same /ping/async (bench/variants.py), on every stack.
TWIN_TARGETS = {"no-print/twin": 0.90, "app/twin": 0.80}
# The layers from the ceiling down, as docs/benchmark.md tabulates them.
LAYERS = ("bare-asgi", "twin", "no-print", "app", "base-http", "fastapi")


def cost_check(results: dict[str, Any], key: str, what: str, most: float) -> tuple[bool, str]:
    """What a layer costs, 1 - key's ratio: paired (the target) and in rounds."""
    paired, in_rounds = 1 - results["throughput"]["paired"][key]["median"], 1 - results["throughput"]["ratios"][key]
    return paired <= most, f"{what} costs <= {most:.0%}: {paired:+.1%} paired ({in_rounds:+.1%} in rounds)"


def targets(stack: str, results: dict[str, Any]) -> list[tuple[bool, str]]:
    ratios = results["throughput"]["ratios"]
    ping = next(row for row in results["concurrency"] if row["route"] == "/ping/async" and row["n"] == 1000)
    fan = {row["countries"]: row["async"]["ratio"] for row in results["fanout"]}
    checks = [
        cost_check(results, "app/no-timing", "timing middleware", TIMING_COST_TARGET),
        cost_check(results, "app/no-blocks", "block finder", BLOCK_FINDER_COST_TARGET),
    ]
    for key, least in TWIN_TARGETS.items():
        got, paired = ratios[key], results["throughput"]["paired"][key]["median"]
        checks.append((got >= least, f"{key} >= {least}: {got:.2f} in rounds ({paired:.2f} paired)"))
    for name, least in RATIO_TARGETS.get(stack, {}).items():
        checks.append((ratios[f"app/{name}"] >= least, f"app / {name} >= {least}: {ratios[f'app/{name}']:.2f}"))
    checks += [
        (
            ping["waves"] <= 1.2 and not ping["failed"],
            f"1000 concurrent /ping/async?delay=1 within 1.2 s: {ping['wall']:.2f} s, {ping['failed']} failed",
        ),
        (fan[3] <= 1.1, f"async fan-out, 3 countries, within 1.1 x L: {fan[3]:.2f} x L"),
        (fan[30] <= 1.25, f"async fan-out, 30 countries (bound 30), within 1.25 x L: {fan[30]:.2f} x L"),
    ]
    return checks


def report(meta: dict[str, Any], by_stack: dict[str, dict[str, Any]]) -> str:
    lines = [f"load: {meta['load']}; {meta['pinning']}", meta["versions"]]
    for stack, results in by_stack.items():
        lines += ["", f"=== {stack} (Python {meta['python']}, uvicorn --loop/--http as named)", ""]
        lines += fanout_lines(results["fanout"], meta["latency"]) + large_lines(results.get("large")) + [""]
        lines += concurrency_lines(results["concurrency"]) + [""]
        lines += throughput_lines(results["throughput"]) + idle_lines(results.get("idle")) + [""]
        lines += timeline_lines(results["timeline"]) + [""]
        lines += cpu_lines(results.get("cpu"), results.get("workers")) + ["", f"Targets on {stack}"]
        lines += [f"   {'PASS' if ok else 'MISS'}  {text}" for ok, text in targets(stack, results)]
    return "\n".join(lines + ["", f"whole bench: {meta['wall']:.0f} s"])


def fanout_lines(rows: list[dict[str, Any]], latency: float) -> list[str]:
    repeats = f"async: median of {FANOUT_ASYNC_REPEATS}"
    lines = [f"1. Fan-out, upstream latency L = {latency:g} s, bound {FANOUT_BOUND} ({repeats})"]
    lines.append(f"   {'countries':>9} {'sync':>8} {'ideal':>7} {'ratio':>6}   {'async':>7} {'ideal':>6} {'ratio':>6}")
    for row in rows:
        sync, fan = row["sync"], row["async"]
        lines.append(
            f"   {row['countries']:>9} {sync['wall']:>7.2f}s {sync['ideal']:>6.2f}s {sync['ratio']:>6.2f}"
            f"   {fan['wall']:>6.2f}s {fan['ideal']:>5.2f}s {fan['ratio']:>6.2f}"
        )
    return lines


def large_lines(row: dict[str, Any] | None) -> list[str]:
    if row is None:
        return []
    sync, fan = row["sync"], row["async"]
    what = f"the {len(row['countries'])} biggest countries ({row['records']:,} records, {sync['bytes'] / 1e6:.1f} MB)"
    sync_text = f"sync {sync['wall']:.2f}s ({sync['ratio']:.2f} x ideal)"
    return [f"   {what}: {sync_text}, async {fan['wall']:.2f}s ({fan['ratio']:.2f} x ideal)"]


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
    for name, (*_, what) in VARIANTS.items():
        ratio = 1 / data["ratios"][f"app/{name}"]
        lines.append(f"   {name:<10} {what:<40} {data['median'][name]:>8.0f}  {ratio:>5.2f}x this app")
    lines.append(
        f"   app / FastAPI {data['ratios']['app/fastapi']:.2f}x, app / bare ASGI {data['ratios']['app/bare-asgi']:.2f}x"
    )
    layers = " -> ".join(f"{name} {data['of_bare'][name]:.2f}" for name in LAYERS)
    lines.append(f"   each layer as a share of the bare ASGI callable (in rounds): {layers}")
    lines.append(f"   {'first / second':<22} {'what first adds':<40} {'paired':>7} {'in rounds':>10}")
    for (first, second), what in PAIRS.items():
        key = f"{first}/{second}"
        lines.append(f"   {key:<22} {what:<40} {data['paired'][key]['median']:>7.3f} {data['ratios'][key]:>10.3f}")
    return lines


def idle_lines(idle: dict[str, float] | None) -> list[str]:
    if not idle:
        return []
    shares = ", ".join(f"{name} {share:.2%}" for name, share in idle.items())
    added = (
        f"lag meter +{idle['no-blocks'] - idle['bare-asgi']:.2%}, block finder +{idle['app'] - idle['no-blocks']:.2%}"
    )
    return [f"   idle, of one core, no request at all: {shares} ({added})"]


def cpu_lines(rows: list[dict[str, Any]] | None, workers: dict[str, float] | None) -> list[str]:
    if rows is None or workers is None:
        return []
    lines = [f"5. CPU work, n = {CPU_N:,} (server on both cores): wall time, and an instant ping sent into a 2n call"]
    lines.append(f"   {'route':<15} {'1 call':>8} {'2 at once':>10} {'instant ping':>13}")
    for row in rows:
        lines.append(f"   {row['route']:<15} {row['one']:>7.2f}s {row['two']:>9.2f}s {row['instant_ping']:>12.3f}s")
    lines.append(
        f"   two /ping/blocking?delay=1, 0.1 s apart: {workers['1']:.2f} s on one worker, {workers['2']:.2f} s on two"
    )
    return lines


def timeline_lines(bars_by_route: dict[str, list[dict[str, float]]]) -> list[str]:
    lines = [f"4. Timeline: {TIMELINE_REQUESTS} concurrent pings, d = {TIMELINE_DELAY:g} s (seconds after the first)"]
    for route, bars in bars_by_route.items():
        starts = " ".join(f"{bar['started']:.2f}" for bar in bars)
        lines.append(f"   {route:<15} bodies start at {starts}; last answer at {max(b['received'] for b in bars):.2f}")
    return lines
