"""The on-call CLI (``codat-hooks status|connections|deliveries|replay|reconcile|outbox|prune``)
through the real click group, on SQLite and PostgreSQL.

State is seeded through the service itself (signed deliveries, the worker, the sandbox Codat);
the CLI runs in a thread (it calls ``asyncio.run`` itself) while the test's loop serves the
sandbox. Every command's exit code is asserted.
"""

from __future__ import annotations

import asyncio
import getpass
import logging
import os
import subprocess
import sys
import traceback
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
import orjson
import pytest
from click.testing import CliRunner, Result

from handlers.readiness import BILL_PAY_DATA_TYPES
from service import oncall
from service.app import build_worker
from service.cli import main
from service.codat import CodatClient
from service.db import utcnow
from service.ingest import examine, ingest, new_delivery
from service.localserver import free_port, running
from service.sandbox import SandboxConfig, create_sandbox_app
from tests.conftest import Service, install_failure, remove_failure
from tests.factories import (
    SECRET,
    at,
    company_body,
    connection_body,
    legacy_body,
    new_id,
    read_completed_body,
    sign,
)

ACTOR = "oncall-test"
API_KEY = "cli-test-codat-key"
NOWHERE = "http://127.0.0.1:9"  # nothing listens: a command that should not call Codat
INDENT = " " * 15  # how `deliveries show` indents headers and the body


# --- running the CLI ---------------------------------------------------------------------------

def explain(result: Result) -> str:
    text = f"exit {result.exit_code}\n--- output ---\n{result.output}"
    if result.exc_info is not None and not isinstance(result.exception, SystemExit):
        text += "--- exception ---\n" + "".join(traceback.format_exception(*result.exc_info))
    return text


def ok(result: Result) -> Result:
    assert result.exit_code == 0, explain(result)
    return result


def fails(result: Result, code: int = 1) -> Result:
    assert result.exit_code == code, explain(result)
    return result


def as_json(result: Result) -> Any:
    return orjson.loads(ok(result).stdout)


@dataclass
class Cli:
    """``codat-hooks`` against the test database, as the on-call engineer runs it."""

    env: dict[str, str | None]

    async def __call__(self, *args: str, **env: str | None) -> Result:
        runner = CliRunner()
        return await asyncio.to_thread(runner.invoke, main, list(args),
                                       env={**self.env, **env}, catch_exceptions=True)


@pytest.fixture
def cli(service: Service) -> Cli:
    return Cli({"DATABASE_URL": service.settings.database_url, "CODAT_HOOKS_ACTOR": ACTOR,
                "CODAT_API_KEY": API_KEY, "CODAT_BASE_URL": NOWHERE})


# --- seeding through the service -------------------------------------------------------------

async def deliver(service: Service, body: bytes, *, msg_id: str | None = None,
                  expect: int = 200) -> str:
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    response = await service.deliver(body, msg_id=msg_id)
    assert response.status_code == expect, response.text
    return msg_id


async def moves(service: Service, company: str, connection: str,
                steps: list[tuple[str, str]], *, start: int = 0,
                platform_key: str = "qhyg") -> list[str]:
    """Deliver connection events ``(event type, status)`` one second apart."""
    return [await deliver(service, connection_body(
        kind, company_id=company, connection_id=connection, status=status,
        generated=at(start + second), platform_key=platform_key))
        for second, (kind, status) in enumerate(steps)]


LINK = [("connection.created", "PendingAuth"), ("connection.connected", "Linked")]


async def api(service: Service, path: str) -> Any:
    response = await service.get(path)
    assert response.status_code == 200, response.text
    return response.json()


async def history(service: Service, connection: str) -> list[dict[str, Any]]:
    return list((await api(service, f"/v1/connections/{connection}/history"))["results"])


async def delivery(service: Service, message_id: str) -> dict[str, Any]:
    return dict(await api(service, f"/v1/deliveries/{message_id}"))


async def jobs(service: Service) -> list[dict[str, Any]]:
    return await service.rows("SELECT id, kind, connection_id, status, attempts, last_error "
                              "FROM outbox ORDER BY id")


def fake_codat(*, refuse: frozenset[str] = frozenset(),
               statuses: dict[str, str] | None = None) -> httpx.MockTransport:
    """A Codat for the worker: connections are Linked (403 for those in ``refuse``), every
    Bill Pay data type is Complete unless ``statuses`` says otherwise."""
    statuses = statuses or {}

    def handle(request: httpx.Request) -> httpx.Response:
        parts = request.url.path.strip("/").split("/")
        if len(parts) == 4 and parts[2] == "connections":
            if parts[3] in refuse:
                return httpx.Response(403, json={"error": "refused by the test"})
            return httpx.Response(200, json={"id": parts[3], "status": "Linked",
                                             "integrationKey": "qhyg",
                                             "platformName": "QuickBooks Online"})
        if parts[-1] == "dataStatus":
            return httpx.Response(200, json={
                t: {"dataType": t, "currentStatus": statuses.get(t, "Complete")}
                for t in BILL_PAY_DATA_TYPES})
        if "queue" in parts:
            return httpx.Response(200, json={"id": new_id(), "dataType": parts[-1],
                                             "status": "Initial"})
        return httpx.Response(404, json={"error": f"no route {request.url.path}"})
    return httpx.MockTransport(handle)


async def run_jobs(service: Service, transport: httpx.MockTransport) -> int:
    """Run every due job once through the real worker against ``transport``."""
    client = CodatClient(api_key="worker-key", base_url="http://codat.test", transport=transport)
    ran = 0
    try:
        worker = build_worker(service.settings, service.db, client)
        while jobs := await worker.run_once():
            ran += jobs
    finally:
        await client.aclose()
    return ran



async def failed_deliveries(service: Service, count: int) -> list[tuple[str, str, str]]:
    """``count`` connection.connected deliveries our own processing failed on (500, kept,
    marked failed); the failure is removed afterwards. (message id, company, connection)"""
    seeded = [(f"msg_{uuid.uuid4().hex}", new_id(), new_id()) for _ in range(count)]
    await install_failure(service.db, *(connection for _, _, connection in seeded))
    try:
        for message_id, company, connection in seeded:
            await deliver(service, connection_body(
                "connection.connected", company_id=company, connection_id=connection,
                status="Linked", generated=at(0)), msg_id=message_id, expect=500)
    finally:
        await remove_failure(service.db)  # PostgreSQL keeps triggers across tests
    return seeded


