"""Settings come from the environment once, and a bad value stops the app at start, not mid-request."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys

import pytest

from harness.servers import REPO
from plumbing.settings import SettingError, Settings, env_name


def test_environment_overrides_defaults() -> None:
    environ = {"APP_MAX_DELAY": "2.5", "APP_THREAD_TOKENS": "3", "APP_ASYNCIO_DEBUG": "yes", "APP_UPSTREAM_URL": ""}
    settings = Settings.from_env(environ)
    assert (settings.max_delay, settings.thread_tokens, settings.asyncio_debug) == (2.5, 3, True)
    assert settings.upstream_url == ""  # empty means the stand-in
    assert Settings.from_env({}) == Settings()


BAD_VALUES = [
    ("APP_THREAD_TOKENS", "many", "a whole number above 0"),
    ("APP_THREAD_TOKENS", "0", "a whole number above 0"),
    ("APP_THREAD_TOKENS", "1.5", "a whole number above 0"),
    ("APP_ASYNCIO_DEBUG", "maybe", "1, true, yes, 0, false or no"),
    ("APP_MAX_DELAY", "abc", "a number above 0"),
    ("APP_MAX_DELAY", "nan", "a number above 0"),
    ("APP_MAX_CONCURRENCY", "0", "a whole number above 0"),
    ("APP_UPSTREAM_LATENCY", "-1", "a number of 0 or more"),
    ("APP_UPSTREAM_URL", "ftp://x", "an http:// or https:// URL with a host"),
    ("APP_UPSTREAM_URL", "http://", "an http:// or https:// URL with a host"),
    ("APP_UPSTREAM_URL", "localhost:8000", "an http:// or https:// URL with a host"),
    ("APP_UPSTREAM_URL", "http://[x", "an http:// or https:// URL with a host"),
]


@pytest.mark.parametrize(("name", "raw", "allowed"), BAD_VALUES)
def test_bad_environment_value_is_refused_naming_variable_value_and_rule(name: str, raw: str, allowed: str) -> None:
    with pytest.raises(SettingError) as refused:
        Settings.from_env({name: raw})
    assert str(refused.value) == f"{name}={raw!r}: allowed: {allowed}" + (
        ", or empty for the stand-in" if name == "APP_UPSTREAM_URL" else ""
    )


@pytest.mark.parametrize(
    ("name", "raw", "line"),
    [
        ("APP_THREAD_TOKENS", "0", "asgi_app: APP_THREAD_TOKENS='0': allowed: a whole number above 0"),
        ("APP_MAX_DELAY", "abc", "asgi_app: APP_MAX_DELAY='abc': allowed: a number above 0"),
    ],
)
def test_bad_setting_stops_uvicorn_with_one_line_and_no_traceback(name: str, raw: str, line: str) -> None:
    command = [sys.executable, "-m", "uvicorn", "asgi_app:app", "--port", "0"]
    done = subprocess.run(command, cwd=REPO, env={**os.environ, name: raw}, capture_output=True, text=True, timeout=30)
    assert done.returncode != 0
    assert done.stdout == ""
    assert done.stderr.splitlines() == [line], done.stderr


def test_zero_upstream_latency_is_allowed_and_public_urls_are_accepted() -> None:
    assert Settings.from_env({"APP_UPSTREAM_LATENCY": "0"}).upstream_latency == 0
    for url in ("http://universities.hipolabs.com", "https://example.org/api/", "http://[::1]:8000"):
        assert Settings.from_env({"APP_UPSTREAM_URL": url}).upstream_url == url


def test_settings_built_in_code_are_checked_the_same_way() -> None:
    with pytest.raises(SettingError, match=r"^APP_THREAD_TOKENS=0: allowed: a whole number above 0$"):
        Settings(thread_tokens=0)


def test_the_settings_table_in_the_docs_matches_the_settings_class() -> None:
    reference = (REPO / "docs" / "reference.md").read_text(encoding="utf-8")
    table = reference[reference.index("| variable | default | meaning |") :].split("\n\n", 1)[0]
    rows = dict(re.findall(r"^\| `(APP_\w+)` \| ([^|]+?) \|", table, flags=re.MULTILINE))
    defaults = Settings()
    expected = {}
    for field in dataclasses.fields(Settings):
        value = getattr(defaults, field.name)
        if field.name == "process_workers":
            expected[env_name(field)] = "number of CPUs"  # computed on the machine that runs it
        elif isinstance(value, bool):
            expected[env_name(field)] = f"`{int(value)}`"
        elif value == "":
            expected[env_name(field)] = "empty"
        else:
            expected[env_name(field)] = f"`{value:g}`" if isinstance(value, float) else f"`{value}`"
    assert rows == expected
