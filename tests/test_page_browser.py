"""The live page in a real Chromium: what a reader sees when they press the buttons.

Skipped, with one line saying how to get a browser, where there is no Chromium;
``REQUIRE_BROWSER=1`` (CI sets it) turns that skip into a failure.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from asgi_app import create_app
from harness.browser import HOW_TO_GET_ONE, launch_chromium
from harness.servers import line_of, running_server, uvicorn_process
from plumbing.settings import Settings
from tests.utils import peak_in_flight

if TYPE_CHECKING:
    from playwright.sync_api import Page

TOOK = re.compile(r"took (\d+(?:\.\d+)?) s")
SPAN = re.compile(r"(blocking|async) #\d: started (-?[\d.]+) s, finished ([\d.]+) s")
BLOCKING_LINE = "time.sleep(delay)  # blocks the event loop"
WORST_LAG = re.compile(r"worst in the last \d+ s: (\d+) ms")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One Chromium per xdist worker that runs these tests: starting it is most of a test's cost.

    Playwright is imported here, so the processes that run no page test never load it.
    """
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:  # the package is pinned in requirements.txt; a bare environment may lack it
        why = "playwright is not installed: pip install -r requirements.txt"
    else:
        with sync_playwright() as playwright:
            try:
                chromium = launch_chromium(playwright)
            except Exception as exc:  # no executable, or one that cannot start here
                why = f"{HOW_TO_GET_ONE} ({type(exc).__name__})"
            else:
                yield chromium
                chromium.close()
                return
    if os.environ.get("REQUIRE_BROWSER") == "1":
        pytest.fail(why)
    pytest.skip(why)


@dataclass
class Visit:
    """One page on a fresh server, with everything it requested and every error it logged."""

    page: Page
    base_url: str
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def lesson(self, route: str) -> Any:
        name = f"Run {route}"
        return self.page.locator("form.lesson", has=self.page.get_by_role("button", name=name, exact=True))

    def run(self, route: str, **params: str) -> tuple[float, int]:
        """Fills in the lesson's inputs, presses its button; the announced wall time and the bars drawn."""
        form = self.lesson(route)
        for name, value in params.items():
            form.locator(f"input[name={name}]").fill(value)
        form.get_by_role("button", name=f"Run {route}", exact=True).click()
        status = form.get_by_role("status")
        status.filter(has_text=TOOK).wait_for(timeout=15_000)
        match = TOOK.search(status.inner_text())
        assert match, status.inner_text()
        return float(match.group(1)), form.locator("svg rect.bar").count()

    def worst_lag_ms(self) -> int:
        match = WORST_LAG.search(self.page.locator("#lag-text").inner_text())
        assert match, self.page.locator("#lag-text").inner_text()
        return int(match.group(1))


@pytest.fixture(scope="module")
def tab(browser: Any) -> Iterator[Page]:
    """One tab for the module's tests, each loading the page afresh: a new tab costs a renderer process,
    about 0.7 s of CPU each time. The cache is off, so every load asks the server, as a new reader's does."""
    context = browser.new_context()
    page = context.new_page()
    devtools = context.new_cdp_session(page)
    devtools.send("Network.enable")  # the cache setting holds only while this session watches the network
    devtools.send("Network.setCacheDisabled", {"cacheDisabled": True})
    yield page
    context.close()


@contextlib.contextmanager
def visiting(page: Page, base_url: str) -> Iterator[Visit]:
    """The page at ``base_url``, once its modules ran and the first /healthz answered; left for a blank one."""
    page.set_viewport_size({"width": 1280, "height": 900})
    seen = Visit(page, base_url)
    listeners: dict[str, Callable[[Any], Any]] = {
        "request": lambda request: seen.requests.append(request.url),
        "console": lambda message: message.type == "error" and seen.errors.append(message.text),
        "pageerror": lambda error: seen.errors.append(str(error)),
    }
    for event, listener in listeners.items():
        page.on(event, listener)
    try:
        page.goto(base_url)
        page.get_by_text("loop lag now").wait_for()
        yield seen
    finally:
        for event, listener in listeners.items():
            page.remove_listener(event, listener)
        # Stops the page's polling before its server goes away. A tab too broken for that has already
        # failed this test, and will fail the next one's first step: its error is not the one to report.
        with contextlib.suppress(Exception):
            page.goto("about:blank")


