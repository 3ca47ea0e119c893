"""Fixtures: a real uvicorn server per test (or per module), clients, and the shared room; and the one
hook that hands the longest modules out first.

What the tests import lives in ``tests/utils.py`` and ``harness/servers.py``, never here.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from starlette.types import ASGIApp

from asgi_app import create_app
from harness.servers import DEFAULT_STACK, join_servers, open_client, running_server
from plumbing.settings import Settings
from tests.faulty_upstream import faulty_upstream
from tests.utils import ClientFn, Room, ServeFn

# The longest modules first. worksteal deals the tests out in this order, a contiguous run per process,
# and idle processes steal from busy ones: long modules start at once instead of being left for last.
LONGEST_FIRST = (
    "test_page_browser.py",
    "test_hardening.py",
    "test_block_finder.py",
    "test_next_questions.py",
    "test_parallelism.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: each module keeps its own order


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest) -> str:
    """The stack the servers of this test run on: the default one unless ``BOTH_STACKS`` says otherwise."""
    return str(getattr(request, "param", DEFAULT_STACK))


@pytest.fixture(scope="session")
def stopping() -> Iterator[list[threading.Thread]]:
    """Servers told to stop after their test, still stopping while the next test runs; all joined at the end."""
    threads: list[threading.Thread] = []
    yield threads
    join_servers(threads)


@pytest.fixture
def serve(stack: str, stopping: list[threading.Thread]) -> Iterator[ServeFn]:
    """``serve(thread_tokens=2)`` starts the app with those settings; ``serve(app=...)`` any app."""
    with contextlib.ExitStack() as servers:

        def start(app: ASGIApp | None = None, **settings: Any) -> str:
            app = app or create_app(Settings(**settings))
            return servers.enter_context(running_server(app, stack=stack, stopping=stopping))

        yield start


@pytest.fixture
async def client_for(serve: ServeFn) -> AsyncIterator[ClientFn]:
    """``await client_for(thread_tokens=2)``: a client of a new server with those settings."""
    async with contextlib.AsyncExitStack() as clients:

        async def connect(**settings: Any) -> httpx.AsyncClient:
            return await clients.enter_async_context(open_client(serve(**settings)))

        yield connect


@pytest.fixture(scope="module")
def base_url(stack: str) -> Iterator[str]:
    """The app with default settings, shared by a module's tests that change no state."""
    with running_server(create_app(Settings()), stack=stack) as base:
        yield base


@pytest.fixture
async def client(base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with open_client(base_url) as client:
        yield client


@pytest.fixture(scope="module")
def faulty_upstream_url() -> Iterator[str]:
    """The misbehaving upstream of ``tests/faulty_upstream.py``, served for a module's tests."""
    with running_server(faulty_upstream, lifespan="off") as base:
        yield base


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def room(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Room]:
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # the session's directory, above each worker's own
    shared_room = Room(shared)
    yield shared_room
    shared_room.close()


@pytest.fixture(autouse=True)
def take_turns(room: Room) -> Iterator[None]:
    """Every test is in the room, so a timed part that needs it to itself waits for the rest."""
    room.enter()
    yield
    room.leave()
