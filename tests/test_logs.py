"""The service's logs: one JSON line on stdout per delivery and per follow-up job, a readable
console line on a terminal, and never a secret, signature, API key or token, anywhere.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest
from click.testing import CliRunner, Result

from service.app import build_worker, create_app
from service.cli import main
from service.db import open_database
from service.errors import ConfigError
from service.localserver import free_port, running
from service.logs import ConsoleFormatter, JsonFormatter, configure_logging, get_logger, scrub
from service.sandbox import SandboxConfig, create_sandbox_app
from service.settings import load_settings
from tests.conftest import Service, install_failure, make_settings, remove_failure
from tests.factories import (
    OTHER_SECRET,
    at,
    company_body,
    connection_body,
    new_id,
    sign,
)

DELIVERY_FIELDS = ("message_id", "event_id", "event_type", "company_id", "connection_id",
                   "outcome", "transitions", "duration_ms")
JOB_FIELDS = ("job_id", "kind", "outcome", "duration_ms", "company_id", "connection_id")


# --- capturing the JSON lines ------------------------------------------------------------------

@pytest.fixture
def restore_logging() -> Iterator[None]:
    """configure_logging() rewires the ``codat_hooks`` logger: put it back afterwards."""
    logger = logging.getLogger("codat_hooks")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    try:
        yield
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved


@dataclass
class Lines:
    """Every stdout line the service wrote, parsed (each one must be JSON)."""

    capfd: pytest.CaptureFixture[str]
    seen: list[dict[str, Any]]
    raw: list[str]

    def start(self) -> Lines:
        # In the test itself: the stdout pytest gives a fixture's setup is closed by then.
        configure_logging("DEBUG", json=True)
        self.capfd.readouterr()
        return self

    def read(self) -> list[dict[str, Any]]:
        out, err = self.capfd.readouterr()
        assert err == "", err
        for line in out.splitlines():
            if not line.strip():
                continue
            self.raw.append(line)
            entry = orjson.loads(line)  # every line is one JSON object
            assert isinstance(entry, dict), line
            assert {"ts", "level", "logger", "msg"} <= set(entry), line
            self.seen.append(entry)
        return self.seen

    def named(self, msg: str) -> list[dict[str, Any]]:
        return [e for e in self.read() if e["msg"] == msg]


@pytest.fixture
def lines(capfd: pytest.CaptureFixture[str], restore_logging: None) -> Lines:
    return Lines(capfd, [], [])


async def post(service: Service, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return await service.client.post("/webhooks/codat", content=body, headers=headers)


def has_fields(entry: dict[str, Any], names: tuple[str, ...]) -> None:
    missing = [name for name in names if name not in entry]
    assert not missing, f"{entry['msg']!r} line lacks {missing}: {entry}"


# --- one line per delivery ----------------------------------------------------------------------

async def test_every_accepted_delivery_is_one_json_line_with_its_fields(
        service: Service, lines: Lines) -> None:
    lines.start()
    company, connection, other = new_id(), new_id(), new_id()
    connected = connection_body("connection.connected", company_id=company,
                                connection_id=connection, status="Linked", generated=at(0),
                                event_id="evt-connected")
    connected_headers = sign(connected)
    sent: list[tuple[str, int]] = []

    async def send(body: bytes, headers: dict[str, str]) -> None:
        response = await post(service, body, headers)
        sent.append((headers["svix-id"], response.status_code))

    await send(connected, connected_headers)  # processed, stored
    await send(connected, connected_headers)  # duplicate
    await send(b'{"other": "body"}', sign(b'{"other": "body"}',
                                          msg_id=connected_headers["svix-id"]))  # conflict
    disconnected = connection_body("connection.disconnected", company_id=company,
                                   connection_id=connection, status="Deauthorized",
                                   generated=at(1), event_id="evt-disconnected")
    await send(disconnected, sign(disconnected))
    await send(connection_body("connection.created", company_id=company, connection_id=other,
                               status="PendingAuth", generated=at(2)), sign(b"x"))  # 401
    await send(b"this is not json", sign(b"this is not json"))  # unparseable
    ignored = (b'{"id": "evt-ignored", "eventType": "invoices.sparkled", '
               b'"generatedDate": "2026-11-01T00:00:00Z", "payload": {}}')
    await send(ignored, sign(ignored))
    created = connection_body("connection.created", company_id=company, connection_id=other,
                              status="PendingAuth", generated=at(2))
    await send(created, sign(created))
    deleted = company_body("company.deleted", company_id=company, generated=at(9),
                           event_id="evt-company-deleted")
    await send(deleted, sign(deleted))
    assert [status for _, status in sent] == [200, 200, 409, 200, 401, 200, 200, 200, 200]

    deliveries = lines.named("delivery")
    assert [e["message_id"] for e in deliveries] == \
        [message_id for message_id, status in sent if status != 401]
    for entry in deliveries:
        has_fields(entry, DELIVERY_FIELDS)
        assert entry["level"] == "info" and entry["logger"] == "codat_hooks.receiver"
        assert isinstance(entry["duration_ms"], int | float) and entry["duration_ms"] >= 0
        assert isinstance(entry["transitions"], list)
        for move in entry["transitions"]:
            assert {"from", "to"} <= set(move)
    stored, duplicate, conflict, moved, unparseable, ignored_line, created, company_gone = \
        deliveries
    assert (stored["event_id"], stored["event_type"], stored["company_id"],
            stored["connection_id"]) == ("evt-connected", "connection.connected", company,
                                         connection)
    assert (stored["outcome"], stored["disposition"], stored["status"]) == \
        ("processed", "stored", 200)
    # First heard of Linked: its creation was missed, so the move skipped states.
    assert stored["transitions"] == [{"from": None, "to": "Linked", "result": "applied",
                                      "skipped": True}]
    assert (duplicate["disposition"], duplicate["transitions"]) == ("duplicate", [])
    assert (conflict["disposition"], conflict["status"], conflict["transitions"]) == \
        ("conflict", 409, [])
    assert moved["transitions"] == [{"from": "Linked", "to": "Deauthorized",
                                     "result": "applied", "skipped": False}]
    assert (unparseable["outcome"], unparseable["event_id"], unparseable["company_id"]) == \
        ("unparseable", None, None)
    assert (ignored_line["outcome"], ignored_line["event_id"]) == ("ignored", "evt-ignored")
    assert created["transitions"] == [{"from": None, "to": "PendingAuth", "result": "applied",
                                       "skipped": False}]
    assert (company_gone["event_type"], company_gone["company_id"]) == \
        ("company.deleted", company)
    assert sorted(m["from"] for m in company_gone["transitions"]) == \
        ["Deauthorized", "PendingAuth"]
    assert {m["to"] for m in company_gone["transitions"]} == {"Deleted"}


async def refused_and_failed(service: Service) -> tuple[list[str], str]:
    """Deliveries refused before anything is stored (401, 400) and one our processing failed
    on (500). Returns the refused message ids and the failed one."""
    body = connection_body("connection.created", company_id=new_id(), connection_id=new_id(),
                           status="PendingAuth", generated=at(0))
    refused = []
    for headers, expect in [
            (sign(body, secret=OTHER_SECRET), 401),
            (sign(body, timestamp=int(time.time()) - 3600), 401),
            ({**sign(body), "svix-signature": "v1,garbage"}, 401),
            ({k: v for k, v in sign(body).items() if k != "svix-signature"}, 400)]:
        response = await post(service, body, headers)
        assert response.status_code == expect, response.text
        refused.append(headers["svix-id"])

    connection = new_id()
    await install_failure(service.db, connection)
    try:
        failing = connection_body("connection.connected", company_id=new_id(),
                                  connection_id=connection, status="Linked", generated=at(0))
        headers = sign(failing)
        assert (await post(service, failing, headers)).status_code == 500
    finally:
        await remove_failure(service.db)
    return refused, headers["svix-id"]


async def test_refused_and_failed_deliveries_are_json_lines_too(service: Service,
                                                                lines: Lines) -> None:
    lines.start()
    refused, failed = await refused_and_failed(service)
    refusals = lines.named("delivery refused")
    assert [e["message_id"] for e in refusals] == refused
    assert [e["status"] for e in refusals] == [401, 401, 401, 400]
    assert [e["reason"] for e in refusals] == ["no_matching_signature", "timestamp_too_old",
                                               "malformed_signature", "MissingHeaders"]
    [failure] = lines.named("delivery processing failed")
    assert failure["level"] == "error"
    assert (failure["message_id"], failure["outcome"], failure["status"]) == \
        (failed, "failed", 500)
    has_fields(failure, ("event_id", "event_type", "company_id", "connection_id",
                         "duration_ms"))
    assert "injected failure" in failure["exc"]


async def test_every_delivery_line_whatever_its_end_carries_every_field(
        service: Service, lines: Lines) -> None:
    lines.start()
    await refused_and_failed(service)
    ends = lines.named("delivery refused") + lines.named("delivery processing failed")
    assert len(ends) == 5
    for entry in ends:
        has_fields(entry, DELIVERY_FIELDS)


async def test_a_body_never_reaches_the_logs_at_info(service: Service, capfd: Any,
                                                     restore_logging: None) -> None:
    configure_logging("INFO", json=True)
    marker = f"BODY-MARKER-{uuid.uuid4().hex}"
    company, connection = new_id(), new_id()
    body = connection_body("connection.created", company_id=company, connection_id=connection,
                           status="PendingAuth", generated=at(0), note=marker)
    headers = sign(body)
    assert (await post(service, body, headers)).status_code == 200
    assert (await post(service, body, headers)).status_code == 200
    other = body.replace(b"PendingAuth", b"Linked")
    assert (await post(service, other, {**sign(other, msg_id=headers["svix-id"])})
            ).status_code == 409
    for raw in (marker.encode(), b'{"note": "' + marker.encode() + b'"}'):
        assert (await post(service, raw, sign(raw))).status_code == 200
    assert (await post(service, body, sign(body, secret=OTHER_SECRET))).status_code == 401
    await install_failure(service.db, connection)
    try:
        failing = connection_body("connection.connected", company_id=company,
                                  connection_id=connection, status="Linked", generated=at(1),
                                  note=marker)
        assert (await post(service, failing, sign(failing))).status_code == 500
    finally:
        await remove_failure(service.db)
    out, err = capfd.readouterr()
    assert out.count('"msg":"delivery') == 7
    assert marker not in out + err
    assert "Toft stores" not in out  # nor any other part of a body
    assert "linkUrl" not in out and "link-api.codat.io" not in out


# --- one line per follow-up job -------------------------------------------------------------

def fake_codat(*, refused: set[str], broken: set[str], unreachable: set[str],
               ) -> httpx.MockTransport:
    """Codat for the worker: connections are Linked and every data type is read, except that
    a connection in ``refused`` is 403, in ``broken`` 500, in ``unreachable`` a connect error."""
    def handle(request: httpx.Request) -> httpx.Response:
        parts = request.url.path.strip("/").split("/")
        if len(parts) == 4 and parts[2] == "connections":
            connection = parts[3]
            if connection in refused:
                return httpx.Response(403, json={"error": "not allowed"})
            if connection in broken:
                return httpx.Response(500, json={"error": "Codat fell over"})
            if connection in unreachable:
                raise httpx.ConnectError("connection refused", request=request)
            return httpx.Response(200, json={"id": connection, "status": "Linked",
                                             "integrationKey": "qhyg"})
        if parts[-1] == "dataStatus":
            return httpx.Response(200, json={t: {"dataType": t, "currentStatus": "Complete"}
                                             for t in ("bankAccounts", "bills", "billPayments",
                                                       "chartOfAccounts", "company",
                                                       "paymentMethods", "suppliers")})
        return httpx.Response(404, json={"error": "no such route"})
    return httpx.MockTransport(handle)


@asynccontextmanager
async def service_with_codat(database_url: str, transport: httpx.MockTransport,
                             ) -> AsyncIterator[Service]:
    settings = make_settings(database_url)
    app = create_app(settings, codat_transport=transport)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        yield Service(app, client, settings)


async def test_every_job_is_one_json_line_with_its_fields(database_url: str,
                                                          lines: Lines) -> None:
    lines.start()
    company = new_id()
    fine, refused, broken, unreachable = (new_id() for _ in range(4))
    transport = fake_codat(refused={refused}, broken={broken}, unreachable={unreachable})
    async with service_with_codat(database_url, transport) as service:
        for connection in (fine, refused, broken, unreachable):
            body = connection_body("connection.connected", company_id=company,
                                   connection_id=connection, status="Linked", generated=at(0))
            assert (await post(service, body, sign(body))).status_code == 200
        # No breaker: every job runs, even after Codat failed three times in a row.
        settings = service.settings.model_copy(update={"codat_breaker_seconds": 0.0})
        worker = build_worker(settings, service.db, service.app.state.codat)
        ran = 0
        while jobs := await worker.run_once():  # retries are rescheduled for later: it ends
            ran += jobs
    assert ran == 8  # a confirm and a reconcile job per connection

    jobs = lines.named("follow-up job")
    assert len(jobs) == 8
    for entry in jobs:
        has_fields(entry, JOB_FIELDS)
        assert entry["logger"] == "codat_hooks.worker"
        assert entry["company_id"] == company
        assert entry["kind"] in ("confirm_connection", "reconcile_connection")
        assert isinstance(entry["duration_ms"], int | float) and entry["duration_ms"] >= 0
        assert entry["attempt"] == 1
    by = {(e["connection_id"], e["kind"]): e for e in jobs}
    assert len(by) == 8
    done = by[(fine, "confirm_connection")]
    assert (done["outcome"], done["level"], done["summary"]) == ("done", "info",
                                                                "billPayReady=True")
    assert by[(fine, "reconcile_connection")]["outcome"] == "done"
    for kind in ("confirm_connection", "reconcile_connection"):
        dead = by[(refused, kind)]
        assert (dead["outcome"], dead["level"]) == ("dead", "warning")
        assert "answered 403" in dead["error"]
        retry = by[(broken, kind)]
        assert (retry["outcome"], retry["level"]) == ("retry", "info")
        assert "answered 500: Codat fell over" in retry["error"]
        assert retry["retry_in"] > 0
        lost = by[(unreachable, kind)]
        assert lost["outcome"] == "retry"
        assert "ConnectError" in lost["error"]


# --- the console format on a terminal --------------------------------------------------------

class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _record(message: str, fields: dict[str, Any], *, exc: BaseException | None = None,
            ) -> logging.LogRecord:
    record = logging.LogRecord("codat_hooks.receiver", logging.INFO, __file__, 1, message, (),
                               (type(exc), exc, exc.__traceback__) if exc else None)
    record.fields = fields
    return record


def ours() -> logging.Handler:
    """The handler configure_logging installed (others, e.g. pytest's, may sit beside it)."""
    [handler] = [h for h in logging.getLogger("codat_hooks").handlers
                 if h.get_name() == "codat-hooks"]
    return handler


def test_console_format_when_stdout_is_a_terminal(monkeypatch: pytest.MonkeyPatch,
                                                  restore_logging: None) -> None:
    terminal = FakeTerminal()
    monkeypatch.setattr("sys.stdout", terminal)
    configure_logging("INFO")  # json=None: decided by whether stdout is a terminal
    handler = ours()
    assert isinstance(handler.formatter, ConsoleFormatter)
    get_logger("receiver").info("delivery", extra={"fields": {
        "message_id": "msg_1", "outcome": "processed", "company_id": None,
        "transitions": [{"from": None, "to": "Linked"}], "signature": "v1,abc"}})
    get_logger("receiver").debug("hidden at INFO")
    [line] = terminal.getvalue().splitlines()
    assert not line.startswith("{")
    stamp, level, rest = line.split(" ", 2)
    assert time.strptime(stamp, "%H:%M:%S") and level == "INFO"
    assert rest.lstrip().startswith("delivery  message_id=msg_1 outcome=processed")
    assert "company_id" not in line  # None values are left out
    assert "signature=[redacted]" in line and "v1,abc" not in line

    piped = io.StringIO()
    monkeypatch.setattr("sys.stdout", piped)
    configure_logging("INFO")
    handler = ours()
    assert isinstance(handler.formatter, JsonFormatter)
    get_logger("receiver").info("delivery", extra={"fields": {"message_id": "msg_2"}})
    assert orjson.loads(piped.getvalue())["message_id"] == "msg_2"

    configure_logging("INFO", json=False)  # forced either way
    assert isinstance(ours().formatter, ConsoleFormatter)
    assert [h.get_name() for h in logging.getLogger("codat_hooks").handlers].count(
        "codat-hooks") == 1  # configuring again replaces our handler, never stacks it


def test_formatters_redact_secret_fields_and_keep_exceptions() -> None:
    try:
        raise RuntimeError("it broke")
    except RuntimeError as exc:
        record = _record("job", {"job_id": "j1", "api_key": "k", "Authorization": "Basic x",
                                 "svix_signature": "v1,s", "db_password": "p",
                                 "apiKey": "k2", "token_hint": "t", "outcome": "dead"},
                         exc=exc)
    entry = orjson.loads(JsonFormatter().format(record))
    assert (entry["job_id"], entry["outcome"], entry["msg"]) == ("j1", "dead", "job")
    for name in ("api_key", "Authorization", "svix_signature", "db_password", "apiKey",
                 "token_hint"):
        assert entry[name] == "[redacted]"
    assert "RuntimeError: it broke" in entry["exc"]
    console = ConsoleFormatter().format(record)
    assert "job_id=j1" in console and "api_key=[redacted]" in console
    assert "Basic x" not in console and "v1,s" not in console
    assert "RuntimeError: it broke" in console
    assert scrub({"webhook_secret": "whsec_x", "company_id": "c"}) == \
        {"webhook_secret": "[redacted]", "company_id": "c"}


# --- no secret anywhere ------------------------------------------------------------------------

KEY_A, KEY_B = b"leak-check-secret-A-0123456789ab", b"leak-check-secret-B-0123456789ab"
WHSEC_A = "whsec_" + base64.b64encode(KEY_A).decode()
WHSEC_B = "whsec_" + base64.b64encode(KEY_B).decode()
BAD_WHSEC = "whsec_LEAKCHECKbad*base64*secret"
API_KEY = "codat-key-LEAKCHECK-3f9a1c77"
TOKEN = "svc-token-LEAKCHECK-77d2e0aa"
PG_PASSWORD = "pgpass-LEAKCHECK-5e8b"
PG_URL = f"postgresql://hooks:{PG_PASSWORD}@127.0.0.1:1/hooks"  # nothing listens on port 1


def _encodings(raw: bytes) -> set[str]:
    standard = base64.b64encode(raw).decode()
    urlsafe = base64.urlsafe_b64encode(raw).decode()
    return {raw.decode(), standard, standard.rstrip("="), urlsafe, urlsafe.rstrip("=")}


def forbidden(signatures: set[str]) -> set[str]:
    values = {WHSEC_A, WHSEC_B, BAD_WHSEC, API_KEY, TOKEN, PG_PASSWORD, PG_URL,
              "Basic " + base64.b64encode(API_KEY.encode()).decode(), f"Bearer {TOKEN}"}
    for secret in (KEY_A, KEY_B, API_KEY.encode(), TOKEN.encode(), PG_PASSWORD.encode()):
        values |= _encodings(secret)
    values |= {WHSEC_A.removeprefix("whsec_"), WHSEC_B.removeprefix("whsec_")}
    for header in signatures:
        values.add(header)
        for token in header.split(" "):
            values.add(token)
            values.add(token.partition(",")[2])
    return {v for v in values if len(v) >= 16}


class KeepAll(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def record_texts(records: list[logging.LogRecord]) -> list[str]:
    texts = []
    for record in records:
        texts += [JsonFormatter().format(record), ConsoleFormatter().format(record),
                  record.getMessage()]
        if record.exc_info and record.exc_info[1] is not None:
            texts.append("".join(traceback.format_exception(*record.exc_info)))
    return texts


def result_texts(result: Result) -> list[str]:
    texts = [result.output]
    if result.exc_info is not None:
        texts.append("".join(traceback.format_exception(*result.exc_info)))
    return texts


def recording(app: Any, signatures: set[str]) -> Any:
    """The app, noting every signature header it is sent (the sandbox's included)."""
    async def wrapped(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            for name, value in scope["headers"]:
                if name.endswith(b"-signature"):
                    signatures.add(value.decode())
        await app(scope, receive, send)
    return wrapped


async def eventually(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = await check()
        if result:
            return result
        await asyncio.sleep(0.05)
    raise AssertionError("timed out")


async def test_no_secret_reaches_any_output(database_url: str, capfd: Any,
                                            caplog: pytest.LogCaptureFixture,
                                            restore_logging: None) -> None:
    configure_logging("DEBUG", json=True)
    caplog.set_level(logging.DEBUG)
    kept = KeepAll()
    logging.getLogger("codat_hooks").addHandler(kept)
    texts: list[str] = []
    signatures: set[str] = set()

    def signed(body: bytes, **options: Any) -> dict[str, str]:
        headers = sign(body, **options)
        signatures.add(headers[f"{options.get('prefix', 'svix')}-signature"])
        return headers

    service_port, codat_port = free_port(), free_port()
    codat_url = f"http://127.0.0.1:{codat_port}"
    sandbox = create_sandbox_app(SandboxConfig(
        api_key=API_KEY, webhook_secret=WHSEC_A, public_url=codat_url, read_delay=0.05,
        webhook_url=f"http://127.0.0.1:{service_port}/webhooks/codat"))
    # The settings carry the PostgreSQL URL with its password; the app is handed the real
    # test database, so nothing ever connects to that URL.
    settings = load_settings(
        codat_webhook_secrets=f"{WHSEC_A}, {WHSEC_B}", service_api_tokens=TOKEN,
        database_url=PG_URL, codat_api_key=API_KEY, codat_base_url=codat_url,
        worker_enabled=False, sqlite_busy_timeout_ms=2000)
    assert PG_PASSWORD not in repr(settings) and API_KEY not in repr(settings)
    db = open_database(database_url, pool_size=2, sqlite_busy_timeout_ms=2000)
    app = create_app(settings, db=db)
    auth = {"Authorization": f"Bearer {TOKEN}"}

    async with running(sandbox, port=codat_port), \
            running(recording(app, signatures), port=service_port) as service_url, \
            httpx.AsyncClient(base_url=service_url, timeout=10) as http:
        # Onboarding through the API: Codat calls with the API key.
        company = await http.post("/v1/companies", json={"name": "Leak Check Ltd"},
                                  headers={**auth, "Idempotency-Key": "leak-1"})
        assert company.status_code == 201, company.text
        company_id = company.json()["id"]
        connection = await http.post(f"/v1/companies/{company_id}/connections",
                                     json={"platformKey": "qhyg"}, headers=auth)
        assert connection.status_code == 201, connection.text
        connection_id = connection.json()["id"]
        authorized = await http.post(
            f"{codat_url}/_sandbox/companies/{company_id}/connections/{connection_id}/authorize")
        assert authorized.status_code == 200

        async def linked() -> bool:
            state = await http.get(f"/v1/connections/{connection_id}", headers=auth)
            return state.json().get("status") == "Linked"
        await eventually(linked)  # the sandbox's signed webhook arrived

        # The worker calls Codat; then Codat fails (500, then refuses our key).
        worker = build_worker(settings, db, app.state.codat)
        while await worker.run_once():
            pass
        fault = await http.post(f"{codat_url}/_sandbox/faults", json={
            "method": "GET", "path": "/connections/", "status": 500, "count": 10})
        assert fault.status_code == 201
        other = new_id()
        legacy = (b'{"CompanyId": "%s", "DataConnectionId": "%s", "RuleType": '
                  b'"DataConnectionStatusChanged", "AlertId": "%s", "Data": {"dataConnectionId":'
                  b' "%s", "newStatus": "Linked", "oldStatus": "PendingAuth", "platformKey": '
                  b'"qhyg"}}') % (company_id.encode(), other.encode(), new_id().encode(),
                                  other.encode())
        response = await http.post("/webhooks/codat", content=legacy,
                                   headers=signed(legacy, secret=WHSEC_B))
        assert response.status_code == 200, response.text
        while await worker.run_once():
            pass
        await http.delete(f"{codat_url}/_sandbox/faults")
        failing = await http.post("/v1/companies", json={"name": "x"},
                                  headers={"Authorization": f"Bearer {TOKEN}"})
        assert failing.status_code == 201
        await http.post(f"{codat_url}/_sandbox/faults", json={
            "method": "POST", "path": "^/companies$", "status": 401, "count": 1})
        refused = await http.post("/v1/companies", json={"name": "y"}, headers=auth)
        assert refused.status_code == 502

        # Deliveries: both secrets, the webhook-* twins, and every way of failing.
        body = connection_body("connection.created", company_id=new_id(),
                               connection_id=new_id(), status="PendingAuth", generated=at(0))
        for options in ({"secret": WHSEC_A}, {"secret": WHSEC_B},
                        {"secret": WHSEC_B, "prefix": "webhook"}):
            assert (await http.post("/webhooks/codat", content=body,
                                    headers=signed(body, **options))).status_code == 200
        for headers, status in [
                (signed(body, secret=OTHER_SECRET), 401),
                (signed(body, secret=WHSEC_A, timestamp=int(time.time()) - 3600), 401),
                ({**signed(body + b" ", secret=WHSEC_A)}, 401),
                ({k: v for k, v in signed(body, secret=WHSEC_B).items()
                  if k != "svix-id"}, 400)]:
            response = await http.post("/webhooks/codat", content=body, headers=headers)
            assert response.status_code == status
        garbage = f"v1,{base64.b64encode(KEY_A).decode()} v1,{WHSEC_A} {TOKEN}"
        response = await http.post("/webhooks/codat", content=body, headers={
            **signed(body, secret=WHSEC_A), "svix-signature": garbage})
        assert response.status_code == 401
        assert (await http.post("/webhooks/codat", content=b"not json",
                                headers=signed(b"not json", secret=WHSEC_A))).status_code == 200
        broken = new_id()
        await install_failure(db, broken)
        try:
            failing_body = connection_body("connection.connected", company_id=company_id,
                                           connection_id=broken, status="Linked",
                                           generated=at(0))
            response = await http.post("/webhooks/codat", content=failing_body,
                                       headers=signed(failing_body, secret=WHSEC_B))
            assert response.status_code == 500
        finally:
            await remove_failure(db)

        # The query API with the token (and with wrong ones).
        for path in (f"/v1/companies/{company_id}", f"/v1/connections?companyId={company_id}",
                     f"/v1/connections/{connection_id}/history", "/v1/outbox",
                     "/oncall"):
            assert (await http.get(path, headers=auth)).status_code == 200
        for wrong in (f"Bearer {TOKEN}x", f"Basic {TOKEN}", TOKEN):
            assert (await http.get("/v1/outbox",
                                   headers={"Authorization": wrong})).status_code == 401
        http.cookies.clear()
        unlinked = await http.post(
            f"/v1/companies/{company_id}/connections/{connection_id}/unlink",
            json={"reason": "leak check"}, headers=auth)
        assert unlinked.status_code == 200, unlinked.text

        # The CLI, with every secret in its environment.
        env = {"DATABASE_URL": database_url, "CODAT_WEBHOOK_SECRETS": f"{WHSEC_A},{WHSEC_B}",
               "CODAT_API_KEY": API_KEY, "CODAT_BASE_URL": codat_url,
               "SERVICE_API_TOKENS": TOKEN, "CODAT_HOOKS_ACTOR": "leak-check"}

        async def cli(*args: str, code: int = 0, **extra: str) -> Result:
            result = await asyncio.to_thread(CliRunner().invoke, main, list(args),
                                             env={**env, **extra})
            texts.extend(result_texts(result))
            assert result.exit_code == code, (args, result.output, result.exception)
            return result

        await cli("status", company_id)
        await cli("status", company_id, "--json")
        await cli("connections", "list", "--json")
        listed = orjson.loads((await cli("deliveries", "list", "--json")).stdout)
        assert len(listed) >= 8
        for item in listed:
            await cli("deliveries", "show", item["messageId"])
            await cli("deliveries", "show", item["messageId"], "--json")
        await cli("replay", "--since", "1h", "--apply", "--reason", "leak check")
        await cli("reconcile", "--all", "--apply", "--reason", "leak check")
        await cli("reconcile", "--all", "--json", code=1, CODAT_API_KEY="wrong-key")
        await cli("outbox", "list")
        await cli("outbox", "retry", "--dead", "--apply", "--reason", "leak check")
        await cli("prune", "--older-than", "0s", "--apply", "--reason", "leak check")
        await cli("status", company_id, code=1, DATABASE_URL=PG_URL)
        await cli("deliveries", "list", code=1, DATABASE_URL=PG_URL)
        await cli("db", "upgrade", code=1, DATABASE_URL=PG_URL)

    # Start-up with invalid settings: the messages name the variable, never the value.
    for bad in ({"CODAT_WEBHOOK_SECRETS": f"{WHSEC_A},{BAD_WHSEC}"},
                {"CODAT_WEBHOOK_SECRETS": f"{TOKEN} {WHSEC_A}"},
                {"WEBHOOK_TOLERANCE_SECONDS": "9999", "DATABASE_URL": PG_URL},
                {"DATABASE_URL": f"mysql://hooks:{PG_PASSWORD}@db/hooks"}):
        for command in (["serve"], ["worker"], ["db", "upgrade"], ["status", "c"]):
            result = await cli(*command, code=1, **bad)
            assert "invalid configuration" in result.output
    for overrides in ({"codat_webhook_secrets": f"{WHSEC_A} {BAD_WHSEC}"},
                      {"codat_webhook_secrets": API_KEY},
                      {"database_url": PG_URL.replace("postgresql", "mysql")}):
        try:
            load_settings(**{"service_api_tokens": TOKEN, "codat_api_key": API_KEY,
                             **overrides})
        except ConfigError as exc:
            assert exc.__context__ is None and exc.__cause__ is None
            texts.append("".join(traceback.format_exception(exc)))
        else:
            raise AssertionError(f"{overrides} was accepted")
    no_secrets = load_settings(service_api_tokens=TOKEN, codat_api_key=API_KEY,
                               database_url=PG_URL)
    try:
        create_app(no_secrets)
    except ConfigError as exc:
        texts.append("".join(traceback.format_exception(exc)))
    else:
        raise AssertionError("an app without webhook secrets started")
    # `serve` itself configures logging (into the runner's stdout), then refuses to start
    # without a secret; the capture is put back afterwards.
    await cli("serve", code=1, CODAT_WEBHOOK_SECRETS="", DATABASE_URL=PG_URL)
    configure_logging("DEBUG", json=True)
    logging.getLogger("codat_hooks").addHandler(kept)

    out, err = capfd.readouterr()
    texts += [out, err, *record_texts(kept.records), *record_texts(caplog.records)]
    assert len(signatures) >= 10
    everything = "\n".join(texts)
    assert '"msg":"delivery"' in everything and '"msg":"follow-up job"' in everything
    assert "answered 500" in everything and "answered 401" in everything
    leaks = sorted(value for value in forbidden(signatures) if value in everything)
    assert leaks == []


# --- a real database failure, the way tests/test_receiver.py makes one ------------------------

