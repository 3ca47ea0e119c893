"""Whatever a client puts in the query string, the answer is a 2xx or a 4xx JSON error, promptly."""

from __future__ import annotations

import json
from collections.abc import Iterator
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asgi_app import create_app
from harness.servers import running_server
from plumbing.clients import tls_context
from plumbing.settings import Settings

ROUTE_PARAMETERS = {
    "/": [],
    "/healthz": [],
    "/ping/blocking": ["delay"],
    "/ping/async": ["delay"],
    "/ping/thread": ["delay"],
    "/cpu/blocking": ["n"],
    "/cpu/thread": ["n"],
    "/cpu/process": ["n"],
    "/universities/sync": ["country"],
    "/universities/async": ["country", "max_concurrency"],
    "/universities/gather": ["country"],
    "/ping/until-gone": ["delay"],
    "/background": ["delay"],
    "/stream/thread": ["chunks", "delay"],
    "/stream/blocking": ["chunks", "delay"],
    "/stream/async": ["chunks", "delay"],
    "/db/blocking": ["rows"],
    "/db/thread": ["rows"],
    "/db/to-thread": ["rows"],
    "/upstream/search": ["country", "name", "name_contains", "domain", "offset", "limit"],
    "/upstream/stats": [],
}
# Small limits keep every accepted request quick; the parsing is the same.
FUZZ_SETTINGS = Settings(max_delay=0.01, max_cpu_n=10_000, upstream_latency=0, max_chunks=3, max_db_rows=10_000)


@pytest.fixture(scope="module")
def fuzz_client() -> Iterator[httpx.Client]:
    with (
        running_server(create_app(FUZZ_SETTINGS)) as base,
        httpx.Client(base_url=base, timeout=10, verify=tls_context()) as client,
    ):
        yield client
        assert client.get("/healthz").status_code == 200


def percent_encoded(data: bytes) -> str:
    return "".join(f"%{byte:02X}" for byte in data)  # any bytes at all, UTF-8 or not


NUMBERISH = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.sampled_from(["", " ", "0", "1", "-0", "1e309", "0x10", "1_0", "٣", "²", "9" * 5000, "nan", "Infinity"]),
)
# Every code point UTF-8 can carry (all but the surrogates): the set text() draws from by default, named
# here so Hypothesis does not work it out by encoding all 1.1 million code points on a fresh checkout.
ANY_CHARACTER = st.characters(exclude_categories=["Cs"])
VALUES = st.one_of(
    NUMBERISH.map(lambda text: quote(text, safe="")),
    st.text(ANY_CHARACTER, max_size=200).map(lambda text: quote(text, safe="")),
    st.binary(max_size=100).map(percent_encoded),
    st.sampled_from(["%", "%G1", "%FF%FE", "%00", "%0D%0A", "a=b", "&", "=", "+", "%2B"]),
)


@st.composite
def queries(draw: st.DrawFn) -> tuple[str, str]:
    route = draw(st.sampled_from(sorted(ROUTE_PARAMETERS)))
    names = st.sampled_from(ROUTE_PARAMETERS[route] + ["x", "", "delay[]"])
    pairs = draw(st.lists(st.tuples(names, VALUES), max_size=25))
    query = "&".join(f"{name}={value}" if draw(st.booleans()) else f"{name}{value}" for name, value in pairs)
    return route, query[:8000]  # well inside what uvicorn accepts before the app sees anything


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request=queries())
def test_any_query_is_answered_with_2xx_or_json_4xx(fuzz_client: httpx.Client, request: tuple[str, str]) -> None:
    route, query = request
    response = fuzz_client.get(httpx.URL(route, query=query.encode("ascii")))
    assert response.status_code < 500, (route, query, response.text)
    if response.status_code < 400 and route.startswith("/stream/"):
        assert all(json.loads(line) for line in response.text.splitlines())  # one JSON object per chunk
        return
    body = response.json()
    if response.status_code >= 400:
        assert isinstance(body, dict) and isinstance(body["detail"], str), body
