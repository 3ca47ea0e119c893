"""Every knob of the app, read once from the environment: field ``x`` of ``Settings`` is ``APP_X``.

A value the app cannot run with stops it at start-up with one line naming the
variable, the value and what is allowed, never mid-request. Handlers reach the
settings through ``settings_of(request)``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import urllib.parse
from collections.abc import Mapping
from typing import Any

from starlette.requests import Request


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    """Numbers must be above 0 unless a field's ``minimum`` says otherwise."""

    max_delay: float = 10.0  # largest ?delay= a ping accepts, seconds
    thread_tokens: int = 40  # AnyIO thread pool size (AnyIO's default)
    upstream_url: str = ""  # universities API base URL; empty = the stand-in, in a child process
    upstream_latency: float = dataclasses.field(default=0.5, metadata={"minimum": 0})  # stand-in's seconds per search
    upstream_timeout: float = 5.0  # seconds for one whole upstream call
    upstream_max_bytes: int = 5_000_000  # largest upstream body accepted
    upstream_connections: int = 100  # per client, and async calls in flight
    upstream_keepalive: float = 5.0  # seconds an idle upstream connection is kept
    max_concurrency: int = 10  # upstream calls in flight per async request
    max_countries: int = 20  # distinct countries per request
    max_country_length: int = 100  # characters in one country name
    max_cpu_n: int = 100_000_000  # largest ?n= a /cpu route accepts (about 10 s)
    process_workers: int = os.cpu_count() or 2  # /cpu/process calls at once
    asyncio_debug: bool = False  # report callbacks that hold the loop too long
    slow_callback: float = 0.1  # seconds that count as too long (asyncio's default)
    max_batch: int = 20  # calls per route in one /batch
    batch_timeout: float = 60.0  # seconds one /batch may run before its calls are cut off
    lag_interval: float = 0.05  # seconds the loop-lag meter sleeps between samples
    block_threshold: float = dataclasses.field(default=0.1, metadata={"minimum": 0})  # seconds held = a block; 0: off
    console: bool = True  # print a start and an end line for every ping and CPU call
    max_chunks: int = 100  # chunks one /stream route may send
    max_db_rows: int = 20_000_000  # rows one /db query may count (about 4 s)

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            if not allowed(field, getattr(self, field.name)):
                raise SettingError(field, getattr(self, field.name))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Settings:
        fields = {field.name: field for field in dataclasses.fields(cls)}
        given = {name: environ[env_name(field)] for name, field in fields.items() if environ.get(env_name(field))}
        try:
            return cls(**{name: parse(fields[name], raw) for name, raw in given.items()})
        except SettingError as bad:
            raise SettingError(bad.field, given[bad.field.name]) from None  # name the text as it was written


class SettingError(ValueError):
    """A setting the app cannot run with; the message names its variable, value and what is allowed."""

    def __init__(self, field: dataclasses.Field[Any], value: Any) -> None:
        super().__init__(f"{env_name(field)}={value!r}: {rule(field)}")
        self.field = field


def env_name(field: dataclasses.Field[Any]) -> str:
    return f"APP_{field.name.upper()}"


BOOLEANS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}


def parse(field: dataclasses.Field[Any], raw: str) -> Any:
    """The field's value from its variable's text, or None (which no field allows) if it cannot be read."""
    try:
        if field.type == "bool":
            return BOOLEANS[raw.lower()]
        return {"int": int, "float": float, "str": str}[str(field.type)](raw)
    except (KeyError, ValueError):
        return None


def rule(field: dataclasses.Field[Any]) -> str:
    """What a field allows, in words."""
    minimum = field.metadata.get("minimum")
    if field.type == "bool":
        return "allowed: 1, true, yes, 0, false or no"
    if field.type == "str":
        return "allowed: an http:// or https:// URL with a host, or empty for the stand-in"
    noun = "a whole number" if field.type == "int" else "a number"
    return f"allowed: {noun} of {minimum} or more" if minimum is not None else f"allowed: {noun} above 0"


def allowed(field: dataclasses.Field[Any], value: Any) -> bool:
    if field.type == "bool":
        return isinstance(value, bool)
    if field.type == "str":
        try:
            url = urllib.parse.urlsplit(value)
            url.port  # noqa: B018 -- raises ValueError when out of range
        except (TypeError, ValueError):
            return False
        return value == "" or (url.scheme in ("http", "https") and bool(re.fullmatch(r"[\w.:-]+", url.hostname or "")))
    if not isinstance(value, int | float) or not math.isfinite(value):
        return False
    minimum = field.metadata.get("minimum")
    return value >= minimum if minimum is not None else value > 0


def settings_of(request: Request) -> Settings:
    """The one way a handler reaches configuration: the lifespan's state, which uvicorn copies into each scope.

    Read from the scope itself: ``request.state.settings`` would build a ``State`` object per request.
    """
    settings: Settings = request.scope["state"]["settings"]
    return settings