async def old_delivery(service: Service, *, age: timedelta, connection: str | None = None,
                       ) -> str:
    """A delivery received ``age`` ago, stored by the receiver's own unit of work."""
    body = connection_body("connection.created", company_id=new_id(),
                           connection_id=connection or new_id(), status="PendingAuth",
                           generated=at(0))
    message_id = f"msg_old_{uuid.uuid4().hex}"
    stored = new_delivery(message_id=message_id, timestamp=int(utcnow().timestamp()),
                          body=body, secret_id="whsec:test", headers={"svix-id": message_id},
                          received_at=utcnow() - age)
    examined = examine(body, message_id=message_id, timestamp=stored.timestamp)
    result = await service.db.write(lambda tx: ingest(tx, stored, examined))
    assert result.disposition == "stored"
    return message_id


# --- status ----------------------------------------------------------------------------------

async def test_status_shows_connections_readiness_history_and_open_jobs(service: Service,
                                                                        cli: Cli) -> None:
    company, linked, skipped = new_id(), new_id(), new_id()
    await moves(service, company, linked, LINK)
    # PendingAuth -> Unlinked skips a state: Codat's newest word is applied, and a reconcile is
    # queued to confirm it.
    await moves(service, company, skipped, [("connection.created", "PendingAuth"),
                                            ("connection.disconnected", "Unlinked")], start=10)
    # The confirm job reads readiness (bills failed); the reconcile job is refused: dead.
    ran = await run_jobs(service, fake_codat(refuse=frozenset({skipped}),
                                             statuses={"bills": "FetchError"}))
    assert ran == 2
    linked_since = next(h for h in await history(service, linked)
                        if h["toState"] == "Linked" and h["fromState"] != "Linked")["recordedAt"]
    skipped_since = (await history(service, skipped))[1]["recordedAt"]
    [dead] = [j for j in await jobs(service) if j["status"] == "dead"]

    out = ok(await cli("status", company)).stdout
    assert f"Company {company}  Toft stores" in out
    assert "Bill Pay ready: False" in out
    assert "missing: bills" in out
    assert "checked never" not in out
    assert f"Connection {linked}  QuickBooks Online  Linked since {linked_since}" in out
    assert f"Connection {skipped}  QuickBooks Online  Unlinked since {skipped_since}" in out
    history_lines = [line for line in out.splitlines() if " webhook " in line]
    assert len(history_lines) == 4  # every webhook's history row of both connections
    assert any("applied" in line and "Unlinked" in line and "connection.disconnected" in line
               for line in history_lines)
    jobs_part = out.split("Open follow-up jobs:")[1]
    assert dead["id"] in jobs_part
    assert "reconcile_connection" in jobs_part and "dead" in jobs_part
    assert "answered 403" in jobs_part
    assert "confirm_connection" not in jobs_part.split("Commands:")[0]  # done: not open
    # The company page's story, as a timeline: newest first, moves, deliveries and jobs.
    assert "why not: bills: FetchError" in out
    timeline = out.split("Timeline (newest first")[1].split("Open follow-up jobs:")[0]
    lines = [line for line in timeline.splitlines()[2:] if line.strip()]
    stamps = [line.split()[0] for line in lines]
    assert stamps == sorted(stamps, reverse=True)
    assert sum("delivery processed" in line for line in lines) == 4
    assert any("webhook applied PendingAuth -> Unlinked" in line and "skipped states" in line
               for line in lines)
    assert any("job reconcile_connection dead" in line and dead["id"] in line
               and "attempts 1/8" in line for line in lines)
    assert any("job confirm_connection done" in line for line in lines)
    commands = out.split("Commands:")[1]
    assert f"codat-hooks reconcile --company {company}" in commands
    assert f'codat-hooks outbox retry {dead["id"]} --apply --reason "..."' in commands

    data = as_json(await cli("status", company, "--json"))
    assert data["id"] == company
    assert data["billPayReady"] is False
    assert data["billPayDetail"]["missing"] == ["bills"]
    by_id = {c["id"]: c for c in data["dataConnections"]}
    assert (by_id[linked]["status"], by_id[linked]["since"]) == ("Linked", linked_since)
    assert (by_id[skipped]["status"], by_id[skipped]["since"]) == ("Unlinked", skipped_since)
    assert [(h["toState"], h["result"], h["skipped"]) for h in by_id[skipped]["history"]] == \
        [("PendingAuth", "applied", False), ("Unlinked", "applied", True)]
    assert [(j["id"], j["kind"], j["status"]) for j in data["jobs"]] == \
        [(dead["id"], "reconcile_connection", "dead")]
    # Four webhooks' rows, and Codat's answer to the confirm job (the refused reconcile has none).
    assert [e["kind"] for e in data["timeline"]].count("transition") == 5
    assert data["whyNotReady"] == [data["whyNotReady"][0]]
    assert data["whyNotReady"][0].startswith("bills: FetchError (connection ")


async def test_status_of_a_ready_company(service: Service, cli: Cli) -> None:
    company, connection = new_id(), new_id()
    await moves(service, company, connection, LINK)
    assert await run_jobs(service, fake_codat()) == 1
    out = ok(await cli("status", company)).stdout
    assert "Bill Pay ready: True" in out
    assert "missing: -" in out
    assert "Open follow-up jobs:" in out and "(none)" in out.split("Open follow-up jobs:")[1]
    assert as_json(await cli("status", company, "--json"))["billPayReady"] is True


async def test_status_of_an_unknown_company_exits_non_zero(service: Service, cli: Cli) -> None:
    unknown = new_id()
    result = fails(await cli("status", unknown))
    assert f"no company {unknown}" in result.output
    fails(await cli("status", unknown, "--json"))
    fails(await cli("status"), 2)


async def test_status_since_survives_many_stale_events(service: Service, cli: Cli) -> None:
    company, connection = new_id(), new_id()
    await moves(service, company, connection, [("connection.connected", "Linked")], start=100)
    linked_since = (await history(service, connection))[0]["recordedAt"]
    for second in range(6):  # older events, each one superseded
        await deliver(service, connection_body(
            "connection.created", company_id=company, connection_id=connection,
            status="PendingAuth", generated=at(second)))
    data = as_json(await cli("status", company, "--json"))
    assert data["dataConnections"][0]["since"] == linked_since


