"""The four charts of one stack's results, drawn with matplotlib (a benchmark requirement)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.load import THROUGHPUT_PATH
from bench.measure import PING_DELAY, TIMELINE_DELAY, TIMELINE_REQUESTS
from bench.variants import VARIANTS

COLORS = {"sync": "tab:red", "async": "tab:blue", "blocking": "tab:red", "thread": "tab:green"}


def plot(results: dict[str, Any], latency: float, stack: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 2, figsize=(15, 10))
    plot_fanout(axes[0][0], results["fanout"], latency)
    plot_concurrency(axes[0][1], results["concurrency"])
    plot_throughput(axes[1][0], results["throughput"])
    plot_timeline(axes[1][1], results["timeline"])
    figure.suptitle(f"Blocking, awaiting and timing in a Starlette app (uvicorn, one worker, {stack})", fontsize=14)
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
    ax.barh([VARIANTS[name][-1] for name in names], values, color=colors)
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
