"""TimingMiddleware: both headers on every HTTP response, nothing else touched."""

from __future__ import annotations

import re
from typing import Any

import anyio
import httpx
import pytest
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from asgi_app import TimingMiddleware, build_starlette, with_middleware
from plumbing.settings import Settings
from tests.utils import ClientFn

# W3C Server-Timing: metric-name *( ";" param ), a metric name being an RFC 9110 token.
SERVER_TIMING = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+;dur=(\d+(?:\.\d+)?)$")


def timing_headers(response: httpx.Response) -> tuple[float, float]:
    """(X-Process-Time in seconds, Server-Timing dur in seconds), each present exactly once."""
    assert response.headers.get_list("x-process-time") == [response.headers["x-process-time"]]
    assert response.headers.get_list("server-timing") == [response.headers["server-timing"]]
    match = SERVER_TIMING.match(response.headers["server-timing"])
    assert match, response.headers["server-timing"]
    return float(response.headers["x-process-time"]), float(match.group(1)) / 1000


async def boom(request: Request) -> None:
    raise RuntimeError("secret internals")


@pytest.fixture
def app_with_failing_route() -> Any:
    inner = build_starlette(Settings())
    inner.router.routes.append(Route("/boom", boom))  # a fault injected for the test only
    return with_middleware(inner)


@pytest.mark.parametrize(
    ("path", "status"),
    [("/ping/async?delay=0", 200), ("/ping/async?delay=x", 400), ("/nowhere", 404), ("/boom", 500)],
)
async def test_every_response_carries_both_timing_headers(
    client_for: ClientFn, app_with_failing_route: Any, path: str, status: int
) -> None:
    client = await client_for(app=app_with_failing_route)
    response = await client.get(path)
    assert response.status_code == status, response.text
    assert "detail" in response.json() or status == 200
    seconds, dur = timing_headers(response)
    assert seconds >= 0
    assert dur == pytest.approx(seconds, abs=1e-3)


async def test_unexpected_error_is_json_without_traceback(client_for: ClientFn, app_with_failing_route: Any) -> None:
    client = await client_for(app=app_with_failing_route)
    response = await client.get("/boom")
    assert response.status_code == 500
    assert response.json() == {"detail": "Internal Server Error"}
    assert "secret" not in response.text
    after = await client.get("/healthz")
    assert after.status_code == 200, after.text


async def test_method_not_allowed_is_json_and_keeps_allow_header(client: httpx.AsyncClient) -> None:
    response = await client.post("/ping/async")
    assert response.status_code == 405
    assert response.json() == {"detail": "Method Not Allowed"}
    assert "GET" in response.headers["allow"]
    timing_headers(response)


async def test_process_time_tracks_the_delay(client: httpx.AsyncClient) -> None:
    short, _ = timing_headers(await client.get("/ping/async?delay=0.05"))
    long, _ = timing_headers(await client.get("/ping/async?delay=0.5"))
    # uvloop's timers tick in milliseconds, so a sleep may end up to 1 ms early.
    assert short >= 0.05 - 0.002
    assert long >= 0.5 - 0.002
    assert long / short > 4  # ideal 10; wide enough for a busy machine


async def run_asgi(app: Any, scope: Scope) -> list[Message]:
    sent: list[Message] = []
    requests = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> Message:
        if requests:
            return requests.pop()
        await anyio.sleep_forever()  # the client never disconnects
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        sent.append(message)

    await TimingMiddleware(app)(scope, receive, send)
    return sent


@pytest.mark.parametrize("scope_type", ["lifespan", "websocket"])
async def test_non_http_scopes_pass_through_untouched(scope_type: str) -> None:
    seen: list[tuple[Scope, Receive, Send]] = []

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append((scope, receive, send))
        await send({"type": "marker"})

    scope: Scope = {"type": scope_type}
    sent = await run_asgi(inner, scope)
    assert seen[0][0] is scope
    assert sent == [{"type": "marker"}]  # the original send, no headers added


async def test_existing_timing_headers_are_replaced_not_repeated() -> None:
    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"x-process-time", b"99"), (b"server-timing", b"app;dur=99000")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    sent = await run_asgi(inner, {"type": "http", "method": "GET", "path": "/"})
    names = [name for name, _ in sent[0]["headers"]]
    assert names.count(b"x-process-time") == 1
    assert names.count(b"server-timing") == 1
    assert dict(sent[0]["headers"])[b"x-process-time"] != b"99"


async def test_streaming_response_is_timed_to_its_headers_not_its_body() -> None:
    async def chunks() -> Any:
        for _ in range(3):
            await anyio.sleep(0.1)
            yield b"chunk"

    sent = await run_asgi(StreamingResponse(chunks()), {"type": "http", "method": "GET", "path": "/"})
    assert [m["type"] for m in sent].count("http.response.start") == 1
    assert b"".join(m.get("body", b"") for m in sent) == b"chunk" * 3
    # Timed to its body it would say 0.3 s or more: the three chunks take that long.
    assert float(dict(sent[0]["headers"])[b"x-process-time"]) < 0.3


async def test_every_json_body_ends_with_a_newline(client: httpx.AsyncClient) -> None:
    for path in ("/", "/ping/async?delay=0", "/ping/async?delay=x", "/nowhere", "/healthz", "/upstream/stats"):
        response = await client.get(path)
        assert response.headers["content-type"] == "application/json", path
        assert response.text.endswith("}\n") or response.text.endswith("]\n"), (path, response.text)


async def test_index_lists_every_route_the_app_serves(client: httpx.AsyncClient) -> None:
    routes = build_starlette(Settings()).routes
    listed = {route["path"] for route in (await client.get("/")).json()["routes"]}
    served = {route.path for route in routes if hasattr(route, "endpoint") and route.path != "/"}
    mounted = {f"{mount.path}{route.path}" for mount in routes if hasattr(mount, "routes") for route in mount.routes}
    assert listed == served | mounted