# --- connections list ------------------------------------------------------------------------

async def test_connections_list_filters_and_json(service: Service, cli: Cli) -> None:
    first, second = new_id(), new_id()
    linked, pending, deauthorized, deleted = (new_id() for _ in range(4))
    await moves(service, first, linked, LINK)
    await moves(service, first, pending, LINK[:1], platform_key="xero")
    await moves(service, second, deauthorized,
                [*LINK, ("connection.disconnected", "Deauthorized")])
    await moves(service, second, deleted, [*LINK, ("connection.deleted", "Linked")])

    async def ids(*args: str) -> list[str]:
        page = as_json(await cli("connections", "list", "--json", *args))
        assert page["nextCursor"] is None
        return [c["id"] for c in page["results"]]

    assert await ids("--status", "Linked") == [linked]
    assert await ids("--status", "PendingAuth") == [pending]
    assert await ids("--status", "Deauthorized") == [deauthorized]
    assert await ids("--status", "Deleted") == [deleted]
    assert await ids("--platform", "xero") == [pending]
    assert await ids("--company", second) == sorted([deauthorized, deleted])
    assert await ids("--company", first, "--platform", "qhyg") == [linked]
    assert await ids("--status", "Linked", "--company", second) == []
    assert sorted(await ids()) == sorted([linked, pending, deauthorized, deleted])

    page = as_json(await cli("connections", "list", "--json", "--limit", "1"))
    assert len(page["results"]) == 1 and page["nextCursor"] is not None

    out = ok(await cli("connections", "list", "--company", first)).stdout
    header = out.splitlines()[0].split()
    assert header[:5] == ["id", "company", "name", "platform", "status"]
    assert any(linked in line and "Linked" in line and "Toft stores" in line
               for line in out.splitlines())
    assert any(pending in line and "PendingAuth" in line and "xero" in line
               for line in out.splitlines())
    assert deauthorized not in out
    assert "(none)" in ok(await cli("connections", "list", "--company", new_id())).stdout

    bad = fails(await cli("connections", "list", "--status", "Frobnicated"), 2)
    assert "Frobnicated" in bad.output
    fails(await cli("connections", "list", "--limit", "0"), 2)


# --- deliveries ------------------------------------------------------------------------------

async def test_deliveries_list_by_outcome_and_since(service: Service, cli: Cli) -> None:
    company, connection = new_id(), new_id()
    processed = (await moves(service, company, connection, LINK[:1]))[0]
    unparseable = await deliver(service, b"this is not json")
    ignored = await deliver(service, b'{"id": "e3", "eventType": "invoices.sparkled", '
                                     b'"generatedDate": "2026-11-01T00:00:00Z", "payload": {}}')

    rows = as_json(await cli("deliveries", "list", "--outcome", "unparseable", "--since", "1h",
                             "--json"))
    assert [r["messageId"] for r in rows] == [unparseable]
    assert rows[0]["outcome"] == "unparseable"
    assert "not JSON" in rows[0]["error"]
    assert "_receivedAt" not in rows[0] and "body" not in rows[0]

    out = ok(await cli("deliveries", "list", "--outcome", "unparseable", "--since", "1h")).stdout
    assert out.splitlines()[0].split()[:2] == ["message", "id"]
    assert any(unparseable in line and "unparseable" in line for line in out.splitlines())
    assert processed not in out and ignored not in out

    everything = as_json(await cli("deliveries", "list", "--json"))  # default: the last 24h
    assert [r["messageId"] for r in everything] == [processed, unparseable, ignored]
    assert [r["outcome"] for r in everything] == ["processed", "unparseable", "ignored"]
    assert everything[0]["companyId"] == company
    assert [r["companyName"] for r in everything] == ["Toft stores", None, None]
    table_out = ok(await cli("deliveries", "list")).stdout
    assert any(processed in line and "Toft stores" in line for line in table_out.splitlines())

    future = (utcnow() + timedelta(hours=1)).isoformat()
    assert as_json(await cli("deliveries", "list", "--since", future, "--json")) == []
    assert "(none)" in ok(await cli("deliveries", "list", "--since", future)).stdout
    fails(await cli("deliveries", "list", "--since", "yesterday"), 2)
    fails(await cli("deliveries", "list", "--outcome", "splendid"), 2)


async def test_deliveries_show_headers_without_signature_and_the_body_pretty(
        service: Service, cli: Cli) -> None:
    company, connection = new_id(), new_id()
    body = connection_body("connection.connected", company_id=company, connection_id=connection,
                           status="Linked", generated=at(0))
    headers = sign(body)
    response = await service.client.post("/webhooks/codat", content=body, headers=headers)
    assert response.status_code == 200
    message_id = headers["svix-id"]
    signatures = headers["svix-signature"].split(" ")
    assert signatures

    out = ok(await cli("deliveries", "show", message_id)).stdout
    assert f"messageId: {message_id}" in out
    assert "outcome: processed" in out
    assert "eventType: connection.connected" in out
    assert f"companyId: {company}" in out
    assert "error: -" in out
    assert f"{INDENT}svix-id: {message_id}" in out
    assert f"{INDENT}svix-timestamp: {headers['svix-timestamp']}" in out
    assert f"{INDENT}content-type: application/json" in out
    assert "signature" not in out.lower()
    for token in signatures:
        assert token not in out
        assert token.split(",", 1)[1] not in out
    pretty = orjson.dumps(orjson.loads(body), option=orjson.OPT_INDENT_2).decode().splitlines()
    assert len(pretty) > 10
    lines = out.splitlines()
    start = lines.index(INDENT + pretty[0])
    assert lines[start:start + len(pretty)] == [INDENT + line for line in pretty]

    data = as_json(await cli("deliveries", "show", message_id, "--json"))
    assert data["messageId"] == message_id
    assert data["outcome"] == "processed"
    assert data["body"] == {"encoding": "utf-8", "text": body.decode()}
    assert data["bodyPruned"] is False
    assert set(data["headers"]) == {"svix-id", "svix-timestamp", "content-type",
                                    "content-length", "user-agent"}
    assert not any("signature" in name for name in data["headers"])

    raw = await deliver(service, b"not json at all {")
    shown = ok(await cli("deliveries", "show", raw)).stdout
    assert f"{INDENT}not json at all {{" in shown
    assert "outcome: unparseable" in shown

    missing = fails(await cli("deliveries", "show", "msg_nope"))
    assert "no delivery msg_nope" in missing.output
    fails(await cli("deliveries", "show", "msg_nope", "--json"))


