"""Every bad ?delay= is a 400 with a JSON detail that names the problem."""

from __future__ import annotations

import httpx
import pytest

from tests.utils import ClientFn, error_detail

BAD_DELAYS = ["abc", "", "-1", "-0.001", "nan", "inf", "-inf", "10.001", "1e309", "0x10", "1,5"]


@pytest.mark.parametrize("route", ["/ping/blocking", "/ping/async", "/ping/thread"])
@pytest.mark.parametrize("delay", BAD_DELAYS)
async def test_bad_delay_is_a_400_json_error(client: httpx.AsyncClient, route: str, delay: str) -> None:
    detail = await error_detail(client, route, delay=delay)
    assert "delay" in detail and repr(delay) in detail


@pytest.mark.parametrize("route", ["/ping/blocking", "/ping/async", "/ping/thread"])
async def test_repeated_delay_is_a_400_json_error(client: httpx.AsyncClient, route: str) -> None:
    response = await client.get(f"{route}?delay=0&delay=0")
    assert response.status_code == 400, response.text
    assert response.json() == {"detail": "delay given 2 times; give it once"}


async def test_max_delay_is_a_setting(client_for: ClientFn) -> None:
    client = await client_for(max_delay=0.5)
    assert "between 0 and 0.5 seconds" in await error_detail(client, "/ping/async?delay=0.6")
    at_limit = await client.get("/ping/async?delay=0.5")
    assert at_limit.status_code == 200, at_limit.text


@pytest.mark.parametrize("delay", ["0", "0.0", "1e-3", " 0.01 "])
async def test_edge_delays_are_accepted(client: httpx.AsyncClient, delay: str) -> None:
    response = await client.get("/ping/async", params={"delay": delay})
    assert response.status_code == 200, response.text
    assert response.json()["delay"] == float(delay)


BAD_COUNTRY_QUERIES = {
    "empty": ("country=", "country must be 1 to 100 characters"),
    "blank": ("country=%20%20", "country must be 1 to 100 characters"),
    "overlong": ("country=" + "x" * 101, "country must be 1 to 100 characters"),
    "control": ("country=tur%00key", "control characters"),
    "newline": ("country=turkiye%0Aindia", "control characters"),
    "too many": ("&".join(f"country=c{i}" for i in range(21)), "at most 20 countries per request, got 21"),
    "bound zero": ("max_concurrency=0", "max_concurrency must be"),
    "bound too high": ("max_concurrency=11", "max_concurrency must be"),
    "bound text": ("max_concurrency=two", "max_concurrency must be"),
    "bound superscript": ("max_concurrency=%C2%B2", "max_concurrency must be"),
    "bound twice": ("max_concurrency=1&max_concurrency=2", "max_concurrency given 2 times"),
}


@pytest.mark.parametrize(("query", "message"), BAD_COUNTRY_QUERIES.values(), ids=BAD_COUNTRY_QUERIES.keys())
async def test_bad_universities_query_is_a_400_json_error(client: httpx.AsyncClient, query: str, message: str) -> None:
    route = "/universities/async" if "max_concurrency" in query else "/universities/sync"
    assert message in await error_detail(client, f"{route}?{query}")


async def test_twenty_distinct_countries_are_accepted(client_for: ClientFn) -> None:
    client = await client_for(upstream_latency=0)
    query = "&".join(f"country=c{i % 20}" for i in range(40))  # 40 given, 20 distinct
    response = await client.get(f"/universities/async?{query}")
    assert response.status_code == 200, response.text
    assert len(response.json()["calls"]) == 20


@pytest.mark.parametrize("route", ["/cpu/blocking", "/cpu/thread", "/cpu/process"])
@pytest.mark.parametrize(
    ("n", "message"),
    [
        ("abc", "n must be a whole number, got 'abc'"),
        ("1.5", "n must be a whole number, got '1.5'"),
        ("1e6", "n must be a whole number, got '1e6'"),
        ("", "n must be a whole number, got ''"),
        ("0", "n must be between 1 and 100000000, got '0'"),
        ("-5", "n must be between 1 and 100000000, got '-5'"),
        ("100000001", "n must be between 1 and 100000000, got '100000001'"),
        ("9" * 5000, "n must be a whole number"),  # past int()'s digit limit
        ("9" * 4000, "n must be between 1 and 100000000"),  # an int, but too large for a float
    ],
)
async def test_bad_cpu_size_is_a_400_json_error(client: httpx.AsyncClient, route: str, n: str, message: str) -> None:
    assert (await error_detail(client, route, n=n)).startswith(message)
