"""Writes docs/timeline.png: the page after a side-by-side batch, drawn by Chromium.

    python docs/screenshot.py             # 1280 px wide, the README's picture
    python docs/screenshot.py --width 390 # what a phone shows

It starts the app on a free loopback port, presses the two side-by-side
buttons (sync next to async fan-out, then blocking next to async pings), waits
for each reading, and photographs them with the loop-lag meter above.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from playwright.sync_api import sync_playwright  # noqa: E402

from asgi_app import create_app  # noqa: E402
from harness.browser import launch_chromium  # noqa: E402
from harness.servers import running_server  # noqa: E402
from plumbing.settings import Settings  # noqa: E402

SIDE_BY_SIDE = (
    "Run /universities/sync and /universities/async side by side",
    "Run /ping/blocking and /ping/async side by side",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "timeline.png")
    parser.add_argument("--full-page", action="store_true", help="the whole page, not just the side-by-side card")
    args = parser.parse_args()
    with running_server(create_app(Settings())) as base, sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        page = browser.new_page(viewport={"width": args.width, "height": 900}, device_scale_factor=1)
        page.goto(base)
        page.get_by_text("loop lag now").wait_for()
        page.request.get(f"{base}/upstream/stats")  # the stand-in starts on first use: not in the picture
        for name in SIDE_BY_SIDE:  # one after the other: a blocking ping would freeze the fan-out too
            card = page.locator("form.lesson", has=page.get_by_role("button", name=name, exact=True))
            card.get_by_role("button", name=name, exact=True).click()
            card.get_by_role("status").filter(has_text="The whole batch took").wait_for(timeout=30_000)
        page.wait_for_timeout(600)  # one more lag poll, so the meter shows the spikes
        if args.full_page:
            page.screenshot(path=args.out, full_page=True)
        else:
            # From the lag meter to the last card run, in page coordinates, whatever the scroll.
            top, bottom = page.evaluate(
                """(last) => {
                    const rect = (el) => el.getBoundingClientRect();
                    const card = [...document.querySelectorAll("form.lesson")].find((f) => f.textContent.includes(last));
                    return [rect(document.querySelector("#lag")).top + scrollY - 8, rect(card).bottom + scrollY + 8];
                }""",
                SIDE_BY_SIDE[-1],
            )
            page.screenshot(
                path=args.out, full_page=True, clip={"x": 0, "y": top, "width": args.width, "height": bottom - top}
            )
        browser.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
