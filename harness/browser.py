"""Finding and starting Chromium for the browser tests and the screenshot script (Playwright drives it)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

SYSTEM_CHROMIUMS = ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome")
# Quiet and quick: no GPU, no update or sync traffic, nothing fetched behind the test's back.
CHROMIUM_FLAGS = [
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
HOW_TO_GET_ONE = (
    "no Chromium: install one (Debian: apt-get install -y chromium; or python -m playwright install chromium)"
)


def system_chromium() -> str | None:
    for name in SYSTEM_CHROMIUMS:
        path = shutil.which(name)
        if path:
            return path
    return None


def launch_chromium(playwright: Any) -> Any:
    """The system's Chromium if there is one, else Playwright's own; raises if neither starts."""
    flags = CHROMIUM_FLAGS + (["--no-sandbox"] if os.geteuid() == 0 else [])  # root cannot use the sandbox
    executable = system_chromium()
    if executable is None and not Path(playwright.chromium.executable_path).exists():
        raise FileNotFoundError(HOW_TO_GET_ONE)
    return playwright.chromium.launch(executable_path=executable, args=flags)
