"""Codat's newest word wins (issue #10): the stored state is a function of the set of events
received, never of their order. Property-based over generated histories and delivery orders
(tests/newest_word.py), through the real receiver path, on SQLite and PostgreSQL; then the
regressions issue #10 lists, each as a plain test."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.order import new_message_id
from service import store
from service.db import Database, Tx, open_database, sql, utcnow
from tests.conftest import TABLES, Service, make_settings, start_service, truncate_postgres
from tests.factories import (
    at,
    connection_body,
    legacy_body,
    new_id,
    sign,
)
from tests.flow import Flow, eventually, flow
from tests.newest_word import (
    Message,
    assert_newest_word_holds,
    assert_readiness_holds,
    deliveries,
    histories,
    rows,
    state_of,
)

# Examples per case; CI runs the default, a deeper local run sets more.
EXAMPLES = int(os.environ.get("NEWEST_WORD_EXAMPLES", "20"))
PROPERTY = settings(max_examples=EXAMPLES, deadline=None, derandomize=False,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow, HealthCheck.data_too_large])


async def wipe(db: Database) -> None:
    async def work(tx: Tx) -> None:
        for table in TABLES:
            await tx.execute(sql(f"DELETE FROM {table}"))
    await db.write(work)


async def send(client: httpx.AsyncClient, plan: Sequence[Message], *, batched: bool) -> None:
    """Deliver ``plan`` in its order: one at a time, or eight at once (as Svix's concurrent
    attempts arrive, so that the receiver commits them as one batch)."""
    async def one(message: Message) -> None:
        headers = sign(message.body, msg_id=message.message_id)
        response = await client.post("/webhooks/codat", content=message.body, headers=headers)
        assert response.status_code == 200, response.text
    step = 8 if batched else 1
    for start in range(0, len(plan), step):
        await asyncio.gather(*(one(m) for m in plan[start:start + step]))


@pytest.mark.parametrize("batched", [False, True], ids=["one at a time", "batched"])
@PROPERTY
@given(data=st.data())
async def test_the_state_is_the_newest_words_whatever_the_delivery_order(
        service: Service, batched: bool, data: st.DataObject) -> None:
    history = data.draw(histories(), label="history")
    plan = data.draw(deliveries(history), label="deliveries")
    await wipe(service.db)
    await send(service.client, plan, batched=batched)
    await assert_newest_word_holds(service.db, history)


@pytest.fixture
async def two_receivers(postgres_url: str) -> AsyncIterator[list[httpx.AsyncClient]]:
    await asyncio.to_thread(truncate_postgres, postgres_url)
    started = [await start_service(make_settings(postgres_url)) for _ in range(2)]
    try:
        yield [client for _, _, client in started]
    finally:
        for _, lifespan, client in started:
            await client.aclose()
            await lifespan.__aexit__(None, None, None)


@pytest.mark.postgres
@PROPERTY
@given(data=st.data())
async def test_two_receivers_fed_interleaved_orders_at_once_agree(
        two_receivers: list[httpx.AsyncClient], postgres_url: str,
        data: st.DataObject) -> None:
    # Every message goes to both replicas, each in an order of its own, at the same time.
    history = data.draw(histories(), label="history")
    first = data.draw(deliveries(history), label="to the first receiver")
    second = data.draw(st.permutations(history.messages), label="to the second receiver")
    db = open_database(postgres_url)
    await db.start()
    try:
        await wipe(db)
        await asyncio.gather(send(two_receivers[0], first, batched=True),
                             send(two_receivers[1], second, batched=True))
        await assert_newest_word_holds(db, history)
    finally:
        await db.close()


# --- the same with Codat reachable: after the worker drains, the state is Codat's ----------------

SANDBOX_EXAMPLES = int(os.environ.get("NEWEST_WORD_SANDBOX_EXAMPLES", "4"))
# What the SMB (or we, through Codat's API) can do to a connection in each status.
_SANDBOX_MOVES: dict[str, list[str]] = {
    "PendingAuth": ["authorize", "decline", "delete"],
    "Linked": ["deauthorize", "unlink", "delete"],
    "Unlinked": ["authorize", "delete"],
    "Deauthorized": ["authorize", "delete"],
}


async def _act(f: Flow, action: str, company: str, connection: str) -> str | None:
    """Do ``action`` at Codat; the connection's status at Codat after it (None: deleted)."""
    path = f"/companies/{company}/connections/{connection}"
    if action == "delete":
        assert (await f.codat("DELETE", path)).status_code == 200
        return None
    if action == "unlink":
        response = await f.codat("PATCH", path, json={"status": "Unlinked"})
        assert response.status_code == 200, response.text
        return str(response.json()["status"])
    return str((await f.smb(action, company, connection))["connection"]["status"])


