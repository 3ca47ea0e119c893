"""Reading a route's query parameters: a value it can use, or a 400 that names the parameter.

Every reader checks the whole value before anything runs, so a bad ``?delay=``
never starts a sleep and a bad ``?country=`` never reaches the upstream. The
limits come from the settings (``APP_MAX_DELAY`` and the rest).
"""

from __future__ import annotations

import math
import unicodedata
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request

from plumbing.settings import settings_of

# The articles' three countries, spelled as the data spells them: it says Turkiye, and "turkey" finds nothing.
DEFAULT_COUNTRIES = ("turkiye", "india", "australia")


def read_number(
    request: Request, name: str, *, kind: type[int | float], default: float, high: float, unit: str = ""
) -> Any:
    """One ``?name=`` value from 0 (1 for whole numbers) to ``high``; anything else is a 400."""
    values = request.query_params.getlist(name)
    if not values:
        return kind(min(default, high))  # a lowered maximum lowers the default with it
    if len(values) > 1:
        raise HTTPException(400, f"{name} given {len(values)} times; give it once")
    noun, low = ("number", 0) if kind is float else ("whole number", 1)
    try:
        value = kind(values[0])
    except ValueError:
        raise HTTPException(400, f"{name} must be a {noun}{' of ' + unit if unit else ''}, got {values[0]!r}") from None
    # isfinite() of an int too large for a float raises OverflowError: only floats need the check.
    if (kind is float and not math.isfinite(value)) or not low <= value <= high:
        limit = f"{high:g}" if kind is float else str(high)
        raise HTTPException(
            400, f"{name} must be between {low} and {limit}{' ' + unit if unit else ''}, got {values[0]!r}"
        )
    return value


def read_delay(request: Request) -> float:
    max_delay = settings_of(request).max_delay
    return read_number(request, "delay", kind=float, default=1.0, high=max_delay, unit="seconds")


def read_n(request: Request) -> int:
    return read_number(request, "n", kind=int, default=5_000_000, high=settings_of(request).max_cpu_n)


def read_rows(request: Request) -> int:
    return read_number(request, "rows", kind=int, default=2_000_000, high=settings_of(request).max_db_rows)


def read_chunks(request: Request) -> int:
    return read_number(request, "chunks", kind=int, default=5, high=settings_of(request).max_chunks)


def read_max_concurrency(request: Request) -> int:
    """``?max_concurrency=`` may lower the fan-out's bound, never raise it past ``APP_MAX_CONCURRENCY``."""
    ceiling = settings_of(request).max_concurrency
    return read_number(request, "max_concurrency", kind=int, default=ceiling, high=ceiling)


def read_countries(request: Request) -> list[str]:
    """Distinct ``?country=`` values in order (case-insensitively), or the articles' three."""
    settings = settings_of(request)
    countries: dict[str, str] = {}
    for raw in request.query_params.getlist("country"):
        country = raw.strip()
        if not country or len(country) > settings.max_country_length:
            raise HTTPException(400, f"country must be 1 to {settings.max_country_length} characters, got {raw!r}")
        if any(unicodedata.category(char) == "Cc" for char in country):
            raise HTTPException(400, f"country must not contain control characters, got {raw!r}")
        countries.setdefault(country.casefold(), country)
    if len(countries) > settings.max_countries:
        raise HTTPException(400, f"at most {settings.max_countries} countries per request, got {len(countries)}")
    return list(countries.values()) or list(DEFAULT_COUNTRIES)