async def test_deliveries_show_a_pruned_body(service: Service, cli: Cli) -> None:
    message_id = (await moves(service, new_id(), new_id(), LINK[:1]))[0]
    ok(await cli("prune", "--older-than", "0s", "--apply", "--reason", "test"))
    out = ok(await cli("deliveries", "show", message_id)).stdout
    assert out.rstrip().endswith("body:\n" + INDENT + "(pruned)")
    assert "outcome: processed" in out
    data = as_json(await cli("deliveries", "show", message_id, "--json"))
    assert (data["body"], data["bodyPruned"]) == (None, True)


# --- replay ----------------------------------------------------------------------------------

async def test_replay_without_apply_lists_and_changes_nothing(service: Service,
                                                              cli: Cli) -> None:
    [(failed, _, connection)] = await failed_deliveries(service, 1)
    processed = (await moves(service, new_id(), new_id(), LINK[:1]))[0]
    before = await service.counts()

    result = ok(await cli("replay", "--outcome", "failed"))
    assert failed in result.stdout and processed not in result.stdout
    assert "1 deliveries would be replayed; add --apply --reason TEXT" in result.stderr
    assert as_json(await cli("replay", "--outcome", "failed", "--json")) == \
        [{"messageId": failed, "replayed": False}]
    listed = as_json(await cli("replay", "--since", "1h", "--json"))
    assert [r["messageId"] for r in listed] == [failed, processed]
    assert failed in ok(await cli("replay", failed)).stdout

    assert await service.counts() == before
    assert (await delivery(service, failed))["outcome"] == "failed"
    assert (await service.get(f"/v1/connections/{connection}")).status_code == 404


async def test_replay_apply_processes_a_failed_delivery(service: Service, cli: Cli) -> None:
    [(failed, company, connection)] = await failed_deliveries(service, 1)
    assert (await delivery(service, failed))["outcome"] == "failed"
    assert await service.count("connection_history") == 0

    data = as_json(await cli("replay", failed, "--apply", "--reason", "trigger fixed", "--json"))
    assert data == [{"messageId": failed, "replayed": True, "before": "failed",
                     "after": "processed", "moves": ["-->Linked applied"]}]
    state = await api(service, f"/v1/connections/{connection}")
    assert (state["status"], state["companyId"]) == ("Linked", company)
    [row] = await history(service, connection)
    assert (row["toState"], row["result"], row["deliveryId"]) == ("Linked", "applied", failed)
    stored = await delivery(service, failed)
    assert (stored["outcome"], stored["error"]) == ("processed", None)
    assert sorted(j["kind"] for j in await jobs(service)) == ["confirm_connection",
                                                              "reconcile_connection"]

    # Replayed again: nothing changes, and the table says so.
    before = await service.counts()
    out = ok(await cli("replay", failed, "--apply", "--reason", "again")).stdout
    line = next(line for line in out.splitlines() if failed in line)
    assert line.split()[1:] == ["True", "processed", "processed"]  # nothing changed
    assert await service.counts() == before


async def test_replay_of_processed_deliveries_twice_changes_nothing(service: Service,
                                                                    cli: Cli) -> None:
    company, connection, other = new_id(), new_id(), new_id()
    await moves(service, company, connection,
                [*LINK, ("connection.disconnected", "Deauthorized")])
    await deliver(service, legacy_body(company_id=company, connection_id=other,
                                       new_status="Linked", old_status="PendingAuth"))
    await deliver(service, read_completed_body(company_id=company, connection_id=connection,
                                               statuses={"bills": "Complete"}, generated=at(9)))
    await deliver(service, company_body("company.created", company_id=company,
                                        generated=at(9)))
    await deliver(service, b"not json")
    await deliver(service, b'{"id": "e3", "eventType": "invoices.sparkled", '
                           b'"generatedDate": "2026-11-01T00:00:00Z", "payload": {}}')
    before = await service.counts()
    assert before["deliveries"] == 8

    for reason in ("first replay", "second replay"):
        rows = as_json(await cli("replay", "--since", "1h", "--apply", "--reason", reason,
                                 "--json"))
        assert len(rows) == 8
        assert all(r["replayed"] for r in rows)
        assert all(r["before"] == r["after"] for r in rows)
        assert [r["moves"] for r in rows] == [[]] * 8
        assert await service.counts() == before
    assert (await api(service, f"/v1/connections/{connection}"))["status"] == "Deauthorized"


async def test_replay_usage_errors_and_missing_messages(service: Service, cli: Cli) -> None:
    [(failed, _, _)] = await failed_deliveries(service, 1)
    before = await service.counts()

    usage = fails(await cli("replay", failed, "--apply"), 2)
    assert "--reason" in usage.output
    fails(await cli("replay", "--outcome", "failed", "--apply"), 2)
    fails(await cli("replay"), 2)
    fails(await cli("replay", failed, "--outcome", "failed"), 2)
    fails(await cli("replay", "--since", "last tuesday"), 2)
    assert await service.counts() == before
    assert (await delivery(service, failed))["outcome"] == "failed"

    missing = fails(await cli("replay", "msg_nope", "--apply", "--reason", "why", "--json"))
    assert "no delivery msg_nope" in missing.output
    assert await service.counts() == before


async def test_replay_dry_run_of_a_missing_message_exits_non_zero(service: Service,
                                                                  cli: Cli) -> None:
    fails(await cli("replay", "msg_nope"))


async def test_replay_that_fails_again_exits_non_zero_and_keeps_the_delivery(
        service: Service, cli: Cli) -> None:
    [(failed, _, connection)] = await failed_deliveries(service, 1)
    await install_failure(service.db, connection)
    try:
        before = await service.counts()
        result = fails(await cli("replay", failed, "--apply", "--reason", "too soon", "--json"))
        [row] = orjson.loads(result.stdout)
        assert (row["replayed"], row["after"]) == (False, "failed")
        assert "injected failure" in row["error"]
        assert await service.counts() == before
        assert (await delivery(service, failed))["outcome"] == "failed"
    finally:
        await remove_failure(service.db)
    ok(await cli("replay", failed, "--apply", "--reason", "fixed now"))
    assert (await delivery(service, failed))["outcome"] == "processed"


