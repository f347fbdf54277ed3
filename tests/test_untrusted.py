"""Untrusted text in logs and on the on-call terminal: capped and escaped, and refusals logged
at a bounded rate with a counter of the lines not written."""

from __future__ import annotations

import json
import re
import time
import uuid
from pathlib import Path

import httpx
import pytest

from service.refusals import BURST, RATE_PER_SECOND, RefusalLog
from service.untrusted import clip, escape_controls
from tests.conftest import Service
from tests.processes import run_cli, service_env
from tests.wire import connect, request, server, status_of

HOSTILE = "\x1b]0;pwned\x07\x1b[2J\x1b[H\r\x9b31m\u202eevil\x00"
RAW_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202e]")


def test_escape_controls_spells_every_control_character() -> None:
    escaped = escape_controls(HOSTILE)
    assert not RAW_CONTROLS.search(escaped)
    assert escaped.startswith("\\u001b]0;pwned\\u0007")
    assert "\\u202eevil\\u0000" in escaped
    assert escape_controls("a\nb\tc\rd", keep_layout=True) == "a\nb\tc\\u000dd"
    assert escape_controls("plain é text") == "plain é text"


def test_clip_caps_and_escapes() -> None:
    assert clip(None) is None
    assert clip("msg_123") == "msg_123"
    long = clip("x" * 1_000_000)
    assert long is not None and len(long) < 250 and long.endswith("[999800 more characters]")
    assert clip("a\x1bb") == "a\\u001bb"


def test_the_refusal_log_is_a_token_bucket() -> None:
    now = [0.0]
    lines = RefusalLog(None, rate=10, burst=5, clock=lambda: now[0])
    logger = __import__("logging").getLogger("codat_hooks.test")
    assert sum(lines.log(logger, "x", {}) for _ in range(20)) == 5
    now[0] += 0.5  # five more tokens
    assert sum(lines.log(logger, "x", {}) for _ in range(20)) == 5


@pytest.mark.slow
def test_a_refusal_flood_writes_a_bounded_number_of_short_lines(tmp_path: Path) -> None:
    sent = 300
    with server(tmp_path, log_level="INFO") as proc:
        started = time.monotonic()
        with connect(proc) as sock:
            for n in range(sent):  # keep-alive: each answered 400 (no signature)
                long_id = f"msg_{n}_\x85" + "a" * 6000
                sock.sendall(request("POST", "/webhooks/codat", {"svix-id": long_id}, b"{}"))
                answer = b""
                while b"\r\n\r\n" not in answer or not answer.endswith(b"}"):
                    answer += sock.recv(65536)
                assert status_of(answer) == 400, answer[:100]
        elapsed = time.monotonic() - started
        metrics = httpx.get(f"{proc.url}/metrics").text
        lines = [json.loads(line) for line in proc.log_path.read_text().splitlines()
                 if line.startswith("{")]
    refused = [line for line in lines if line["msg"] == "delivery refused"]
    assert 0 < len(refused) <= BURST + RATE_PER_SECOND * elapsed + 2, (len(refused), elapsed)
    suppressed = re.search(r'codat_hooks_log_lines_suppressed_total\{kind="refusal"\} (\S+)',
                           metrics)
    assert suppressed and float(suppressed[1]) == sent - len(refused)
    for line in refused:
        assert len(line["message_id"]) < 250
        assert "\x85" not in line["message_id"] and "\\u0085" in line["message_id"]
    assert max(len(raw) for raw in proc.log_path.read_text().splitlines()) < 2000


@pytest.mark.slow
async def test_the_cli_escapes_what_webhooks_and_callers_sent(service: Service,
                                                              tmp_path: Path) -> None:
    message_id = f"msg_{uuid.uuid4().hex}"
    body = f'{{"eventType": "{HOSTILE[:-1]}"'.encode()  # unparseable: kept, shown by the CLI
    assert (await service.deliver(body, msg_id=message_id)).status_code == 200
    env = service_env(database_url=service.settings.database_url)
    for args in (["deliveries", "show", message_id], ["deliveries", "list", "--since", "1h"],
                 ["deliveries", "show", message_id, "--json"]):
        done = run_cli(args, env=env, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert not RAW_CONTROLS.search(done.stdout + done.stderr), (args, done.stdout)
        if "show" in args:
            assert "\\u001b]0;pwned\\u0007" in done.stdout
    shown = json.loads(done.stdout)  # --json stays valid, and decodes to what was stored
    assert shown["body"]["text"] == body.decode()
    missing = run_cli(["deliveries", "show", "msg_\x1b]0;x\x07"], env=env, cwd=tmp_path)
    assert missing.returncode != 0 and not RAW_CONTROLS.search(missing.stderr)
    assert "\\u001b]0;x\\u0007" in missing.stderr