async def _quiet(f: Flow) -> None:
    """Every webhook delivered and every job finished, twice in a row."""
    calm = 0

    async def settled() -> bool:
        nonlocal calm
        messages = await f.messages()
        jobs = await f.jobs()
        if all(m["state"] == "delivered" for m in messages) \
                and all(j["status"] in ("done", "dead") for j in jobs):
            calm += 1
        else:
            calm = 0
        return calm >= 3
    await eventually(settled, timeout=30, interval=0.1, what="webhooks and jobs to settle")


@settings(max_examples=SANDBOX_EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
async def test_with_codat_reachable_the_state_ends_as_codats(database_url: str,
                                                            data: st.DataObject) -> None:
    # Onboarded through our API; then the SMB and Codat move the connections while Codat's
    # webhooks are held, which then arrive in an order Hypothesis picks, some twice; the worker
    # runs the follow-ups against the sandbox.
    async with flow(database_url) as f:
        await f.control("/webhooks/pause")
        connections: dict[str, str] = {}
        for _ in range(data.draw(st.integers(1, 2), label="companies")):
            company = await f.create_company()
            for _ in range(data.draw(st.integers(1, 2), label="connections")):
                connection = (await f.create_connection(company))["id"]
                connections[connection] = company
                status: str | None = "PendingAuth"
                for _ in range(data.draw(st.integers(0, 4), label="moves")):
                    assert status is not None
                    action = data.draw(st.sampled_from(_SANDBOX_MOVES[status]), label="move")
                    status = await _act(f, action, company, connection)
                    if status is None:
                        break
            if data.draw(st.integers(0, 4), label="delete the company") == 0:
                assert (await f.codat("DELETE", f"/companies/{company}")).status_code == 204
        order = data.draw(st.sampled_from(["shuffle", "reverse", "fifo"]), label="order")
        await f.control("/webhooks/resume", {"order": order,
                                             "duplicates": data.draw(st.integers(0, 1))})
        await _quiet(f)
        for connection, company in connections.items():
            at_codat = await f.codat("GET", f"/companies/{company}/connections/{connection}")
            codat = "Deleted" if at_codat.status_code == 404 else at_codat.json()["status"]
            ours = await f.connection(connection)
            assert ("Deleted" if ours["deleted"] else ours["status"]) == codat, (
                connection, await f.history(connection))
        await assert_readiness_holds(f.db)


# --- the regressions of issue #10, one by one -------------------------------------------------

async def deliver_all(service: Service, *bodies: bytes, **sign_options: Any) -> None:
    for body in bodies:
        response = await service.deliver(body, **sign_options)
        assert response.status_code == 200, response.text


async def connection_state(service: Service, connection: str) -> Any:
    [row] = await service.rows("SELECT status, deleted FROM connections WHERE id = $1",
                               connection)
    return state_of(row)


async def test_a_late_older_event_never_undoes_a_newer_skip(service: Service) -> None:
    # created (t0), disconnected (t2), then the older connected (t1) last, as a retry does.
    company, connection = new_id(), new_id()
    await deliver_all(service, *(connection_body(
        kind, company_id=company, connection_id=connection, status=status, generated=at(t))
        for kind, status, t in (("connection.created", "PendingAuth", 0),
                                ("connection.disconnected", "Deauthorized", 2),
                                ("connection.connected", "Linked", 1))))
    assert await connection_state(service, connection) == "Deauthorized"
    history = await service.rows("SELECT to_state, result, skipped FROM connection_history "
                                 "WHERE connection_id = $1 ORDER BY id", connection)
    assert [(h["to_state"], h["result"], bool(h["skipped"])) for h in history] == [
        ("PendingAuth", "applied", False), ("Deauthorized", "applied", True),
        ("Linked", "superseded", False)]


async def test_a_late_legacy_body_is_ordered_by_its_message_id(service: Service) -> None:
    # Linked -> Deauthorized -> Linked, then the middle "Linked -> Deauthorized" again, late:
    # its oldStatus matches, but its message was created before the reconnect's.
    company, connection = new_id(), new_id()
    steps = [("PendingAuth", "Linked", 1), ("Linked", "Deauthorized", 2),
             ("Deauthorized", "Linked", 3)]
    bodies = [(legacy_body(company_id=company, connection_id=connection, old_status=old,
                           new_status=new), new_message_id(at(t))) for old, new, t in steps]
    for body, message_id in [*bodies[:1], bodies[2], bodies[1]]:
        await deliver_all(service, body, msg_id=message_id)
    assert await connection_state(service, connection) == "Linked"


async def test_two_events_100_ns_apart_do_not_tie(service: Service) -> None:
    company, connection = new_id(), new_id()
    bodies = []
    for kind, status, instant in (("connection.connected", "Linked", "12:00:00.1234567"),
                                  ("connection.disconnected", "Unlinked", "12:00:00.1234568")):
        document = orjson.loads(connection_body(kind, company_id=company,
                                                connection_id=connection, status=status,
                                                generated=at(0)))
        document["generatedDate"] = f"2026-11-01T{instant}Z"
        bodies.append(orjson.dumps(document))
    await deliver_all(service, bodies[1], bodies[0])  # the newer one first
    assert await connection_state(service, connection) == "Unlinked"


@pytest.mark.parametrize(("name", "generated_date"), [
    ("the calendar's edge", "9999-12-31T23:59:59-23:59"),
    ("before year 1 in UTC", "0001-01-01T00:00:00+00:30"),
])
async def test_a_date_utc_cannot_hold_is_stored_as_unusable_not_a_500(
        service: Service, name: str, generated_date: str) -> None:
    document = orjson.loads(connection_body("connection.connected", company_id=new_id(),
                                            connection_id=new_id(), status="Linked",
                                            generated=at(0)))
    document["generatedDate"] = generated_date
    body = orjson.dumps(document)
    message_id = new_message_id()
    for _ in range(2):  # Codat's retry gets the same answer, not a loop of 500s
        response = await service.deliver(body, msg_id=message_id)
        assert response.status_code == 200, response.text
    [stored] = await service.rows("SELECT outcome, error FROM deliveries")
    assert stored["outcome"] == "unparseable" and "generatedDate" in stored["error"]
    assert await service.count("connections") == 0


async def test_a_nul_is_stored_as_unusable_on_every_database(service: Service) -> None:
    body = connection_body("connection.connected", company_id=new_id(), connection_id=new_id(),
                           status="Linked", generated=at(0)).replace(b"Toft stores",
                                                                     b"Toft\\u0000stores")
    message_id = new_message_id()
    for _ in range(2):
        response = await service.deliver(body, msg_id=message_id)
        assert response.status_code == 200, response.text
        assert response.json()["outcome"] == "unparseable"
    [stored] = await service.rows("SELECT outcome, error, body FROM deliveries")
    assert "NUL" in stored["error"] and bytes(stored["body"]) == body  # kept, exactly


# --- billPayReady never outlives the last Linked connection -----------------------------------

_HOLD = "SELECT id FROM companies WHERE id = $1 FOR UPDATE"


async def _waiting_on_a_lock(url: str, count: int) -> None:
    conn = await asyncpg_connect(url)
    try:
        for _ in range(500):
            waiting = await conn.fetchval(
                "SELECT COUNT(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND datname = current_database()")
            if waiting >= count:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"{count} statements never waited on the company's lock")
    finally:
        await conn.close()