async def test_replay_of_a_pruned_body_exits_non_zero(service: Service, cli: Cli) -> None:
    message_id = (await moves(service, new_id(), new_id(), LINK[:1]))[0]
    ok(await cli("prune", "--older-than", "0s", "--apply", "--reason", "test"))
    result = fails(await cli("replay", message_id, "--apply", "--reason", "why", "--json"))
    assert orjson.loads(result.stdout)[0]["replayed"] is False


async def test_replay_interrupted_then_run_again(service: Service, cli: Cli) -> None:
    seeded = await failed_deliveries(service, 3)
    # The first run was stopped after its first delivery (each replay is its own transaction).
    first = await oncall.replay_one(service.db, seeded[0][0], who=ACTOR, why="interrupted")
    assert (first.before, first.after) == ("failed", "processed")

    rows = as_json(await cli("replay", "--outcome", "failed", "--apply", "--reason",
                             "carry on", "--json"))
    assert [r["messageId"] for r in rows] == [m for m, _, _ in seeded[1:]]
    assert all((r["before"], r["after"]) == ("failed", "processed") for r in rows)
    for message_id, _, connection in seeded:
        assert (await api(service, f"/v1/connections/{connection}"))["status"] == "Linked"
        assert len(await history(service, connection)) == 1
        assert (await delivery(service, message_id))["outcome"] == "processed"

    before = await service.counts()
    assert as_json(await cli("replay", "--outcome", "failed", "--apply", "--reason", "again",
                             "--json")) == []
    rows = as_json(await cli("replay", "--since", "1h", "--apply", "--reason", "all again",
                             "--json"))
    assert len(rows) == 3 and all(r["moves"] == [] for r in rows)
    assert await service.counts() == before


# --- reconcile against the sandbox Codat ---------------------------------------------------------

@dataclass
class Codat:
    """The sandbox Codat on a loopback port; its webhooks are recorded, never sent."""

    url: str
    app: Any
    http: httpx.AsyncClient
    forwarded: set[str] = field(default_factory=set)

    async def create_company(self, name: str = "Toft stores") -> str:
        response = await self.http.post("/companies", json={"name": name})
        assert response.status_code == 200, response.text
        return str(response.json()["id"])

    async def create_connection(self, company_id: str) -> str:
        response = await self.http.post(f"/companies/{company_id}/connections",
                                        json={"platformKey": "qhyg"})
        assert response.status_code == 200, response.text
        return str(response.json()["id"])

    async def smb(self, action: str, company_id: str, connection_id: str) -> None:
        response = await self.http.post(
            f"/_sandbox/companies/{company_id}/connections/{connection_id}/{action}")
        assert response.status_code == 200, response.text

    async def forward(self, service: Service) -> list[str]:
        """Deliver, signed, the company and connection events not forwarded yet."""
        sent = []
        for message in list(self.app.state.sandbox.webhooks.messages.values()):
            if message.id in self.forwarded or message.event_type.startswith("read."):
                continue
            self.forwarded.add(message.id)
            sent.append(await deliver(service, message.body.encode(), msg_id=message.id))
        return sent

    async def onboard(self, service: Service) -> tuple[str, str]:
        """A company with a Linked connection, known to us through its webhooks."""
        company = await self.create_company()
        connection = await self.create_connection(company)
        await self.smb("authorize", company, connection)
        await self.forward(service)
        return company, connection


@pytest.fixture
async def codat() -> AsyncIterator[Codat]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config = SandboxConfig(api_key=API_KEY, webhook_secret=SECRET, webhook_url=None,
                           public_url=url, read_delay=0.05)
    app = create_sandbox_app(config)
    async with running(app, port=port) as base, httpx.AsyncClient(
            base_url=base, timeout=10, headers={"Authorization": config.authorization}) as http:
        yield Codat(base, app, http)


@pytest.fixture
def reconcile_cli(cli: Cli, codat: Codat) -> Cli:
    return Cli({**cli.env, "CODAT_BASE_URL": codat.url})


async def test_reconcile_prints_drift_then_applies_it(service: Service, codat: Codat,
                                                      reconcile_cli: Cli) -> None:
    cli = reconcile_cli
    company, connection = await codat.onboard(service)
    assert (await api(service, f"/v1/connections/{connection}"))["status"] == "Linked"
    await codat.smb("deauthorize", company, connection)  # only Codat knows
    before = await service.counts()

    out = ok(await cli("reconcile", "--company", company)).stdout
    line = next(line for line in out.splitlines() if connection in line)
    assert line.split() == [company, "Toft", "stores", connection, "Linked", "Deauthorized",
                            "False"]
    report = as_json(await cli("reconcile", "--company", company, "--json"))
    assert report == {"companies": 1, "errors": [], "drift": [
        {"company": company, "name": "Toft stores", "connection": connection,
         "ours": "Linked", "codat": "Deauthorized", "corrected": False}]}
    assert await service.counts() == before
    assert (await api(service, f"/v1/connections/{connection}"))["status"] == "Linked"

    fails(await cli("reconcile", "--company", company, "--apply"), 2)
    assert await service.counts() == before

    report = as_json(await cli("reconcile", "--company", company, "--apply", "--reason",
                               "customer says they revoked access", "--json"))
    assert report["drift"] == [{"company": company, "name": "Toft stores",
                                "connection": connection, "ours": "Linked",
                                "codat": "Deauthorized", "corrected": True}]
    state = await api(service, f"/v1/connections/{connection}")
    assert state["status"] == "Deauthorized"
    assert state["errors"] and state["errors"][-1]["statusCode"] == "401"
    last = (await history(service, connection))[-1]
    assert (last["fromState"], last["toState"], last["result"], last["source"]) == \
        ("Linked", "Deauthorized", "applied", "reconcile")
    assert ACTOR in last["reason"]
    assert "customer says they revoked access" in last["reason"]

    again = as_json(await cli("reconcile", "--company", company, "--json"))
    assert again == {"companies": 1, "drift": [], "errors": []}
    after = await service.counts()
    assert as_json(await cli("reconcile", "--company", company, "--apply", "--reason",
                             "once more", "--json"))["drift"] == []
    assert await service.counts() == after


