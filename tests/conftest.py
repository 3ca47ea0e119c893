"""A real uvicorn server per test, in its own thread, on an ephemeral loopback port."""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.types import ASGIApp

from asgi_app import Settings, create_app

STARTUP_TIMEOUT = 10.0  # seconds to wait for server.started before giving up

# The two server stacks a reader may run: what `uvicorn asgi_app:app` picks with
# uvicorn[standard] installed (FastAPI's default), and plain uvicorn's.
STACKS = {
    "uvloop+httptools": {"loop": "uvloop", "http": "httptools"},
    "asyncio+h11": {"loop": "asyncio", "http": "h11"},
}
DEFAULT_STACK = "uvloop+httptools" if importlib.util.find_spec("uvloop") else "asyncio+h11"
# Runs a test module (or test) once per stack: `pytestmark = BOTH_STACKS`.
BOTH_STACKS = pytest.mark.parametrize("stack", list(STACKS), indirect=True, scope="module")


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest) -> str:
    """The stack the servers of this test run on: the default one unless ``BOTH_STACKS`` says otherwise."""
    return str(getattr(request, "param", DEFAULT_STACK))


@contextlib.contextmanager
def running_server(app: ASGIApp, *, lifespan: str = "on", stack: str = DEFAULT_STACK) -> Iterator[str]:
    """Serves ``app`` until the block ends; yields its base URL."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_level="warning", lifespan=lifespan, timeout_graceful_shutdown=1,
        **STACKS[stack],
    )  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn-test-server", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        host, port = server.servers[0].sockets[0].getsockname()[:2]
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=STARTUP_TIMEOUT)
        assert not thread.is_alive(), "the test server did not shut down"


ServeFn = Callable[..., str]


@pytest.fixture
def serve(stack: str) -> Iterator[ServeFn]:
    """``serve(thread_tokens=2)`` starts the app with those settings; ``serve(app=...)`` any app."""
    with contextlib.ExitStack() as servers:

        def start(app: ASGIApp | None = None, **settings: Any) -> str:
            return servers.enter_context(running_server(app or create_app(Settings(**settings)), stack=stack))

        yield start


@pytest.fixture(scope="module")
def base_url(stack: str) -> Iterator[str]:
    """The app with default settings, shared by a module's tests that change no state."""
    with running_server(create_app(Settings()), stack=stack) as base:
        yield base


class Room:
    """A readers-writer lock across xdist workers, from two lock files.

    Most tests only wait, so the suite runs on several processes, each test
    inside the room with the others. The few timed parts whose claim needs free
    cores (a CPU ratio) take the room to themselves with ``to_myself()``. The
    one waiting for it holds the gate, so no new test enters in the meantime.
    """

    def __init__(self, directory: Path) -> None:
        self.gate = open(directory / "gate.lock", "a")  # noqa: SIM115 -- held for the whole session
        self.room = open(directory / "room.lock", "a")  # noqa: SIM115

    def enter(self) -> None:
        fcntl.flock(self.gate, fcntl.LOCK_EX)
        fcntl.flock(self.room, fcntl.LOCK_SH)
        fcntl.flock(self.gate, fcntl.LOCK_UN)

    def leave(self) -> None:
        fcntl.flock(self.room, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def to_myself(self) -> Iterator[None]:
        self.leave()
        fcntl.flock(self.gate, fcntl.LOCK_EX)
        fcntl.flock(self.room, fcntl.LOCK_EX)  # waits for the tests already inside to finish
        try:
            yield
        finally:
            fcntl.flock(self.room, fcntl.LOCK_UN)
            fcntl.flock(self.gate, fcntl.LOCK_UN)
            self.enter()


@pytest.fixture(scope="session")
def room(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Room]:
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # the session's directory, above each worker's own
    shared_room = Room(shared)
    yield shared_room
    shared_room.gate.close()
    shared_room.room.close()


@pytest.fixture(autouse=True)
def take_turns(room: Room) -> Iterator[None]:
    """Every test is in the room, so a timed part that needs it to itself waits for the rest."""
    room.enter()
    yield
    room.leave()


@contextlib.asynccontextmanager
async def open_client(base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    # No pool limit and a long timeout: the client must never be what serializes requests.
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=60) as client:
        yield client


@pytest.fixture
async def client(base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with open_client(base_url) as client:
        yield client


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


REPO = Path(__file__).resolve().parent.parent


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def is_running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


@dataclass
class UvicornProcess:
    base_url: str
    process: subprocess.Popen[bytes]
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def uvicorn_process(
    *args: str, env: dict[str, str] | None = None, tmp: Path, stack: str = DEFAULT_STACK
) -> Iterator[UvicornProcess]:
    """``uvicorn asgi_app:app ARGS`` as a real command on a free loopback port, stopped with SIGTERM."""
    port = unused_port()
    log = tmp / f"uvicorn-{port}.log"
    command = [sys.executable, "-m", "uvicorn", "asgi_app:app", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--loop", STACKS[stack]["loop"], "--http", STACKS[stack]["http"], *args]
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, cwd=REPO, env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so the teardown can reach every worker
        )  # fmt: skip
    server = UvicornProcess(f"http://127.0.0.1:{port}", process, log)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            try:
                if httpx.get(f"{server.base_url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start:\n{server.log_text()}")
            time.sleep(0.05)
        yield server
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STARTUP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise
