"""An upstream that misbehaves on request: ``GET /<fault>/search?country=...``.

Under ``/storm`` the country is the fault, so one request can meet several.

Served by a real uvicorn on loopback; the app under test points at it with
``upstream_url=f"{base}/<fault>"``. Each fault is one way the public API, or the
network in front of it, has let callers down.
"""

from __future__ import annotations

import json
from urllib.parse import parse_qs

import anyio
from starlette.types import Receive, Scope, Send

JSON = [(b"content-type", b"application/json")]
SLOW = 1.2  # seconds a slow country of /mixed takes
# What /mixed's slow calls became, counted here at the upstream: still running, answered, or hung up on.
MIXED_CALLS = {"in_flight": 0, "answered": 0, "abandoned": 0}


def record(country: str) -> dict[str, object]:
    return {
        "name": f"University of {country}",
        "country": country,
        "alpha_two_code": "XX",
        "state-province": None,
        "domains": ["example.edu"],
        "web_pages": ["https://example.edu/"],
    }


async def faulty_upstream(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return  # no lifespan to speak of
    # uvicorn's send() quietly does nothing once the client has gone, so a fault
    # that streams or waits would go on after its caller gave up: stop it then.
    async with anyio.create_task_group() as group:

        async def stop_on_disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            group.cancel_scope.cancel()

        group.start_soon(stop_on_disconnect)
        await misbehave(scope, send)
        group.cancel_scope.cancel()


async def misbehave(scope: Scope, send: Send) -> None:
    fault = scope["path"].strip("/").split("/")[0]
    country = parse_qs(scope["query_string"].decode("latin-1")).get("country", [""])[0]
    if fault == "storm":  # each country names its own fault: ?country=hang, ?country=reset, ...
        fault = country

    async def answer(body: bytes, status: int = 200, headers: list[tuple[bytes, bytes]] = JSON) -> None:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    if fault == "echo":  # healthy: one record naming the country exactly as it arrived
        await answer(json.dumps([record(country)]).encode())
    elif fault == "duplicates":
        await answer(json.dumps([record(country)] * 3).encode())
    elif fault == "error":
        await answer(b'{"error": "down for maintenance"}', status=503)
    elif fault == "badjson":
        await answer(b'[{"name": "trunc')
    elif fault == "notutf8":
        await answer(b'[{"name": "\xff\xfe"}]')
    elif fault == "schema":
        broken = record(country) | {"domains": "example.edu"}  # a string where a list belongs
        await answer(json.dumps([broken]).encode())
    elif fault == "notalist":
        await answer(json.dumps({"results": [record(country)]}).encode())
    elif fault == "huge":  # announces its 1 MB body honestly
        await answer(b"[" + b" " * 1_000_000 + b"]", headers=JSON + [(b"content-length", b"1000002")])
    elif fault == "endless":  # no content-length and, as far as a client can tell, no end
        await send({"type": "http.response.start", "status": 200, "headers": JSON})
        for _ in range(2_000):  # 128 MB at most, so the loop stops by itself
            await send({"type": "http.response.body", "body": b" " * 65_536, "more_body": True})
            await anyio.sleep(0)
    elif fault == "trickle":  # one byte every 0.1 s
        await send({"type": "http.response.start", "status": 200, "headers": JSON})
        for _ in range(600):
            await send({"type": "http.response.body", "body": b" ", "more_body": True})
            await anyio.sleep(0.1)
    elif fault == "reset":  # promises 1000 bytes, sends 10, then drops the connection
        headers = JSON + [(b"content-length", b"1000")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"[" * 10, "more_body": True})
        raise ConnectionResetError("fault injected by the test upstream")
    elif fault == "mixed":  # country "fail" fails at once, any other answers after SLOW seconds
        if country == "fail":
            await answer(b"{}", status=500)
            return
        MIXED_CALLS["in_flight"] += 1
        try:
            await anyio.sleep(SLOW)
            await answer(json.dumps([record(country)]).encode())
            MIXED_CALLS["answered"] += 1
        except anyio.get_cancelled_exc_class():
            MIXED_CALLS["abandoned"] += 1  # the caller hung up before the answer
            raise
        finally:
            MIXED_CALLS["in_flight"] -= 1
    elif fault == "hang":
        await anyio.sleep_forever()
    else:
        await answer(b'{"detail": "unknown fault"}', status=404)