async def test_reconcile_usage_errors(service: Service, reconcile_cli: Cli) -> None:
    fails(await reconcile_cli("reconcile"), 2)
    fails(await reconcile_cli("reconcile", "--company", "c", "--all"), 2)
    fails(await reconcile_cli("reconcile", "--all", "--apply"), 2)


async def test_reconcile_dry_run_writes_nothing_for_a_connection_only_codat_knows(
        service: Service, codat: Codat, reconcile_cli: Cli) -> None:
    company, _ = await codat.onboard(service)
    await codat.create_connection(company)  # never forwarded: we do not know it
    before = await service.counts()
    report = as_json(await reconcile_cli("reconcile", "--company", company, "--json"))
    assert [(d["ours"], d["codat"]) for d in report["drift"]] == [(None, "PendingAuth")]
    assert await service.counts() == before


async def test_reconcile_apply_adds_a_connection_only_codat_knows(
        service: Service, codat: Codat, reconcile_cli: Cli) -> None:
    company, _ = await codat.onboard(service)
    unknown = await codat.create_connection(company)
    report = as_json(await reconcile_cli("reconcile", "--company", company, "--apply",
                                         "--reason", "backfill", "--json"))
    assert report["drift"] == [{"company": company, "name": "Toft stores",
                                "connection": unknown, "ours": None,
                                "codat": "PendingAuth", "corrected": True}]
    state = await api(service, f"/v1/connections/{unknown}")
    assert (state["status"], state["platformKey"]) == ("PendingAuth", "qhyg")
    [row] = await history(service, unknown)
    assert (row["source"], row["toState"]) == ("reconcile", "PendingAuth")


async def test_reconcile_all_covers_several_companies(service: Service, codat: Codat,
                                                      reconcile_cli: Cli) -> None:
    cli = reconcile_cli
    onboarded = [await codat.onboard(service) for _ in range(4)]
    (c1, x1), (c2, x2), (c3, x3), _ = onboarded
    await codat.smb("deauthorize", c1, x1)
    await codat.smb("deauthorize", c2, x2)
    response = await codat.http.delete(f"/companies/{c3}")  # its connections go with it
    assert response.status_code == 204
    before = await service.counts()

    report = as_json(await cli("reconcile", "--all", "--json"))
    assert report["companies"] == 4 and report["errors"] == []
    expected = sorted([(c1, x1, "Linked", "Deauthorized"), (c2, x2, "Linked", "Deauthorized"),
                       (c3, x3, "Linked", "Deleted")])
    assert sorted((d["company"], d["connection"], d["ours"], d["codat"])
                  for d in report["drift"]) == expected
    assert await service.counts() == before

    report = as_json(await cli("reconcile", "--all", "--apply", "--reason", "weekly check",
                               "--json"))
    assert sorted((d["company"], d["connection"], d["ours"], d["codat"], d["corrected"])
                  for d in report["drift"]) == [(*d, True) for d in expected]
    for company, connection, _, codat_state in expected:
        state = await api(service, f"/v1/connections/{connection}")
        if codat_state == "Deleted":
            assert state["deleted"] is True
        else:
            assert state["status"] == codat_state
        last = (await history(service, connection))[-1]
        assert (last["source"], last["toState"]) == ("reconcile", codat_state)
        assert f"reconcile by {ACTOR}: weekly check" in last["reason"]
        assert company in (c1, c2, c3)

    again = as_json(await cli("reconcile", "--all", "--json"))
    assert again["drift"] == [] and again["errors"] == []


async def test_reconcile_exits_non_zero_when_codat_fails(service: Service, codat: Codat,
                                                         reconcile_cli: Cli) -> None:
    company, connection = await codat.onboard(service)
    await codat.smb("deauthorize", company, connection)
    before = await service.counts()
    result = fails(await reconcile_cli("reconcile", "--company", company, "--apply",
                                       "--reason", "why", CODAT_API_KEY="not-the-key"))
    assert f"error: {company}: Codat list-connections answered 401" in result.stderr
    assert await service.counts() == before
    nowhere = fails(await reconcile_cli("reconcile", "--company", company,
                                        CODAT_BASE_URL=NOWHERE))
    assert f"error: {company}: Codat list-connections: ConnectError" in nowhere.stderr
    no_key = fails(await reconcile_cli("reconcile", "--company", company, CODAT_API_KEY=None))
    assert "CODAT_API_KEY" in no_key.output


# --- outbox ----------------------------------------------------------------------------------

async def dead_jobs(service: Service) -> list[str]:
    """Two follow-up jobs Codat refused for good (dead on their first attempt)."""
    company, linked, rejected = new_id(), new_id(), new_id()
    await moves(service, company, linked, LINK)
    await moves(service, company, rejected, [("connection.created", "PendingAuth"),
                                             ("connection.disconnected", "Unlinked")], start=5)
    assert await run_jobs(service, fake_codat(refuse=frozenset({linked, rejected}))) == 2
    rows = await jobs(service)
    assert [(r["status"], r["attempts"]) for r in rows] == [("dead", 1), ("dead", 1)]
    return [r["id"] for r in rows]


async def test_outbox_list_by_status(service: Service, cli: Cli) -> None:
    dead = await dead_jobs(service)
    rows = as_json(await cli("outbox", "list", "--status", "dead", "--json"))
    assert [r["id"] for r in rows] == dead
    assert all(r["status"] == "dead" and "answered 403" in r["lastError"] for r in rows)
    assert sorted(r["kind"] for r in rows) == ["confirm_connection", "reconcile_connection"]
    assert as_json(await cli("outbox", "list", "--status", "pending", "--json")) == []
    out = ok(await cli("outbox", "list", "--status", "dead")).stdout
    for job_id in dead:
        assert any(job_id in line and " dead " in line and "Toft stores" in line
                   for line in out.splitlines())
    assert all(r["companyName"] == "Toft stores" for r in rows)
    assert len(as_json(await cli("outbox", "list", "--json"))) == 2
    fails(await cli("outbox", "list", "--status", "sleeping"), 2)