async def asyncpg_connect(url: str) -> Any:
    return await asyncpg.connect(url)


@pytest.mark.postgres
async def test_two_replicas_unlinking_a_companys_two_connections_at_once_clear_readiness(
        postgres_url: str) -> None:
    # Each replica's statement starts while the other connection is still Linked (the company
    # row is held by a third transaction until both wait for it): write skew, before the count.
    await asyncio.to_thread(truncate_postgres, postgres_url)
    replicas = [await start_service(make_settings(postgres_url)) for _ in range(2)]
    holder = await asyncpg_connect(postgres_url)
    try:
        company, first, second = new_id(), new_id(), new_id()
        for connection in (first, second):
            for kind, status, t in (("connection.created", "PendingAuth", 0),
                                    ("connection.connected", "Linked", 1)):
                body = connection_body(kind, company_id=company, connection_id=connection,
                                       status=status, generated=at(t))
                assert (await replicas[0][2].post("/webhooks/codat", content=body,
                                                  headers=sign(body))).status_code == 200
        await holder.execute("UPDATE companies SET bill_pay_ready = TRUE WHERE id = $1",
                             company)
        transaction = holder.transaction()
        await transaction.start()
        await holder.execute(_HOLD, company)
        bodies = [connection_body("connection.disconnected", company_id=company,
                                  connection_id=c, status="Deauthorized", generated=at(5))
                  for c in (first, second)]
        sent = [asyncio.create_task(client.post("/webhooks/codat", content=b, headers=sign(b)))
                for (_, _, client), b in zip(replicas, bodies, strict=True)]
        await _waiting_on_a_lock(postgres_url, 2)
        await transaction.commit()
        assert [(await s).status_code for s in sent] == [200, 200]
        [row] = await holder.fetch("SELECT bill_pay_ready, linked_count FROM companies "
                                   "WHERE id = $1", company)
        assert (row["bill_pay_ready"], row["linked_count"]) == (False, 0)
    finally:
        await holder.close()
        for _, lifespan, client in replicas:
            await client.aclose()
            await lifespan.__aexit__(None, None, None)


