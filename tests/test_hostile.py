"""Every attack of issue #11 at once against a real ``codat-hooks serve``, while Codat's valid,
signed deliveries flow: each valid delivery is answered 2xx and stored, the process's memory
stays bounded and /healthz keeps answering. Bounded: the attacks run for a fixed time and every
loop stops by itself.

The idle crowd stays under the connection cap here: beyond it a new connection is answered 503
by design (Codat retries), which tests/test_protocol.py covers on its own."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.factories import TOKEN, at, connection_body, new_id, sign
from tests.processes import Proc, memory_kib, open_files
from tests.wire import bearer, connect, read_answer, request, server

pytestmark = pytest.mark.slow
ATTACK_SECONDS = 8.0
VALID = 160


def _quietly(attack: Callable[[Proc, threading.Event], None]) -> Callable[..., None]:
    def run(proc: Proc, stop: threading.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):
                attack(proc, stop)
    return run


@_quietly
def huge_header(proc: Proc, stop: threading.Event) -> None:
    with connect(proc, timeout=5) as sock:
        sock.sendall(b"POST /webhooks/codat HTTP/1.1\r\nHost: x\r\nX-Huge: ")
        block = b"a" * (1 << 20)
        for _ in range(100):  # 100 MB, unless the server has had enough (it has, at 64 KiB)
            if stop.is_set():
                return
            sock.sendall(block)


@_quietly
def slow_head(proc: Proc, stop: threading.Event) -> None:
    with connect(proc, timeout=5) as sock:
        sock.sendall(b"GET /v1/connections HTTP/1.1\r\n")
        for i in range(100):
            if stop.wait(0.3):
                return
            sock.sendall(b"X-%d: 1\r\n" % i)


@_quietly
def slow_body(proc: Proc, stop: threading.Event) -> None:
    body = connection_body("connection.created", company_id=new_id(), connection_id=new_id(),
                           status="PendingAuth", generated=at(0))
    with connect(proc, timeout=5) as sock:
        sock.sendall(request("POST", "/webhooks/codat", sign(body), body)[:-len(body)])
        for byte in body:
            if stop.wait(0.3):
                return
            sock.sendall(bytes([byte]))


@_quietly
def idle_crowd(proc: Proc, stop: threading.Event) -> None:
    """Sixty connections that send nothing, reopened as the server closes them."""
    crowd: list[socket.socket] = []
    try:
        while not stop.is_set():
            crowd = [s for s in crowd if s.fileno() != -1]
            while len(crowd) < 60 and not stop.is_set():
                sock = connect(proc, timeout=5)
                sock.setblocking(False)
                crowd.append(sock)
            for sock in list(crowd):
                with contextlib.suppress(BlockingIOError):
                    if sock.recv(4096) == b"":
                        sock.close()
            stop.wait(0.2)
    finally:
        for sock in crowd:
            sock.close()


@_quietly
def refused_flood(proc: Proc, stop: threading.Event) -> None:
    """Deliveries with a bad signature and a 5 KB id, over keep-alive."""
    body = b'{"eventType": "connection.created"}'
    with connect(proc, timeout=5) as sock:
        while not stop.is_set():
            headers = {**sign(body), "svix-id": "msg_\x85" + "x" * 5000,
                       "svix-signature": "v1,Zm9yZ2Vk"}
            sock.sendall(request("POST", "/webhooks/codat", headers, body))
            answer = b""
            while not answer.endswith(b"}"):
                chunk = sock.recv(65536)
                if not chunk:
                    return
                answer += chunk


@_quietly
def malformed(proc: Proc, stop: threading.Event) -> None:
    for raw in (b"GARBAGE\r\n\r\n", request("GET", "/healthz", {"X-Big": "a" * 9000}),
                request("GET", "/healthz", {f"X-{i}": "1" for i in range(120)}),
                request("GET", "/" + "a" * 9000),
                request("GET", "/v1/companies/%00", bearer()),
                request("GET", "/v1/connections/v1/history", bearer()),
                request("POST", "/v1/companies/x%3Fa=b/connections", bearer(), b"{}"),
                request("GET", "/oncall?token=" + TOKEN)):
        if stop.is_set():
            return
        with connect(proc, timeout=5) as sock:
            sock.sendall(raw)
            read_answer(sock)
    stop.wait(0.05)


ATTACKS = [huge_header, huge_header, slow_head, slow_head, slow_body, slow_body, idle_crowd,
           refused_flood, malformed]


async def _deliver_valid(proc: Proc, stop: threading.Event) -> list[tuple[str, int]]:
    bodies = []
    for n in range(VALID):
        bodies.append(connection_body("connection.created", company_id=new_id(),
                                      connection_id=new_id(), status="PendingAuth",
                                      generated=at(n)))
    answers: list[tuple[str, int]] = []
    limits = httpx.Limits(max_connections=4, max_keepalive_connections=4)
    async with httpx.AsyncClient(base_url=str(proc.url), limits=limits, timeout=10) as client:
        await asyncio.gather(*(client.get("/healthz") for _ in range(4)))  # connect first
        queue = list(bodies)

        async def sender() -> None:
            while queue:
                body = queue.pop()
                headers = sign(body)
                response = await client.post("/webhooks/codat", content=body, headers=headers)
                answers.append((headers["svix-id"], response.status_code))
                await asyncio.sleep(ATTACK_SECONDS / VALID * 3)
        await asyncio.gather(*(sender() for _ in range(4)))
    return answers


async def _probe(proc: Proc, stop: threading.Event) -> list[int | str]:
    seen: list[int | str] = []
    while not stop.is_set():
        try:  # a new connection each time, as a kubelet probes
            async with httpx.AsyncClient(timeout=3) as client:
                seen.append((await client.get(f"{proc.url}/healthz")).status_code)
        except httpx.HTTPError as exc:
            seen.append(type(exc).__name__)
        await asyncio.sleep(0.25)
    return seen


async def _watch_memory(proc: Proc, stop: threading.Event) -> list[tuple[int, int]]:
    samples = []
    while not stop.is_set():
        samples.append((memory_kib(proc.pid)[0], open_files(proc.pid)))
        await asyncio.sleep(0.1)
    return samples


async def test_attacks_together_while_valid_deliveries_flow(tmp_path: Path) -> None:
    with server(tmp_path, fd_limit=1024, http_max_connections=256, http_head_timeout_seconds=2,
                http_body_timeout_seconds=2, http_idle_timeout_seconds=5) as proc:
        await asyncio.to_thread(httpx.get, f"{proc.url}/readyz")
        rss_before, peak_before = memory_kib(proc.pid)
        stop = threading.Event()
        threads = [threading.Thread(target=attack, args=(proc, stop), daemon=True)
                   for attack in ATTACKS]
        for thread in threads:
            thread.start()
        probes = asyncio.create_task(_probe(proc, stop))
        memory = asyncio.create_task(_watch_memory(proc, stop))
        try:
            await asyncio.sleep(0.5)  # the attacks are under way
            started = time.monotonic()
            answers = await asyncio.wait_for(_deliver_valid(proc, stop), ATTACK_SECONDS * 3)
            await asyncio.sleep(max(0.0, ATTACK_SECONDS - (time.monotonic() - started)))
        finally:
            stop.set()
            for thread in threads:
                await asyncio.to_thread(thread.join, 15)
        seen, samples = await probes, await memory
        _, peak_after = memory_kib(proc.pid)
        assert not any(t.is_alive() for t in threads)
        assert proc.alive(), proc.tail()

        assert len(answers) == VALID
        assert [a for a in answers if a[1] != 200] == [], "valid deliveries refused"
        assert seen and all(s == 200 for s in seen), seen
        assert max(rss for rss, _ in samples) - rss_before < 64 * 1024, (rss_before, samples)
        assert peak_after - peak_before < 64 * 1024, (peak_before, peak_after)
        assert max(files for _, files in samples) < 1024

        async with httpx.AsyncClient(base_url=str(proc.url), headers=bearer()) as api:
            for message_id, _ in answers:  # every acknowledged delivery is stored
                stored = await api.get(f"/v1/deliveries/{message_id}")
                assert stored.status_code == 200, (message_id, stored.text)
                assert stored.json()["outcome"] == "processed"
            metrics = (await api.get("/metrics")).text
        for reason in ("header too large", "head timeout", "body timeout", "malformed request"):
            assert f'codat_hooks_http_refused_total{{reason="{reason}"}}' in metrics, reason
        log = proc.log_path.read_text()
        assert max(len(line) for line in log.splitlines()) < 2000
