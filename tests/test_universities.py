"""Universities fan-out: sequential calls add up, concurrent calls overlap within a bound."""

from __future__ import annotations

import gc
import warnings
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from starlette.requests import Request

from asgi_app import create_app
from harness.servers import open_client, running_server
from live_page import own_address
from plumbing.settings import Settings
from tests.utils import BOTH_STACKS, ClientFn, peak_in_flight, start_end_order

LATENCY = 0.3  # long beside the work around each call, which a loaded machine stretches
TWELVE = ["turkiye", "india", "australia", "germany", "france", "japan", "canada", "brazil", "italy", "spain",
          "netherlands", "new zealand"]  # fmt: skip


@pytest.fixture(scope="module")
def quick_url() -> Iterator[str]:
    """One server for the module's tests that read only their own answers: a stand-in with no latency."""
    with running_server(create_app(Settings(upstream_latency=0))) as base:
        yield base


@pytest.fixture
async def quick(quick_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with open_client(quick_url) as client:
        yield client


async def served(client: httpx.AsyncClient) -> int:
    """Searches the server's stand-in has answered so far."""
    return int((await get_ok(client, "/upstream/stats"))["served"])


async def get_ok(client: httpx.AsyncClient, url: str, **kwargs: Any) -> dict[str, Any]:
    response = await client.get(url, **kwargs)
    assert response.status_code == 200, response.text
    return response.json()


@BOTH_STACKS
async def test_sync_route_takes_the_sum_async_route_the_slowest(client_for: ClientFn) -> None:
    client = await client_for(upstream_latency=LATENCY)
    await get_ok(client, "/upstream/stats")  # the stand-in's process starts on first use: not timed
    sync = await get_ok(client, "/universities/sync")
    concurrent = await get_ok(client, "/universities/async")
    for body in (sync, concurrent):
        assert [c["country"] for c in body["calls"]] == ["turkiye", "india", "australia"]
        assert [c["count"] for c in body["calls"]] == [188, 475, 59]  # the real data set's counts
        assert set(body["universities"]) == {"turkiye", "india", "australia"}
    assert start_end_order(sync["calls"]) == "SESESE"
    assert peak_in_flight(concurrent["calls"]) == 3
    assert sync["elapsed"] / LATENCY > 2.5  # ideal 3: the sum of three calls
    # From first call out to last answer in: the handler's own work (decoding 700-odd records),
    # which a busy machine stretches, stays out of these ratios.
    assert span(concurrent["calls"]) / LATENCY < 2  # ideal 1: the slowest call
    assert span(sync["calls"]) / span(concurrent["calls"]) > 1.5  # ideal 3; the counts above are the proof


def span(calls: list[dict[str, Any]]) -> float:
    return max(call["finished"] for call in calls) - min(call["started"] for call in calls)


async def test_records_have_the_public_api_schema(quick: httpx.AsyncClient) -> None:
    body = await get_ok(quick, "/universities/async", params={"country": "India"})
    records = body["universities"]["India"]
    keys = {"name", "country", "alpha_two_code", "state-province", "domains", "web_pages"}
    assert records and all(set(r) == keys and r["country"] == "India" for r in records)
    direct = await get_ok(quick, "/upstream/search", params={"country": "INDIA"})
    assert direct == records


@pytest.mark.parametrize(("countries", "bound", "waves"), [(6, 2, 3), (12, 10, 2)])
async def test_async_fanout_never_exceeds_its_bound(
    client_for: ClientFn, countries: int, bound: int, waves: int
) -> None:
    client = await client_for(upstream_latency=LATENCY)
    await get_ok(client, "/upstream/stats")  # the stand-in's process starts on first use: not timed
    body = await get_ok(client, "/universities/async", params={"country": TWELVE[:countries], "max_concurrency": bound})
    stats = await get_ok(client, "/upstream/stats")
    assert body["max_concurrency"] == bound
    assert stats["peak_in_flight"] == bound
    assert stats["served"] == countries
    assert peak_in_flight(body["calls"]) == bound
    assert body["elapsed"] / LATENCY > waves - 0.5  # the bound made waves; the counts above are the proof


async def test_default_bound_is_the_setting(client_for: ClientFn) -> None:
    client = await client_for(upstream_latency=0.1, max_concurrency=4)
    body = await get_ok(client, "/universities/async", params={"country": TWELVE[:8]})
    stats = await get_ok(client, "/upstream/stats")
    too_high = await client.get("/universities/async", params={"max_concurrency": 5})
    assert body["max_concurrency"] == 4
    assert stats["peak_in_flight"] == 4
    assert too_high.status_code == 400, too_high.text


async def test_duplicate_countries_are_fetched_once(quick: httpx.AsyncClient) -> None:
    before = await served(quick)
    query = "country=Turkiye&country=turkiye&country=TURKIYE&country=india"
    body = await get_ok(quick, f"/universities/sync?{query}")
    assert [c["country"] for c in body["calls"]] == ["Turkiye", "india"]
    assert await served(quick) - before == 2


@pytest.mark.parametrize("route", ["/universities/sync", "/universities/async"])
async def test_unknown_country_is_an_empty_list_with_a_hint_when_near_a_known_one(
    quick: httpx.AsyncClient, route: str
) -> None:
    body = await get_ok(quick, route, params={"country": ["Atlantis", "turkey", "korea"]})
    assert body["universities"] == {"Atlantis": [], "turkey": [], "korea": []}
    atlantis, turkey, korea = body["calls"]
    assert atlantis["count"] == 0 and "hint" not in atlantis
    assert turkey["count"] == 0 and turkey["hint"] == "no universities for 'turkey'; did you mean 'Turkiye'?"
    assert "'Korea, Republic of'" in korea["hint"]


async def test_stand_in_matches_country_whole_and_name_at_a_word_start(quick: httpx.AsyncClient) -> None:
    swiss = await get_ok(quick, "/upstream/search", params={"country": "switzerland"})
    partial = await get_ok(quick, "/upstream/search", params={"country": "switz"})
    technical = await get_ok(quick, "/upstream/search", params={"country": "Turkiye", "name": "TECHN"})
    inside = await get_ok(quick, "/upstream/search", params={"country": "Turkiye", "name": "echn"})
    assert len(swiss) == 76 and partial == []
    assert "Middle East Technical University" in {r["name"] for r in technical}
    assert all(r["country"] == "Turkiye" for r in technical) and inside == []


ODD_NAMES = ["Bosnia and Herzegovina", "Trinidad & Tobago", "C#", "why?", "a/b", "Türkiye", "日本", "100%25"]


@pytest.mark.parametrize("route", ["/universities/sync", "/universities/async"])
async def test_country_names_arrive_upstream_intact(client_for: ClientFn, faulty_upstream_url: str, route: str) -> None:
    client = await client_for(upstream_url=f"{faulty_upstream_url}/echo")
    body = await get_ok(client, route, params={"country": ODD_NAMES})
    echoed = {country: records[0]["country"] for country, records in body["universities"].items()}
    assert echoed == {name: name for name in ODD_NAMES}


async def test_duplicate_records_from_upstream_are_dropped(client_for: ClientFn, faulty_upstream_url: str) -> None:
    client = await client_for(upstream_url=f"{faulty_upstream_url}/duplicates")
    body = await get_ok(client, "/universities/async", params={"country": "x"})
    assert len(body["universities"]["x"]) == 1


async def test_forged_host_header_does_not_redirect_the_upstream_call(
    quick: httpx.AsyncClient, faulty_upstream_url: str
) -> None:
    before = await served(quick)
    for route in ("/universities/sync", "/universities/async"):
        headers = {"Host": faulty_upstream_url.removeprefix("http://")}  # a server that would echo
        body = await get_ok(quick, route, params={"country": "japan"}, headers=headers)
        assert "University of Tokyo" in {r["name"] for r in body["universities"]["japan"]}
    assert await served(quick) - before == 2  # both calls reached the stand-in in this server


def test_shutdown_closes_the_shared_clients() -> None:
    app = create_app(Settings(upstream_latency=0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with running_server(app) as base:
            for route in ("/universities/sync", "/universities/async"):
                response = httpx.get(f"{base}{route}", params={"country": "spain"}, timeout=30)
                assert response.status_code == 200, response.text
        del app
        gc.collect()
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []


@pytest.mark.parametrize(
    ("server", "address"),
    [(("127.0.0.1", 8000), "http://127.0.0.1:8000"), (("::1", 8000), "http://[::1]:8000"), (None, None)],
)
def test_own_address_comes_from_the_socket_and_brackets_ipv6(server: Any, address: str | None) -> None:
    scope = {"type": "http", "server": server, "headers": [(b"host", b"elsewhere.example")]}
    assert own_address(Request(scope)) == address
