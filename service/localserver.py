"""Run an ASGI app on a loopback port inside the current event loop (demo, tests, benchmarks)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn

from service.protocol import ConnectionLimits
from service.serving import fit_limits, server_config


def free_port(host: str = "127.0.0.1") -> int:
    """A port free now, for a child process to bind (in-process servers use listening_socket)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def listening_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A bound socket, held until its server owns it: nothing can take the port in between.

    IPPROTO_TCP explicitly: asyncio turns Nagle's algorithm off only on sockets that say so, and
    without that every keep-alive request waits out a delayed ACK (about 40 ms).
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{host}:{port}"


@asynccontextmanager
async def running(app: Any, *, host: str = "127.0.0.1", port: int = 0,
                  sock: socket.socket | None = None,
                  limits: ConnectionLimits | None = None) -> AsyncIterator[str]:
    """Serve ``app`` (lifespan included) until the block ends; yields its base URL. Our own app
    is served with its settings' connection limits, as ``codat-hooks serve`` does."""
    sock = sock or listening_socket(host, port)
    state = getattr(app, "state", None)
    settings = getattr(state, "settings", None)
    if limits is None:
        limits = settings.connection_limits if settings is not None else ConnectionLimits()
    config = server_config(app, fit_limits(limits), refusals=getattr(state, "refusals", None),
                           timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()  # raises what stopped it (a failed lifespan)
                raise RuntimeError("the server stopped before it started")
            await asyncio.sleep(0.01)
        yield url_of(sock)
    finally:
        server.should_exit = True
        await task
        sock.close()