@pytest.fixture(scope="module")
def page_server() -> Iterator[str]:
    """One server for the tests that read only their own lesson's answers (upstream calls of 0.2 s)."""
    with running_server(create_app(Settings(upstream_latency=0.2))) as base_url:
        yield base_url


@pytest.fixture
def visit(tab: Page, page_server: str) -> Iterator[Visit]:
    with visiting(tab, page_server) as seen:
        yield seen


@pytest.fixture
def visit_alone(tab: Page, tmp_path: Path) -> Iterator[Visit]:
    """The page on a server process of its own, for a test that reads what the whole server went through.

    A process, not a thread of this one: here it would share the GIL with Playwright and the test.
    """
    with uvicorn_process(tmp=tmp_path) as server, visiting(tab, server.base_url) as seen:
        yield seen


def test_blocking_pings_run_one_at_a_time_and_async_ones_all_at_once_on_the_page(visit: Visit) -> None:
    # Eight calls: 8x on a quiet machine, and still over 3x when a busy one adds 0.4 s to each batch.
    blocking, blocking_bars = visit.run("/ping/blocking", calls="8", delay="0.2")
    awaiting, async_bars = visit.run("/ping/async", calls="8", delay="0.2")
    assert (blocking_bars, async_bars) == (8, 8)
    assert blocking >= 3 * awaiting, (blocking, awaiting)
    assert "one at a time" in visit.lesson("/ping/blocking").get_by_role("status").inner_text()
    assert "all at once" in visit.lesson("/ping/async").get_by_role("status").inner_text()


def test_lag_meter_rises_during_a_blocking_run_and_names_its_route_and_line(visit_alone: Visit) -> None:
    visit_alone.run("/ping/async", calls="2", delay="0.2")
    visit_alone.page.wait_for_timeout(300)  # one more poll
    idle = visit_alone.worst_lag_ms()
    assert idle < 400  # awaiting left the loop free (a busy test machine adds a little)
    assert visit_alone.page.locator("#lag-plot .lag-bar.named").count() == 0  # no block, nothing named
    visit_alone.run("/ping/blocking", calls="1", delay="0.6")
    page, where = visit_alone.page, f"/ping/blocking at asgi_app.py:{line_of('asgi_app.py', BLOCKING_LINE)}"
    page.wait_for_function(
        "() => /worst in the last \\d+ s: ([5-9]\\d\\d|\\d{4,}) ms, \\/ping\\/blocking at /"
        ".test(document.querySelector('#lag-text').textContent)",
        timeout=5_000,
    )
    assert visit_alone.worst_lag_ms() >= 500  # the whole 0.6 s block, as one spike
    assert page.locator("#lag-text").inner_text().endswith(where)  # the text under the meter names it
    spike = page.locator("#lag-plot .lag-bar.named")
    assert spike.count() == 1
    named = f"GET {where} in ping_blocking: time.sleep(delay)"
    spike.hover()  # on hover, the line under the meter says what held the loop
    assert named in page.locator("#lag-detail").inner_text()
    page.evaluate("document.querySelector('#lag-detail').textContent = ''")
    page.locator("h1").click()  # the keyboard starts from the top of the page
    page.keyboard.press("Tab")  # the spike is the page's first stop for the keyboard
    assert page.evaluate("document.activeElement.classList.contains('named')")
    assert named in page.locator("#lag-detail").inner_text()
    page.wait_for_timeout(300)  # redrawn meanwhile: the reader keeps their place
    assert page.evaluate("document.activeElement.classList.contains('named')")
    assert named in (page.evaluate("document.activeElement.getAttribute('aria-label')") or "")


def test_side_by_side_pings_say_what_the_bars_show(visit: Visit) -> None:
    route = "/ping/blocking and /ping/async side by side"
    visit.run(route, calls="3", delay="0.3")
    form = visit.lesson(route)
    text = form.get_by_role("status").inner_text()
    spans = {"blocking": [], "async": []}
    for title in form.locator("svg rect.bar title").all_text_contents():
        name, started, finished = SPAN.match(title).groups()  # type: ignore[union-attr]
        spans[name].append((float(started), float(finished)))
    # The bars as the tests read them: two calls overlap only if they share more than 5 ms (ran_alone).
    assert "/ping/blocking: 3 calls of 0.3 s took" in text and "one at a time" in text, text
    expected = MANNER.get(peak(spans["async"]), f": at most {peak(spans['async'])} at a time")
    assert re.search(rf"/ping/async: 3 calls of 0\.3 s took [\d.]+ s{re.escape(expected)}[.;]", text), (text, spans)
    # And the reading's own count, on spans that only touch (0.1 ms) or truly overlap (10 ms).
    touching, overlapping = page_peaks(visit.page)
    assert (touching, overlapping) == (1, 2)


MANNER = {1: ": one at a time", 3: ": all at once"}


def peak(spans: list[tuple[float, float]]) -> int:
    """The most bodies running at once, an overlap of 5 ms or less not counted (as ran_alone does)."""
    return peak_in_flight([{"started": start, "finished": max(start, end - 0.005)} for start, end in spans])


def page_peaks(page: Page) -> list[int]:
    """reading.js's own count for two spans that touch for 0.1 ms, and for two that share 10 ms."""
    return page.evaluate(
        """async () => {
            const { peakOverlap } = await import("/static/reading.js");
            const touching = [{ started: 0, finished: 1 }, { started: 0.9999, finished: 2 }];
            const overlapping = [{ started: 0, finished: 1 }, { started: 0.99, finished: 2 }];
            return [peakOverlap(touching), peakOverlap(overlapping)];
        }"""
    )


def test_side_by_side_draws_both_routes_on_one_axis(visit: Visit) -> None:
    route = "/universities/sync and /universities/async side by side"
    form = visit.lesson(route)
    form.get_by_role("button", name=f"Run {route}", exact=True).click()
    status = form.get_by_role("status")
    status.filter(has_text="The whole batch took").wait_for(timeout=15_000)
    text = status.inner_text()
    assert "/universities/sync: 3 countries took" in text and "one after another" in text
    assert "/universities/async: 3 countries took" in text and "all at once" in text
    assert form.locator("svg rect.bar").count() == 2 + 6  # two requests, three upstream calls each
    assert form.locator("svg").count() == 1


def test_page_uses_only_its_own_origin_and_logs_no_error(visit: Visit) -> None:
    visit.run("/cpu/thread", calls="2", n="100000")
    visit.run("/universities/async", country="turkiye, chile")
    assert visit.requests, "no request was recorded"
    foreign = [url for url in visit.requests if not url.startswith(visit.base_url + "/")]
    assert foreign == []
    assert visit.errors == []


def test_page_fits_a_phone_and_runs_from_the_keyboard(visit: Visit) -> None:
    visit.page.set_viewport_size({"width": 390, "height": 844})
    form = visit.lesson("/ping/async")
    form.locator("input[name=delay]").fill("0.1")
    form.locator("input[name=calls]").press("Enter")  # a form: Enter in a field runs it
    form.get_by_role("status").filter(has_text=TOOK).wait_for(timeout=10_000)
    assert form.locator("svg rect.bar").count() == 10
    overflow = visit.page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0, f"{overflow} px of sideways scrolling at 390 px"
    visit.page.keyboard.press("Shift+Tab")  # focus is still on the form, so the reader can go on
    assert visit.page.evaluate("document.activeElement.closest('form') !== null")


def test_json_index_is_unchanged_for_api_clients(visit: Visit) -> None:
    as_json = visit.page.request.get(visit.base_url + "/", headers={"Accept": "application/json"})
    plain = httpx.get(visit.base_url + "/")
    assert as_json.status == 200
    assert as_json.json() == plain.json()
    assert as_json.headers["vary"] == "Accept"
    assert visit.page.locator("h1").inner_text() == "See it happen"  # while the browser got the page


def test_the_sqlite_lesson_draws_the_blocking_driver_one_at_a_time(visit: Visit) -> None:
    route = "/db/blocking and /db/to-thread side by side"
    _, bars = visit.run(route, calls="2", rows="300000")
    text = visit.lesson(route).get_by_role("status").inner_text()
    assert bars == 4
    assert "/db/blocking: 2 calls counting 300,000 rows took" in text and "one at a time" in text, text
