"""The README and the docs cannot drift from the app: every curl names a route, every APP_* name a setting."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from starlette.routing import Mount, Route

from asgi_app import build_starlette
from harness.servers import REPO
from plumbing.settings import Settings, env_name

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LOCAL_URL = re.compile(r"http://127\.0\.0\.1:8000(/[^\s'\"?&)`]*)")
SETTING = re.compile(r"\bAPP_[A-Z][A-Z_]*\b")


def routes_of_the_app() -> set[str]:
    paths = set()
    for route in build_starlette(Settings()).routes:
        if isinstance(route, Route):
            paths.add(route.path)
        elif isinstance(route, Mount):  # the page's files: every file the mount serves
            paths |= {f"{route.path}/{file.name}" for file in (REPO / "static").iterdir()}
    return paths


def curl_paths(text: str) -> list[str]:
    return [path for line in text.splitlines() if "curl " in line for path in LOCAL_URL.findall(line)]


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_curl_names_a_route_of_the_app(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    unknown = sorted(set(curl_paths(text)) - routes_of_the_app())
    assert unknown == [], f"{page.name} curls paths the app does not serve: {unknown}"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_app_variable_named_is_a_setting(page: Path) -> None:
    settings = {env_name(field) for field in dataclasses.fields(Settings)}
    unknown = sorted(set(SETTING.findall(page.read_text(encoding="utf-8"))) - settings)
    assert unknown == [], f"{page.name} names variables the app does not read: {unknown}"


def test_the_checks_above_can_fail() -> None:
    assert curl_paths("curl 'http://127.0.0.1:8000/ping/nowhere?delay=1'") == ["/ping/nowhere"]
    assert "/ping/nowhere" not in routes_of_the_app()
    assert "/ping/blocking" in routes_of_the_app() and "/static/page.js" in routes_of_the_app()


def test_every_page_is_linked_from_the_readme_and_every_link_leads_somewhere() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert {f"docs/{page.name}" for page in PAGES[1:]} <= set(re.findall(r"\]\((docs/[\w.-]+\.md)\)", readme))
    for page in PAGES:
        for target in re.findall(r"\]\(([\w./-]+?)(?:#[\w-]+)?\)", page.read_text(encoding="utf-8")):
            assert (page.parent / target).exists(), f"{page.name} links to {target}, which is not there"
