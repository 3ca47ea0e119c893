"""A real uvicorn server on a loopback port, in a thread or as a command, and raw HTTP to talk to it.

What the tests, the benchmark and ``docs/screenshot.py`` share: every claim here
is proven against a real server, never an in-memory transport. ``running_server``
serves an app in a thread of this process (httpx's and uvicorn's own test suites
do the same); ``uvicorn_process`` runs ``uvicorn asgi_app:app`` as a reader
would; ``raw_get`` is a client with nothing to spare, for loads where the
client must never be the bottleneck. It imports no pytest.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import anyio
import anyio.abc
import httpx
import uvicorn
from starlette.types import ASGIApp

REPO = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT = 10.0  # seconds a server gets to start, and to stop

# The two server stacks a reader may run: what `uvicorn asgi_app:app` picks with
# uvicorn[standard] installed (FastAPI's default), and plain uvicorn's.
STACKS = {
    "uvloop+httptools": {"loop": "uvloop", "http": "httptools"},
    "asyncio+h11": {"loop": "asyncio", "http": "h11"},
}
DEFAULT_STACK = "uvloop+httptools" if importlib.util.find_spec("uvloop") else "asyncio+h11"


# ------------------------------------------------------------------ servers


def line_of(file: str, text: str) -> int:
    """The number of the one line of ``file`` (in this repository) that holds ``text``."""
    [number] = [n for n, line in enumerate((REPO / file).read_text().splitlines(), 1) if text in line]
    return number


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


@contextlib.contextmanager
def running_server(
    app: ASGIApp, *, lifespan: str = "on", stack: str = DEFAULT_STACK, stopping: list[threading.Thread] | None = None
) -> Iterator[str]:
    """Serves ``app`` in a thread of this process until the block ends; yields its base URL.

    The block's end waits for the server to stop (uvicorn takes about 0.2 s), unless
    ``stopping`` is given: then the server's thread goes there, to be joined later.
    """
    # log_config=None: uvicorn's log goes to whatever the process has (pytest's log capture), not to a
    # handler bound to the sys.stderr of the moment, which a test's capsys closes while this server runs on.
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_level="warning", log_config=None, lifespan=lifespan,
        timeout_graceful_shutdown=1, **STACKS[stack],
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
        if stopping is None:
            join_servers([thread])
        else:
            stopping.append(thread)


def join_servers(threads: Sequence[threading.Thread]) -> None:
    for thread in threads:
        thread.join(timeout=STARTUP_TIMEOUT)
    assert not any(thread.is_alive() for thread in threads), "a test server did not shut down"


@dataclass
class UvicornProcess:
    base_url: str
    process: subprocess.Popen[bytes]
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


# Where util-linux is installed, a server dies with the process that started it, even a killed one.
DIE_WITH_PARENT = ["setpriv", "--pdeathsig", "TERM"] if shutil.which("setpriv") else []


@contextlib.contextmanager
def uvicorn_process(
    *args: str,
    tmp: Path,
    target: str = "asgi_app:app",
    env: dict[str, str] | None = None,
    stack: str = DEFAULT_STACK,
    prefix: Sequence[str] = (),
    cwd: Path = REPO,
) -> Iterator[UvicornProcess]:
    """``uvicorn TARGET ARGS`` as a real command on a free loopback port, stopped with SIGTERM.

    Its output goes to a file in ``tmp``; ``prefix`` goes before the command (``taskset -c 0``);
    it runs in ``cwd``, this repository unless told otherwise.
    """
    port = unused_port()
    log = tmp / f"uvicorn-{port}.log"
    command = [sys.executable, "-m", "uvicorn", target, "--host", "127.0.0.1", "--port", str(port)]
    command += ["--loop", STACKS[stack]["loop"], "--http", STACKS[stack]["http"], *args]
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*prefix, *DIE_WITH_PARENT, *command], cwd=cwd, env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: a Ctrl-C is ours, and the teardown reaches every worker
        )  # fmt: skip
    server = UvicornProcess(f"http://127.0.0.1:{port}", process, log)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break  # uvicorn listens once the lifespan startup is done
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


@contextlib.asynccontextmanager
async def open_client(base_url: str, timeout: float = 30) -> AsyncIterator[httpx.AsyncClient]:
    from plumbing.clients import (
        tls_context,  # here, so a load generator that needs no client never loads httpx's TLS setup
    )

    # The app's one TLS context per process: httpx would read certifi's bundle for every client otherwise.
    async with httpx.AsyncClient(base_url=base_url, timeout=timeout, verify=tls_context()) as client:
        yield client


class Reply(NamedTuple):
    status: int  # 0 when no answer came: refused, reset or timed out
    body: bytes
    sent: float  # Unix time, on the same clock as the pings' started and finished
    received: float


async def raw_get(base_url: str, target: str, timeout: float = 30) -> Reply:
    """One GET on a connection of its own, ``Connection: close``, read to the end.

    A load generator with nothing to spare: no pool, no parsing beyond the status line.
    """
    host, port = base_url.removeprefix("http://").rsplit(":", 1)
    sent, chunks = time.time(), []
    with contextlib.suppress(OSError, TimeoutError, anyio.BrokenResourceError), anyio.fail_after(timeout):
        async with await anyio.connect_tcp(host, int(port)) as stream:
            await stream.send(f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            with contextlib.suppress(anyio.EndOfStream):
                while True:
                    chunks.append(await stream.receive())
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status = re.match(rb"HTTP/1\.[01] (\d{3})", head)
    return Reply(int(status.group(1)) if status else 0, body, sent, time.time())


@contextlib.asynccontextmanager
async def raw_connection(base_url: str, target: str) -> AsyncIterator[anyio.abc.ByteStream]:
    """A GET sent on a connection of its own, left open until the block ends: a client that may leave."""
    host, port = base_url.removeprefix("http://").rsplit(":", 1)
    async with await anyio.connect_tcp(host, int(port)) as stream:
        await stream.send(f"GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        yield stream


async def raw_get_all(base_url: str, targets: Sequence[str], timeout: float = 30) -> list[Reply]:
    """Every GET at once, each on its own connection; the replies in order."""
    return await anyio.amap(lambda target: raw_get(base_url, target, timeout), targets)
