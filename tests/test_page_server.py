"""What the live page needs from the server: one URL for two audiences, its files, and the loop-lag meter."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from harness.servers import open_client, uvicorn_process
from live_page import prefers_html

BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"


@pytest.mark.parametrize(
    ("accept", "html"),
    [
        (BROWSER_ACCEPT, True),
        ("text/html", True),
        ("application/json;q=0.5, text/html", True),
        ("*/*", False),  # curl, httpx
        ("", False),
        ("application/json", False),
        ("text/html;q=0.5, application/json", False),
        ("text/*;q=0.9, */*", False),
        ("text/html;q=0, */*", False),
        ("text/html;q=abc", False),
        ("text/html;q=nan, application/json;q=0.1", False),
        (";;;,,,q=", False),
    ],
)
def test_html_only_when_accept_ranks_it_above_json(accept: str, html: bool) -> None:
    assert prefers_html(accept) is html


async def test_browser_gets_the_page_and_json_clients_the_unchanged_index(client: httpx.AsyncClient) -> None:
    page = await client.get("/", headers={"Accept": BROWSER_ACCEPT})
    default = await client.get("/")
    as_json = await client.get("/", headers={"Accept": "application/json"})
    assert page.status_code == 200, page.text
    assert page.headers["content-type"].startswith("text/html")
    assert '<script type="module"' in page.text
    assert as_json.status_code == 200, as_json.text
    assert as_json.json() == default.json()
    assert [route["path"] for route in as_json.json()["routes"]][:3] == [
        "/ping/blocking",
        "/ping/async",
        "/ping/thread",
    ]
    for response in (page, default, as_json):
        assert response.headers["vary"] == "Accept"


@pytest.mark.parametrize(
    ("path", "kind"),
    [("/static/index.html", "text/html"), ("/static/page.css", "text/css"), ("/static/batch.js", "javascript")],
)
async def test_the_page_files_are_served_by_the_app(client: httpx.AsyncClient, path: str, kind: str) -> None:
    response = await client.get(path)
    assert response.status_code == 200, response.text
    assert kind in response.headers["content-type"]


async def test_a_missing_page_file_is_a_json_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/static/nothing.js")
    assert response.status_code == 404, response.text
    assert response.json() == {"detail": "Not Found"}


async def lag(client: httpx.AsyncClient) -> dict[str, float]:
    response = await client.get("/healthz")
    assert response.status_code == 200, response.text
    return response.json()["loop_lag"]


def lags_between(report: dict[str, Any], began: float, ended: float) -> list[float]:
    """The lags of the samples the meter took between two Unix times."""
    return [lag for at, lag in report["samples"] if began <= at <= ended]


async def test_loop_lag_meter_sees_a_blocking_ping_and_not_an_async_one(tmp_path: Path) -> None:
    # A server process of its own: in this process the test's own work would share the GIL and add lag.
    with uvicorn_process(tmp=tmp_path) as server:
        async with open_client(server.base_url) as client:
            with anyio.fail_after(2):  # the server may be younger than one interval
                while not (idle := await lag(client))["samples"]:
                    await anyio.sleep(0.05)
            windows = {}
            for route in ("/ping/async", "/ping/blocking"):
                began = time.time()
                response = await client.get(f"{route}?delay=0.6")
                assert response.status_code == 200, response.text
                windows[route] = (began, time.time())
            # The block's late wake-up may be recorded after its answer has left (seen in CI), so wait
            # for a sample taken after the answer came: the meter wakes one time after another, so the
            # late wake-up is in that report too.
            with anyio.fail_after(2):
                while not lags_between(after := await lag(client), windows["/ping/blocking"][1], time.time()):
                    await anyio.sleep(0.05)
            reported = time.time()
    assert idle["interval"] == 0.05
    # 0.6 s of awaiting: the meter kept waking every 0.05 s (12 times on a quiet machine), never as late
    # as a blocked loop makes it.
    during_async = lags_between(after, *windows["/ping/async"])
    assert len(during_async) >= 6 and max(during_async) < 0.5, during_async
    # 0.6 s of time.sleep: one wake-up that late, somewhere between the ping's start and the report.
    assert max(lags_between(after, windows["/ping/blocking"][0], reported)) >= 0.5, after["samples"]
    after_blocking = after
    assert after_blocking["recent_max"] == max(lag for _, lag in after_blocking["samples"])