@pytest.mark.postgres
@pytest.mark.parametrize("worker_first", [True, False])
async def test_the_workers_readiness_and_an_unlink_at_once_never_leave_it_ready(
        postgres_url: str, worker_first: bool) -> None:
    await asyncio.to_thread(truncate_postgres, postgres_url)
    app, lifespan, client = await start_service(make_settings(postgres_url))
    holder = await asyncpg_connect(postgres_url)
    db: Database = app.state.db
    try:
        company, connection = new_id(), new_id()
        for kind, status, t in (("connection.created", "PendingAuth", 0),
                                ("connection.connected", "Linked", 1)):
            body = connection_body(kind, company_id=company, connection_id=connection,
                                   status=status, generated=at(t))
            assert (await client.post("/webhooks/codat", content=body,
                                      headers=sign(body))).status_code == 200
        transaction = holder.transaction()
        await transaction.start()
        await holder.execute(_HOLD, company)

        async def ready() -> None:  # the confirm job found every Bill Pay read complete
            await db.write(lambda tx: store.set_readiness(tx, company_id=company, ready=True,
                                                          detail={}, now=utcnow()))
        unlink = connection_body("connection.disconnected", company_id=company,
                                 connection_id=connection, status="Unlinked", generated=at(5))

        async def unlinked() -> None:
            response = await client.post("/webhooks/codat", content=unlink,
                                         headers=sign(unlink))
            assert response.status_code == 200
        tasks = [asyncio.create_task(f()) for f in ((ready, unlinked) if worker_first
                                                      else (unlinked, ready))]
        await _waiting_on_a_lock(postgres_url, 2)
        await transaction.commit()
        await asyncio.gather(*tasks)
        await assert_readiness_holds(db)
        [row] = await rows(db, f"SELECT bill_pay_ready FROM companies WHERE id = '{company}'")
        assert row["bill_pay_ready"] is False
    finally:
        await holder.close()
        await client.aclose()
        await lifespan.__aexit__(None, None, None)


async def test_a_word_recorded_before_writes_nothing_even_under_a_later_message(
        service: Service) -> None:
    # The same legacy event again under a message created later (so with a later time): it was
    # recorded already, so it moves nothing, on the batch path as on the row path.
    company, connection = new_id(), new_id()
    linked = legacy_body(company_id=company, connection_id=connection, old_status="PendingAuth",
                         new_status="Linked")
    await deliver_all(service, linked, msg_id=new_message_id(at(1)))
    await deliver_all(service, connection_body(
        "connection.disconnected", company_id=company, connection_id=connection,
        status="Unlinked", generated=at(2)))
    await deliver_all(service, linked, msg_id=new_message_id(at(3)))
    assert await connection_state(service, connection) == "Unlinked"
    assert await service.count("connection_history") == 2
