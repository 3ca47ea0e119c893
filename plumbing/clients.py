"""The app's HTTP clients: one of each kind per process, opened in the lifespan, shared by every request.

Opening a client per call would pay for a new connection pool and TLS setup
each time; one shared ``httpx.AsyncClient`` (and one ``httpx.Client`` for the
``def`` routes) keeps connections alive between calls and bounds them.
"""

from __future__ import annotations

import contextlib
import functools
import ssl
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx

from plumbing.settings import Settings


@functools.cache
def tls_context() -> ssl.SSLContext:
    """httpx's default TLS settings (certifi's CA bundle), built once per process and shared by its clients.

    httpx builds one for each client it creates, reading the whole bundle (about
    20 ms of CPU). Every client that shares it must speak HTTP/1.1 only: httpcore
    sets the protocols it offers (ALPN) on the context at each TLS connection.
    """
    return httpx.create_ssl_context(trust_env=False)  # like the clients, it ignores SSL_CERT_FILE


@contextlib.asynccontextmanager
async def shared_clients(settings: Settings) -> AsyncIterator[dict[str, Any]]:
    # One client of each kind per process, shared by every request. trust_env=False:
    # proxy variables must not reroute the calls to the stand-in on loopback.
    size = settings.upstream_connections
    # Keep-alive as large as the pool: httpcore 1.0.9 compares max_keepalive_connections
    # with *all* its connections, so a smaller value closes idle ones under load.
    limits = httpx.Limits(
        max_connections=size, max_keepalive_connections=size, keepalive_expiry=settings.upstream_keepalive
    )
    # Reading the CA bundle takes 20 ms of CPU, more on a busy machine: in a thread, not on the loop
    # (the block finder named this line, at start-up, when it was here on the loop).
    verify = await anyio.to_thread.run_sync(tls_context)
    options: dict[str, Any] = {"timeout": httpx.Timeout(settings.upstream_timeout), "limits": limits, "verify": verify}
    async with httpx.AsyncClient(**options, trust_env=False) as client:
        with httpx.Client(**options, trust_env=False) as sync_client:
            yield {
                "settings": settings,  # what handlers read, through settings_of(request)
                "client": client,
                "sync_client": sync_client,
                "upstream_slots": anyio.CapacityLimiter(size),
                "process_limiter": anyio.CapacityLimiter(settings.process_workers),
                # Batch calls share the client with the universities' upstream calls: holding at
                # most half its connections leaves the calls they make room to finish.
                "batch_slots": anyio.CapacityLimiter(max(1, size // 2)),
            }
