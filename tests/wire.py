"""Raw-socket helpers for the tests that attack a real ``codat-hooks serve`` (no tests here)."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from service.localserver import free_port
from tests.factories import SECRET, TOKEN
from tests.processes import Proc, service_env, spawn


def serve_env(tmp_path: Path, **values: object) -> dict[str, str]:
    return service_env(codat_webhook_secrets=SECRET, service_api_tokens=TOKEN,
                       codat_api_key="test-key", codat_base_url="http://127.0.0.1:9",
                       database_url=f"sqlite:///{tmp_path}/hostile.db", worker_enabled="false",
                       **values)


@contextlib.contextmanager
def server(tmp_path: Path, *, fd_limit: int | None = None, name: str = "serve",
           **values: object) -> Iterator[Proc]:
    """``codat-hooks serve`` on a free loopback port until the block ends (killed by its pid)."""
    port = free_port()
    proc = spawn(name, ["serve", "--host", "127.0.0.1", "--port", str(port)],
                 env=serve_env(tmp_path, **values), cwd=tmp_path, log_dir=tmp_path,
                 fd_limit=fd_limit)
    proc.url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if not proc.alive():
                raise AssertionError(f"serve exited:\n{proc.tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(proc.url + "/healthz", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise AssertionError(f"serve did not start:\n{proc.tail()}")
            time.sleep(0.05)
        yield proc
    finally:
        proc.kill()


def port_of(proc: Proc) -> int:
    assert proc.url is not None
    return int(proc.url.rsplit(":", 1)[1])


def connect(proc: Proc, timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port_of(proc)), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_answer(sock: socket.socket) -> bytes:
    """Everything until the server closes (or resets) the connection."""
    answer = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def status_of(answer: bytes) -> int | None:
    if not answer.startswith(b"HTTP/1.1 "):
        return None
    return int(answer[9:12])


def closed_within(sock: socket.socket, seconds: float) -> float | None:
    """How long until the server closed the connection (None if it is still open)."""
    started = time.monotonic()
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return time.monotonic() - started


def request(method: str, path: str, headers: dict[str, str] | None = None,
            body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def bearer() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}