async def test_outbox_retry(service: Service, cli: Cli) -> None:
    first, second = await dead_jobs(service)

    fails(await cli("outbox", "retry", "--dead"), 2)  # no --apply
    fails(await cli("outbox", "retry", "--dead", "--apply"), 2)  # no --reason
    fails(await cli("outbox", "retry", "--apply", "--reason", "why"), 2)  # neither
    fails(await cli("outbox", "retry", first, "--dead", "--apply", "--reason", "why"), 2)
    assert [r["status"] for r in await jobs(service)] == ["dead", "dead"]

    out = ok(await cli("outbox", "retry", first, "--apply", "--reason", "codat fixed")).stdout
    assert f"1 job(s) pending again: {first}" in out
    rows = {r["id"]: r for r in await jobs(service)}
    assert (rows[first]["status"], rows[first]["attempts"]) == ("pending", 0)
    assert rows[second]["status"] == "dead"

    not_dead = fails(await cli("outbox", "retry", first, "--apply", "--reason", "again"))
    assert f"job {first} is not dead" in not_dead.output
    fails(await cli("outbox", "retry", "job_nope", "--apply", "--reason", "why"))

    out = ok(await cli("outbox", "retry", "--dead", "--apply", "--reason", "all of them")).stdout
    assert f"1 job(s) pending again: {second}" in out
    assert [(r["status"], r["attempts"]) for r in await jobs(service)] == [("pending", 0)] * 2
    assert as_json(await cli("outbox", "list", "--status", "dead", "--json")) == []
    # Pending again, and due now: the worker runs them (the reconcile finds the rejected
    # connection Linked at Codat, moves it, and queues its confirm job, which runs too).
    assert await run_jobs(service, fake_codat()) == 3
    assert {r["id"]: r["status"] for r in await jobs(service) if r["id"] in (first, second)} \
        == {first: "done", second: "done"}
    assert "0 job(s) pending again" in ok(await cli("outbox", "retry", "--dead", "--apply",
                                                    "--reason", "none left")).stdout


# --- prune -----------------------------------------------------------------------------------

async def bodies(service: Service) -> dict[str, bool]:
    """message id -> whether its body is still stored."""
    rows = await service.rows("SELECT message_id, body IS NOT NULL AS kept FROM deliveries")
    return {r["message_id"]: bool(r["kept"]) for r in rows}


async def test_prune_drops_bodies_and_keeps_dedupe_records(service: Service, cli: Cli) -> None:
    company, connection = new_id(), new_id()
    body = connection_body("connection.connected", company_id=company, connection_id=connection,
                           status="Linked", generated=at(0))
    headers = sign(body)
    assert (await service.client.post("/webhooks/codat", content=body,
                                      headers=headers)).status_code == 200
    recent = headers["svix-id"]
    unparseable = await deliver(service, b"not json")
    [(failed, _, _)] = await failed_deliveries(service, 1)
    ten_days = await old_delivery(service, age=timedelta(days=10))
    forty_days = await old_delivery(service, age=timedelta(days=40))

    result = ok(await cli("prune", "--older-than", "0s", "--apply", "--reason", "retention"))
    assert "pruned 4 bodies, forgot 1 records" in result.stdout
    assert await bodies(service) == {recent: False, unparseable: False, ten_days: False,
                                     failed: True}  # a failed delivery is still to replay
    assert forty_days not in await bodies(service)

    # A redelivery of a pruned message is still a duplicate: 200, and nothing changes.
    before = await service.counts()
    again = await service.client.post("/webhooks/codat", content=body, headers=headers)
    assert again.status_code == 200
    assert again.json() == {"outcome": "processed", "disposition": "duplicate"}
    assert await service.counts() == before
    other = await service.deliver(b'{"another": "body"}', msg_id=recent)
    assert other.status_code == 409  # its hash is kept: a different body is still a conflict

    assert "pruned 0 bodies, forgot 0 records" in ok(await cli(
        "prune", "--older-than", "0s", "--apply", "--reason", "retention")).stdout


async def test_prune_never_forgets_records_younger_than_30_days(service: Service,
                                                                cli: Cli) -> None:
    young = [await old_delivery(service, age=timedelta(days=d)) for d in (2, 29)]
    old = await old_delivery(service, age=timedelta(days=31))
    result = ok(await cli("prune", "--older-than", "1d", "--keep-dedupe", "1d", "--apply",
                          "--reason", "too eager"))
    assert "pruned 3 bodies, forgot 1 records" in result.stdout
    assert set(await bodies(service)) == set(young)
    assert old not in await bodies(service)
    # Bodies younger than --older-than are kept.
    fresh = await deliver(service, b"not json")
    ok(await cli("prune", "--older-than", "1h", "--apply", "--reason", "r"))
    assert (await bodies(service))[fresh] is True


async def test_prune_needs_apply_reason_and_a_duration(service: Service, cli: Cli) -> None:
    message_id = await deliver(service, b"not json")
    usage = fails(await cli("prune", "--older-than", "0s"), 2)
    assert "--apply" in usage.output
    fails(await cli("prune", "--older-than", "0s", "--apply"), 2)
    fails(await cli("prune", "--apply", "--reason", "r"), 2)
    for bad in ("7", "1.5h", "1h30m", "-1d", "7 days", "d"):
        fails(await cli("prune", "--older-than", bad, "--apply", "--reason", "r"), 2)
    fails(await cli("prune", "--older-than", "1d", "--keep-dedupe", "forever", "--apply",
                    "--reason", "r"), 2)
    assert (await bodies(service))[message_id] is True
    for good in ("90s", "15m", "12h", "30d", "2w"):
        ok(await cli("prune", "--older-than", good, "--apply", "--reason", "r"))
    assert (await bodies(service))[message_id] is True


async def test_prune_interrupted_then_run_again(service: Service, cli: Cli) -> None:
    processed = [await deliver(service, b"not json %d" % n) for n in range(5)]
    [(failed, _, _)] = await failed_deliveries(service, 1)
    ancient = [await old_delivery(service, age=timedelta(days=60)) for _ in range(3)]
    # A first run, stopped after its first batch of two bodies.
    run = oncall.prune(service.db, older_than=timedelta(0), keep_dedupe=timedelta(days=30),
                       who=ACTOR, why="interrupted", batch=2)
    assert await anext(run) == ("bodies", 2)
    await run.aclose()
    assert sum(not kept for kept in (await bodies(service)).values()) == 2

    result = ok(await cli("prune", "--older-than", "0s", "--apply", "--reason", "carry on"))
    assert "pruned 6 bodies, forgot 3 records" in result.stdout  # 2 + 6 = 5 recent + 3 old
    assert await bodies(service) == {**dict.fromkeys(processed, False), failed: True}
    assert not set(ancient) & set(await bodies(service))
    # The failed delivery kept its body and can still be replayed.
    ok(await cli("replay", failed, "--apply", "--reason", "after prune"))


