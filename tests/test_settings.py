"""Settings come from the environment once, and a bad value stops the app at start, not mid-request."""

from __future__ import annotations

import pytest

from asgi_app import Settings


def test_environment_overrides_defaults() -> None:
    environ = {"APP_MAX_DELAY": "2.5", "APP_THREAD_TOKENS": "3", "APP_ASYNCIO_DEBUG": "yes", "APP_UPSTREAM_URL": ""}
    settings = Settings.from_env(environ)
    assert (settings.max_delay, settings.thread_tokens, settings.asyncio_debug) == (2.5, 3, True)
    assert settings.upstream_url == ""  # empty means the stand-in
    assert Settings.from_env({}) == Settings()


@pytest.mark.parametrize(
    ("name", "raw", "message"),
    [
        ("APP_THREAD_TOKENS", "many", "APP_THREAD_TOKENS='many' is not a valid int"),
        ("APP_ASYNCIO_DEBUG", "maybe", "APP_ASYNCIO_DEBUG='maybe' is not a valid bool"),
        ("APP_MAX_DELAY", "nan", "max_delay must be a positive number"),
        ("APP_MAX_CONCURRENCY", "0", "max_concurrency must be a positive number"),
        ("APP_UPSTREAM_LATENCY", "-1", "upstream_latency must be a positive number"),
    ],
)
def test_bad_environment_value_is_refused_at_start(name: str, raw: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Settings.from_env({name: raw})


def test_zero_upstream_latency_is_allowed() -> None:
    assert Settings.from_env({"APP_UPSTREAM_LATENCY": "0"}).upstream_latency == 0
