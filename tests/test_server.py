"""`codat-hooks serve` as a real process: body limits on the wire, and a graceful SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import httpx
import pytest

from service.localserver import free_port, running
from service.sandbox import SandboxConfig, create_sandbox_app
from tests.factories import SECRET, TOKEN, at, connection_body, new_id, sign

pytestmark = pytest.mark.slow
CLI = str(Path(sys.executable).with_name("codat-hooks"))


@contextmanager
def serve(tmp_path: Path, **env: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = free_port()
    environment = {**os.environ, "CODAT_WEBHOOK_SECRETS": SECRET, "SERVICE_API_TOKENS": TOKEN,
                   "CODAT_API_KEY": "test-key", "DATABASE_URL": f"sqlite:///{tmp_path}/s.db",
                   "LOG_LEVEL": "WARNING", **env}
    process = subprocess.Popen([CLI, "serve", "--port", str(port)], env=environment,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        else:
            raise AssertionError("codat-hooks serve did not become ready")
        yield process, url
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)


def _raw_request(port: int, head: bytes, body_parts: list[bytes]) -> tuple[bytes, int]:
    """Send a request head and then body parts; return the answer and how many parts were
    sent before it arrived."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head)
        sent = 0
        sock.settimeout(0.05)
        answer = b""
        for part in body_parts:
            try:
                answer = sock.recv(4096)
                if answer:
                    break
            except TimeoutError:
                pass
            try:
                sock.sendall(part)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += 1
        sock.settimeout(5)
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
        return answer, sent


def test_an_oversized_declared_body_is_refused_before_it_is_sent(tmp_path: Path) -> None:
    with serve(tmp_path, WEBHOOK_MAX_BODY_BYTES="65536") as (_, url):
        port = int(url.rsplit(":", 1)[1])
        headers = sign(b"{}")
        head = ("POST /webhooks/codat HTTP/1.1\r\nHost: x\r\nContent-Length: 50000000\r\n"
                + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode()
        answer, sent = _raw_request(port, head, [b"x" * 65536] * 800)  # 50 MB if all sent
        assert answer.startswith(b"HTTP/1.1 413"), answer[:80]
        assert sent < 50  # answered long before the declared 50 MB arrived


def test_an_oversized_chunked_body_is_refused_at_the_limit(tmp_path: Path) -> None:
    with serve(tmp_path, WEBHOOK_MAX_BODY_BYTES="65536") as (_, url):
        port = int(url.rsplit(":", 1)[1])
        headers = sign(b"{}")
        head = ("POST /webhooks/codat HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode()
        chunk = b"%x\r\n%s\r\n" % (16384, b"y" * 16384)
        answer, sent = _raw_request(port, head, [chunk] * 3000)  # ~49 MB if all sent
        assert answer.startswith(b"HTTP/1.1 413"), answer[:80]
        assert sent < 100


@asynccontextmanager
async def sandbox(delay_connection_reads: float, webhook_url: str | None = None,
                  ) -> AsyncIterator[tuple[str, httpx.AsyncClient]]:
    port = free_port()
    app = create_sandbox_app(SandboxConfig(api_key="test-key", webhook_secret=SECRET,
                                           webhook_url=webhook_url,
                                           public_url=f"http://127.0.0.1:{port}"))
    async with running(app, port=port) as url, httpx.AsyncClient(base_url=url) as controls:
        await controls.post("/_sandbox/faults", json={
            "method": "GET", "path": "/connections/[^/]+$", "status": None,
            "retryAfter": None, "delay": delay_connection_reads, "count": 100})
        yield url, controls


async def test_sigterm_lets_the_embedded_worker_finish_its_job(tmp_path: Path) -> None:
    async with sandbox(delay_connection_reads=1.5) as (codat_url, _):
        with serve(tmp_path, CODAT_BASE_URL=codat_url, WORKER_POLL_SECONDS="0.05",
                   CODAT_TIMEOUT_SECONDS="5") as (process, url):
            async with httpx.AsyncClient(base_url=url,
                                         headers={"authorization": f"Bearer {TOKEN}"}) as api:
                body = connection_body("connection.disconnected", company_id=new_id(),
                                       connection_id=new_id(), status="Deauthorized",
                                       generated=at(0))
                assert (await api.post("/webhooks/codat", content=body,
                                       headers=sign(body))).status_code == 200
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:  # the reconcile job is under way
                    jobs = (await api.get("/v1/outbox", params={"status": "running"})).json()
                    if jobs["results"]:
                        break
                    await asyncio.sleep(0.05)
                else:
                    raise AssertionError("the job never started")
                process.send_signal(signal.SIGTERM)
                # uvicorn shuts down gracefully, then re-raises the signal it captured.
                assert await asyncio.to_thread(process.wait, 15) in (0, -signal.SIGTERM)
        # Started again: the job that was running when SIGTERM came was finished, not dropped.
        with serve(tmp_path, CODAT_BASE_URL=codat_url, WORKER_ENABLED="false") as (_, url):
            async with httpx.AsyncClient(base_url=url,
                                         headers={"authorization": f"Bearer {TOKEN}"}) as api:
                [job] = (await api.get("/v1/outbox")).json()["results"]
                assert (job["status"], job["attempts"]) == ("done", 1)


@pytest.mark.postgres
def test_receivers_started_with_reuse_port_share_one_port(tmp_path: Path,
                                                          postgres_url: str) -> None:
    # Two `serve --reuse-port` on one port: the kernel spreads new connections across both,
    # and every delivery is stored once, whichever answered it.
    from tests.conftest import truncate_postgres
    truncate_postgres(postgres_url)
    port = free_port()
    environment = {**os.environ, "CODAT_WEBHOOK_SECRETS": SECRET, "SERVICE_API_TOKENS": TOKEN,
                   "CODAT_API_KEY": "test-key", "DATABASE_URL": postgres_url,
                   "CODAT_BASE_URL": f"http://127.0.0.1:{free_port()}", "LOG_LEVEL": "INFO"}
    logs = [tmp_path / f"receiver-{n}.log" for n in (1, 2)]
    processes = []
    try:
        for log in logs:
            with log.open("wb") as out:
                processes.append(subprocess.Popen(
                    [CLI, "serve", "--port", str(port), "--reuse-port"], env=environment,
                    stdout=out, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + 20
        # Each has bound the shared port before its lifespan starts its worker, which logs.
        while not all(b"worker started" in log.read_bytes() for log in logs):
            assert time.monotonic() < deadline, [log.read_text() for log in logs]
            assert all(p.poll() is None for p in processes), [log.read_text() for log in logs]
            time.sleep(0.1)
        connections = [new_id() for _ in range(60)]
        for connection in connections:  # a new connection each: the kernel picks a receiver
            body = connection_body("connection.created", company_id=new_id(),
                                   connection_id=connection, status="PendingAuth",
                                   generated=at(0))
            answer = httpx.post(f"http://127.0.0.1:{port}/webhooks/codat", content=body,
                                headers=sign(body), timeout=10)
            assert answer.status_code == 200, answer.text
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            process.wait(30)
    answered = [log.read_text().count('"msg":"delivery"') for log in logs]
    assert sum(answered) == 60 and all(answered), answered
    async def stored() -> int:
        import asyncpg
        conn = await asyncpg.connect(postgres_url)
        try:
            return int(await conn.fetchval("SELECT count(*) FROM connections"))
        finally:
            await conn.close()
    assert asyncio.run(stored()) == 60