async def test_write_commands_answer_json_for_scripts(service: Service, cli: Cli) -> None:
    as_json(await cli("prune", "--older-than", "30d", "--apply", "--reason", "r", "--json"))
    as_json(await cli("outbox", "retry", "--dead", "--apply", "--reason", "r", "--json"))


# --- who asked, and why ------------------------------------------------------------------------

@pytest.fixture
def trace_records() -> Iterator[list[logging.LogRecord]]:
    """Every record of the service's loggers, whatever logging was configured before."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("codat_hooks")
    handler, level = Keep(logging.DEBUG), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def traces(records: list[logging.LogRecord], action: str) -> list[dict[str, Any]]:
    return [r.fields for r in records  # type: ignore[attr-defined]
            if r.getMessage() == f"on-call {action}"]


async def test_every_write_traces_who_asked_and_why(service: Service, cli: Cli,
                                                    trace_records: list[logging.LogRecord],
                                                    ) -> None:
    dead = await dead_jobs(service)
    ok(await cli("outbox", "retry", "--dead", "--apply", "--reason", "retry-why"))
    [retried] = traces(trace_records, "outbox retry")
    assert (retried["actor"], retried["reason"], sorted(retried["jobs"])) == \
        (ACTOR, "retry-why", sorted(dead))

    [(failed, _, _)] = await failed_deliveries(service, 1)
    ok(await cli("replay", failed, "--apply", "--reason", "replay-why"))
    [replayed] = traces(trace_records, "replay")
    assert (replayed["actor"], replayed["reason"], replayed["message_id"]) == \
        (ACTOR, "replay-why", failed)
    assert (replayed["before"], replayed["after"], replayed["moves"]) == ("failed", "processed", 1)

    ok(await cli("prune", "--older-than", "0s", "--apply", "--reason", "prune-why",
                 CODAT_HOOKS_ACTOR=None))  # no actor set: the OS user
    [pruned] = traces(trace_records, "prune")
    assert (pruned["actor"], pruned["reason"]) == (getpass.getuser(), "prune-why")

    # Dry runs and reads leave no write trace.
    trace_records.clear()
    ok(await cli("replay", failed))
    ok(await cli("outbox", "list"))
    ok(await cli("deliveries", "list"))
    assert [r for r in trace_records if r.getMessage().startswith("on-call")] == []


async def test_reconcile_traces_the_actor_in_log_and_history(
        service: Service, codat: Codat, reconcile_cli: Cli,
        trace_records: list[logging.LogRecord]) -> None:
    company, connection = await codat.onboard(service)
    await codat.smb("deauthorize", company, connection)
    ok(await reconcile_cli("reconcile", "--company", company, "--apply", "--reason", "r-why",
                           CODAT_HOOKS_ACTOR="someone-else"))
    [traced] = traces(trace_records, "reconcile")
    assert (traced["actor"], traced["reason"], traced["connection_id"], traced["applied"]) == \
        ("someone-else", "r-why", connection, True)
    assert (await history(service, connection))[-1]["reason"] == \
        "reconcile by someone-else: r-why"


def test_a_real_cli_process_prints_its_write_trace(database_url: str) -> None:
    env = {**os.environ, "DATABASE_URL": database_url, "CODAT_HOOKS_ACTOR": ACTOR}
    command = [sys.executable, "-c", "from service.cli import main; main()", "prune",
               "--older-than", "30d", "--apply", "--reason", "trace-me-please"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert "pruned 0 bodies" in done.stdout
    assert "trace-me-please" in done.stdout + done.stderr
    assert ACTOR in done.stdout + done.stderr


# --- settings ---------------------------------------------------------------------------------

async def test_bad_settings_exit_non_zero_naming_the_variable(service: Service,
                                                              cli: Cli) -> None:
    for args in (["status", "c"], ["connections", "list"], ["deliveries", "list"],
                 ["outbox", "list"], ["prune", "--older-than", "1d", "--apply", "--reason", "r"]):
        result = fails(await cli(*args, DATABASE_URL="mysql://somewhere/db"))
        assert "invalid configuration: DATABASE_URL" in result.output


# --- the change feed on the terminal -------------------------------------------------------------

async def test_events_tail_prints_the_latest_changes(service: Service, cli: Cli) -> None:
    company, other = new_id(), new_id()
    mine, theirs = new_id(), new_id()
    await moves(service, company, mine, LINK)
    await moves(service, other, theirs, LINK, start=10)
    lines = ok(await cli("events", "tail", "-n", "3")).stdout.splitlines()
    assert len(lines) == 3 and all(theirs in line or mine in line for line in lines)
    assert "PendingAuth -> Linked" in lines[-1] and "connection.connected" in lines[-1]
    printed = [orjson.loads(line) for line in ok(await cli(
        "events", "tail", "--company", company, "--json")).stdout.splitlines()]
    assert [(c["connectionId"], c["data"]["to"]) for c in printed] == [
        (mine, "PendingAuth"), (mine, "Linked")]
    assert "\x1b" not in ok(await cli("events", "tail")).stdout


async def test_events_tail_follow_prints_each_change_as_it_commits(service: Service) -> None:
    env = {**os.environ, "DATABASE_URL": service.settings.database_url, "LOG_LEVEL": "WARNING"}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service.cli", "events", "tail", "--follow", "-n", "0", "--json",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        await asyncio.sleep(1.5)  # started, and waiting
        company, connection = new_id(), new_id()
        await moves(service, company, connection, LINK)
        assert process.stdout is not None
        seen = [orjson.loads(await asyncio.wait_for(process.stdout.readline(), 15))
                for _ in LINK]
        assert [(c["connectionId"], c["data"]["to"]) for c in seen] == [
            (connection, "PendingAuth"), (connection, "Linked")]
    finally:
        process.terminate()
        await process.wait()
