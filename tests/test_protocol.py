"""The HTTP protocol's limits, attacked over real sockets against a real ``codat-hooks serve``:
request-head limits with memory flat, head and body deadlines, idle connections, the connection
cap and the file-descriptor limit (service/protocol.py, service/serving.py)."""

from __future__ import annotations

import concurrent.futures
import contextlib
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.protocol import ConnectionLimits
from service.serving import FD_RESERVE, fit_limits
from tests.factories import at, connection_body, new_id, sign
from tests.processes import Proc, memory_kib, open_files
from tests.wire import (
    bearer,
    closed_within,
    connect,
    read_answer,
    request,
    server,
    status_of,
)

pytestmark = pytest.mark.slow
FAST = {"http_head_timeout_seconds": 1, "http_body_timeout_seconds": 1,
        "http_idle_timeout_seconds": 1}


@pytest.fixture(scope="module")
def fast(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    """One server with one-second deadlines for the tests of this module that share it."""
    with server(tmp_path_factory.mktemp("protocol"), **FAST) as proc:
        yield proc


def ask(proc: Proc, raw: bytes) -> bytes:
    with connect(proc) as sock:
        sock.sendall(raw)
        return read_answer(sock)


# --- request-head limits ------------------------------------------------------------------------

@pytest.mark.parametrize(("what", "raw", "status"), [
    ("request line over 8 KiB", request("GET", "/healthz?" + "a" * 8200), 400),
    ("a header over 8 KiB", request("GET", "/healthz", {"X-Big": "a" * 8200}), 431),
    ("101 headers", request("GET", "/healthz", {f"X-{i}": "1" for i in range(101)}), 431),
    ("a head over 64 KiB", request("GET", "/healthz", {f"X-{i}": "a" * 7000 for i in range(10)}),
     431),
    ("not HTTP", b"GARBAGE\r\n\r\n", 400),
])
def test_a_head_over_the_limits_is_refused_and_the_connection_closed(
        fast: Proc, what: str, raw: bytes, status: int) -> None:
    answer = ask(fast, raw + request("GET", "/healthz"))  # a second request is never answered
    assert status_of(answer) == status, (what, answer[:100])
    assert answer.count(b"HTTP/1.1 ") == 1
    assert b"connection: close" in answer.lower()


def test_a_head_within_the_limits_is_answered(fast: Proc) -> None:
    headers = {"X-Big": "a" * 8000, **{f"X-{i}": "1" for i in range(97)}}  # 100 with Host
    answer = ask(fast, request("GET", "/healthz", {**headers, "Connection": "close"}))
    assert status_of(answer) == 200, answer[:200]


def _send_huge_header(proc: Proc, size: int) -> bytes:
    """A request whose one header value is ``size`` bytes, sent as fast as the socket takes it;
    the answer (or b"" when the server reset the connection)."""
    with connect(proc, timeout=30) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Huge: ")
        block = b"a" * (1 << 20)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            for _ in range(size >> 20):
                sock.sendall(block)
        return read_answer(sock)


def test_100_mb_headers_leave_memory_flat(tmp_path: Path) -> None:
    with server(tmp_path, **FAST) as proc:
        httpx.get(f"{proc.url}/healthz")
        _, peak_before = memory_kib(proc.pid)
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            answers = list(pool.map(lambda _: _send_huge_header(proc, 100 << 20), range(3)))
        _, peak_after = memory_kib(proc.pid)
        for answer in answers:  # answered 431, or reset while the rest was still arriving
            assert answer == b"" or status_of(answer) == 431, answer[:100]
        assert any(status_of(a) == 431 for a in answers)
        assert peak_after - peak_before < 16 * 1024, (peak_before, peak_after)  # KiB
        assert httpx.get(f"{proc.url}/healthz").status_code == 200


# --- deadlines and idle connections -------------------------------------------------------------

def trickle(sock: socket.socket, parts: list[bytes]) -> bytes:
    """Send ``parts`` one every 0.2 s until the server answers; return its whole answer."""
    answer = b""
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        for part in parts:
            sock.sendall(part)
            sock.settimeout(0.2)
            with contextlib.suppress(TimeoutError):
                answer += sock.recv(4096)
            if answer:
                break
    sock.settimeout(5)
    return answer + read_answer(sock)


def test_a_trickled_head_gets_408_and_is_closed(fast: Proc) -> None:
    with connect(fast) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        started = time.monotonic()
        # one header line every 0.2 s: never a whole head
        answer = trickle(sock, [b"X-%d: 1\r\n" % i for i in range(20)])
        assert status_of(answer) == 408, answer[:100]
        assert 0.8 < time.monotonic() - started < 3


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_trickled_body_gets_408_and_is_closed(fast: Proc, framing: str) -> None:
    body = connection_body("connection.created", company_id=new_id(), connection_id=new_id(),
                           status="PendingAuth", generated=at(0))
    headers = {**sign(body), "Content-Type": "application/json"}
    if framing == "chunked":
        headers["Transfer-Encoding"] = "chunked"
        head = request("GET", "/x", headers).replace(b"GET /x", b"POST /webhooks/codat")
        parts = [b"1\r\n%s\r\n" % body[i:i + 1] for i in range(len(body))]
    else:
        head = request("POST", "/webhooks/codat", headers, body)[:-len(body)]
        parts = [body[i:i + 1] for i in range(len(body))]
    with connect(fast) as sock:
        sock.sendall(head)
        started = time.monotonic()
        answer = trickle(sock, parts[:30])  # one byte every 0.2 s
    assert status_of(answer) == 408, answer[:100]
    assert 0.8 < time.monotonic() - started < 3
    listed = httpx.get(f"{fast.url}/v1/connections", headers=bearer()).json()
    assert all(c["id"] not in body.decode() for c in listed["results"])  # nothing stored


def test_a_connection_that_sends_nothing_is_closed(fast: Proc) -> None:
    with connect(fast) as sock:
        took = closed_within(sock, 5)
    assert took is not None and took < 2.5


def test_a_kept_alive_connection_is_closed_when_idle(fast: Proc) -> None:
    with connect(fast) as sock:
        sock.sendall(request("GET", "/healthz"))
        sock.settimeout(5)
        assert status_of(sock.recv(4096)) == 200
        took = closed_within(sock, 5)
    assert took is not None and took < 2.5


# --- the connection cap -------------------------------------------------------------------------

def test_beyond_the_cap_requests_get_503_and_the_probes_still_answer(tmp_path: Path) -> None:
    with server(tmp_path, http_max_connections=8, http_idle_timeout_seconds=30) as proc:
        held = [connect(proc) for _ in range(8)]
        try:
            time.sleep(0.2)
            over = ask(proc, request("GET", "/v1/connections", bearer()))
            assert status_of(over) == 503, over[:100]
            assert b"retry-after: 1" in over.lower()
            for probe in ("/healthz", "/readyz"):
                answer = ask(proc, request("GET", probe))
                assert status_of(answer) == 200, (probe, answer[:100])
        finally:
            for sock in held:
                sock.close()
        time.sleep(0.3)
        again = ask(proc, request("GET", "/v1/connections", {**bearer(), "Connection": "close"}))
        assert status_of(again) == 200, again[:100]
        metrics = httpx.get(f"{proc.url}/metrics").text
        assert re.search(r'codat_hooks_http_refused_total\{reason="over connection cap"\} 1',
                         metrics)


def _healthz_answers(proc: Proc, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            answer = ask(proc, request("GET", "/healthz", {"Connection": "close"}))
            if status_of(answer) == 200:
                return True
        time.sleep(0.1)
    return False


def test_idle_connections_beyond_the_file_limit_leave_healthz_answering(tmp_path: Path) -> None:
    with server(tmp_path, fd_limit=256, http_idle_timeout_seconds=30) as proc:
        held: list[socket.socket] = []
        try:
            for _ in range(260):
                with contextlib.suppress(OSError):
                    held.append(connect(proc, timeout=2))
            time.sleep(0.5)
            assert open_files(proc.pid) < 256
            assert _healthz_answers(proc, within=5)
            assert open_files(proc.pid) < 256
        finally:
            for sock in held:
                sock.close()
        assert "connection cap lowered to fit the file-descriptor limit" in proc.tail(200)


def test_the_cap_is_fitted_to_the_descriptors_there_are() -> None:
    fitted = fit_limits(ConnectionLimits(max_connections=1000), descriptors=256)
    assert fitted.max_connections + (fitted.hard_cap - fitted.max_connections) + FD_RESERVE \
        <= 256
    assert fitted.hard_cap > fitted.max_connections  # room over the cap for the probes
    roomy = fit_limits(ConnectionLimits(max_connections=1000), descriptors=1 << 20)
    assert roomy.max_connections == 1000
