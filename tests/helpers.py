"""Counting overlap from the server's own start/finish timestamps."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import anyio
import httpx


def start_end_order(records: Sequence[dict[str, Any]]) -> str:
    """'SESE' when the bodies ran one after another, 'SSEE' when they overlapped."""
    events = [(r["started"], 1, "S") for r in records] + [(r["finished"], 0, "E") for r in records]
    return "".join(letter for _, _, letter in sorted(events))  # an end sorts before a start at the same instant


def peak_in_flight(records: Sequence[dict[str, Any]]) -> int:
    """The largest number of endpoint bodies that were running at the same moment."""
    running = peak = 0
    for letter in start_end_order(records):
        running += 1 if letter == "S" else -1
        peak = max(peak, running)
    return peak


async def get_all(client: httpx.AsyncClient, urls: Sequence[str]) -> tuple[list[httpx.Response], float]:
    """Sends every GET at once; returns the responses in order and the wall time."""
    responses: list[httpx.Response | None] = [None] * len(urls)

    async def get(index: int, url: str) -> None:
        responses[index] = await client.get(url)

    began = time.perf_counter()
    async with anyio.create_task_group() as group:
        for index, url in enumerate(urls):
            group.start_soon(get, index, url)
    elapsed = time.perf_counter() - began
    return [r for r in responses if r is not None], elapsed


def json_records(responses: Sequence[httpx.Response]) -> list[dict[str, Any]]:
    for response in responses:
        assert response.status_code == 200, response.text
    return [response.json() for response in responses]
