"""The uvicorn configuration every server of ours runs with (``codat-hooks serve``, the demo,
the tests, the benchmark): httptools and uvloop, through :mod:`service.protocol`'s limits.

The connection cap is fitted to the process's file-descriptor limit: a process out of
descriptors can accept nothing, not even a probe, and can open no database file. The soft limit
is raised to the hard one where that is allowed; what is left after :data:`FD_RESERVE` (the
database, log and listening sockets) is shared between connections under the cap and a margin
of connections over it (answered 503, or the probes), and anything beyond is closed at once.
"""

from __future__ import annotations

import resource
import socket
from dataclasses import replace
from typing import Any

import uvicorn

from service.errors import ConfigError
from service.logs import get_logger
from service.protocol import ConnectionLimits, RefusalSink, limited_protocol

FD_RESERVE = 64
log = get_logger("serving")


def fd_limit(wanted: int) -> int:
    """The soft RLIMIT_NOFILE, raised towards ``wanted`` (at most to the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    if soft < wanted and (hard == resource.RLIM_INFINITY or soft < hard):
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def fit_limits(limits: ConnectionLimits, *, descriptors: int | None = None) -> ConnectionLimits:
    """``limits`` with ``max_connections`` and ``hard_cap`` fitted to the descriptors there are
    (``descriptors`` for tests; else this process's limit). Raises ConfigError when there are
    too few to serve at all."""
    margin_wanted = max(8, limits.max_connections // 8)
    available = fd_limit(limits.max_connections + margin_wanted + FD_RESERVE) \
        if descriptors is None else descriptors
    usable = available - FD_RESERVE
    margin = max(8, usable // 8)
    cap = min(limits.max_connections, usable - margin)
    if cap < 8:
        raise ConfigError(f"invalid configuration: HTTP_MAX_CONNECTIONS: the process may open "
                          f"only {available} files; raise its limit (ulimit -n)")
    if cap < limits.max_connections:
        log.warning("connection cap lowered to fit the file-descriptor limit", extra={"fields": {
            "http_max_connections": limits.max_connections, "cap": cap,
            "fd_limit": available}})
    return replace(limits, max_connections=cap, hard_cap=cap + margin)


def server_config(app: Any, limits: ConnectionLimits, *, refusals: RefusalSink | None = None,
                  **options: Any) -> uvicorn.Config:
    """A uvicorn Config for ``app`` whose connections keep ``limits`` (already fitted)."""
    return uvicorn.Config(app, loop="uvloop", http=limited_protocol(limits, refusals),
                          ws="none", lifespan="on", log_config=None, access_log=False,
                          timeout_keep_alive=limits.idle_timeout,  # type: ignore[arg-type]
                          **options)


def shared_socket(host: str, port: int, *, backlog: int = 2048) -> socket.socket:
    """A listening socket that other processes may bind too (SO_REUSEPORT): the kernel spreads
    new connections across every process listening on it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


def serve_forever(app: Any, limits: ConnectionLimits, *, host: str, port: int,
                  refusals: RefusalSink | None = None, reuse_port: bool = False,
                  **options: Any) -> None:
    """Run ``app`` until SIGTERM/SIGINT (what ``codat-hooks serve`` does); with
    ``reuse_port``, on a port that other processes of this machine share."""
    config = server_config(app, fit_limits(limits), refusals=refusals, host=host, port=port,
                           **options)
    if not reuse_port:
        uvicorn.Server(config).run()
        return
    with shared_socket(host, port) as sock:
        uvicorn.Server(config).run(sockets=[sock])

