"""The PostgreSQL batch statement (service/batch.py) against the row path every other word takes
(service/store.py, deciding with handlers.decide): the same verdicts, rows and jobs, for every
input; one bad event fails alone; what committed keeps its answer."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from handlers import decide, word_of_event
from schemas.commands import NOTHING_HEARD, Stored
from schemas.events import (
    CompanyInfo,
    ConnectionEvent,
    ConnectionEventKind,
    ConnectionInfo,
    EventMeta,
)
from schemas.order import order_key
from schemas.state import ConnectionStatus, State
from service import batch
from service.db import Database, PostgresDatabase, Tx, from_json, open_database, sql, utcnow
from service.ingest import Examined, Ingest, IngestResult, examine, ingest, new_delivery
from service.store import DeliveryFacts, NewDelivery
from tests.conftest import install_failure, remove_failure, truncate_postgres
from tests.factories import at, connection_body, new_id

P, L, U, D, X = (State.PENDING_AUTH, State.LINKED, State.UNLINKED, State.DEAUTHORIZED,
                 State.DELETED)
Item = tuple[NewDelivery, Examined]


def t(second: int) -> str:
    return f"2026-11-01T12:00:{second:02d}.0000000Z"


def delivery(body: bytes = b"{}", message_id: str | None = None) -> NewDelivery:
    message_id = message_id or f"msg_{uuid.uuid4().hex}"
    return new_delivery(message_id=message_id, timestamp=1_700_000_000, body=body,
                        secret_id="whsec:t", headers={"svix-id": message_id})


def event(connection_id: str, company_id: str, target: State, instant: str | None,
          event_id: str, previous: ConnectionStatus | None = None) -> ConnectionEvent:
    kind = ConnectionEventKind.DELETED if target is X else ConnectionEventKind.CONNECTED
    status = ConnectionStatus.LINKED if target is X else ConnectionStatus(target.value)
    meta = EventMeta(event_id, "connection.x" if previous is None else
                     "DataConnectionStatusChanged", None, instant)
    return ConnectionEvent(meta, kind, CompanyInfo(company_id, "Toft stores"),
                           ConnectionInfo(connection_id, status, platform_key="qhyg"), previous)


# --- every input, both ways ------------------------------------------------------------------

STORED: list[State | None] = [None, *State]
# (second, tie-break) of a word against a stored word at second 5 with tie-break "m".
WHEN = [(3, "z"), (5, "a"), (5, "z"), (7, "a")]
PREVIOUS: list[ConnectionStatus | None] = [None, ConnectionStatus.PENDING_AUTH,
                                           ConnectionStatus.LINKED]
COMBOS = list(itertools.product(STORED, State, WHEN, PREVIOUS))


def stored_key(state: State) -> str:
    return order_key(state, t(5), "m")


_STORE_CONNECTION = sql("""
INSERT INTO connections (id, company_id, status, deleted, event_key, version, created_at,
    updated_at)
VALUES ($1, $2, $3, $4, $5, 3, $6, $6)""")
_STORE_COMPANY = sql("""
INSERT INTO companies (id, name, deleted, bill_pay_ready, linked_count, created_at, updated_at)
VALUES ($1, 'Toft stores', FALSE, $2, $3, $4, $4)""")


def combo_items() -> tuple[list[tuple[Stored, Any]], list[tuple[NewDelivery, DeliveryFacts,
                                                                 ConnectionEvent, str | None]]]:
    """One connection (of a company of its own) per combination: how it is stored, and the
    word that arrives."""
    setup, items = [], []
    for n, (state, target, (second, tiebreak), previous) in enumerate(COMBOS):
        connection_id, company_id = f"conn-{n:04d}", f"comp-{n:04d}"
        stored = NOTHING_HEARD if state is None else Stored(state, stored_key(state))
        setup.append((stored, (connection_id, company_id)))
        instant = t(second)
        legacy = previous is not None
        evt = event(connection_id, company_id, target, None if legacy else instant,
                    tiebreak + f"-{n}", previous)
        facts = DeliveryFacts(evt.meta.event_id, evt.meta.event_type, company_id,
                              connection_id, "processed", None)
        items.append((delivery(), facts, evt, instant if legacy else None))
    return setup, items


async def prepare(db: Database, setup: Sequence[tuple[Stored, Any]]) -> None:
    async def work(tx: Tx) -> None:
        now = utcnow()
        for stored, (connection_id, company_id) in setup:
            linked = stored.state is L
            await tx.execute(_STORE_COMPANY, company_id, linked, int(linked), now)
            if stored.state is not None:
                await tx.execute(_STORE_CONNECTION, connection_id, company_id,
                                 None if stored.state is X else stored.state.value,
                                 stored.state is X, stored.key, now)
    await db.write(work)


_TABLES = {
    "connections": "SELECT id, status, deleted, event_key, last_event_id, previous_state, "
                   "version, platform_key FROM connections",
    "connection_history": "SELECT connection_id, from_state, to_state, result, skipped, source, "
                          "event_id, event_type, delivery_id, event_key, reason "
                          "FROM connection_history",
    "outbox": "SELECT kind, dedupe_key, company_id, connection_id, status FROM outbox",
    "companies": "SELECT id, name, linked_count, bill_pay_ready FROM companies",
    "deliveries": "SELECT message_id, event_id, outcome FROM deliveries",
    "changes": "SELECT type, company_id, connection_id, data FROM changes",
}


async def tables(db: Database) -> dict[str, list[tuple[Any, ...]]]:
    out = {}
    for table, query in _TABLES.items():
        statement = sql(query)
        rows = await db.read(lambda tx, s=statement: tx.fetch(s))  # type: ignore[misc]
        out[table] = sorted((tuple(bool(v) if k in ("deleted", "skipped", "bill_pay_ready")
                                   else from_json(v) if k == "data" else v
                                   for k, v in dict(r).items()) for r in rows), key=repr)
    return out


@pytest.mark.postgres
async def test_the_statement_decides_every_input_as_the_row_path_does(
        postgres_url: str, tmp_path: Path, sqlite_template: Path) -> None:
    setup, items = combo_items()
    lite_path = tmp_path / "rows.db"
    lite_path.write_bytes(sqlite_template.read_bytes())
    lite, pg = open_database(f"sqlite:///{lite_path}"), open_database(postgres_url)
    await asyncio.to_thread(truncate_postgres, postgres_url)
    await lite.start()
    await pg.start()
    try:
        await prepare(lite, setup)
        await prepare(pg, setup)
        by_rows = []
        for d, f, e, evidence in items:
            examined = Examined(e, f, evidence)
            by_rows.append(await lite.write(lambda tx, d=d, x=examined: ingest(tx, d, x)))
        done = await pg.read(lambda tx: batch.connection_events(tx, items))
        for (stored, _), (d, _f, e, evidence), row, one in zip(setup, items, by_rows, done,
                                                              strict=True):
            expected = decide(stored, word_of_event(e, delivery_id=d.message_id,
                                                    evidence=evidence))
            assert one is not None, (stored, e)
            assert one.verdicts == [expected], (stored, e)
            assert [v for _, v in row.applied.moves] == [expected], (stored, e)
        assert await tables(pg) == await tables(lite)
    finally:
        await lite.close()
        await pg.close()
    # Every kind of verdict was exercised.
    verdicts = {(v.result.value, v.skipped, tuple(c.kind.value for c in v.commands))
                for one in done if one is not None for v in one.verdicts}
    assert verdicts == {
        ("applied", False, ()), ("applied", False, ("confirm_connection",)),
        ("applied", True, ("reconcile_connection",)),
        ("applied", True, ("confirm_connection", "reconcile_connection")),
        ("superseded", False, ()), ("rejected", False, ("reconcile_connection",))}


# --- what the statement leaves, and what fails alone ------------------------------------------

def examined_items(bodies: Sequence[bytes]) -> list[Item]:
    out = []
    for body in bodies:
        d = delivery(body)
        out.append((d, examine(body, message_id=d.message_id, timestamp=d.timestamp)))
    return out


def works(items: Sequence[Item]) -> list[Ingest]:
    return [Ingest(d, e) for d, e in items]


def created(connection: str, company: str, second: int = 0) -> bytes:
    return connection_body("connection.created", company_id=company, connection_id=connection,
                           status="PendingAuth", generated=at(second))


def connected(connection: str, company: str, second: int = 1) -> bytes:
    return connection_body("connection.connected", company_id=company, connection_id=connection,
                           status="Linked", generated=at(second))


@pytest.fixture
async def pg(postgres_url: str) -> Any:
    await asyncio.to_thread(truncate_postgres, postgres_url)
    db = open_database(postgres_url)
    await db.start()
    try:
        yield db
    finally:
        await remove_failure(db)
        await db.close()


def summary(result: IngestResult | None) -> Any:
    if result is None:
        return None
    return (result.disposition, result.outcome,
            [(c, v.from_state, v.to_state, v.result) for c, v in result.applied.moves])


@pytest.mark.postgres
async def test_an_event_the_statement_fails_on_fails_alone(pg: Database) -> None:
    company, good, bad, other = new_id(), new_id(), new_id(), new_id()
    await install_failure(pg, bad)
    items = examined_items([created(good, company), created(bad, company),
                            created(other, new_id())])
    results = await pg.read(lambda tx: Ingest.run_at_once(tx, works(items)))
    assert [summary(r) for r in results] == [
        ("stored", "processed", [(good, None, P, "applied")]), None,
        ("stored", "processed", [(other, None, P, "applied")])]
    stored = {r["message_id"] for r in await pg.read(
        lambda tx: tx.fetch(sql("SELECT message_id FROM deliveries")))}
    assert stored == {items[0][0].message_id, items[2][0].message_id}


@pytest.mark.postgres
async def test_runs_that_committed_keep_their_answers_when_the_database_goes_away(
        pg: Database) -> None:
    # The second run's statement loses its connection (its backend is terminated, once): the
    # first run's deliveries are committed and answered from it; the rest take the row path.
    company, first, second = new_id(), new_id(), new_id()
    await install_terminator(pg, second)
    items = examined_items([created(first, company), connected(first, company),
                            created(second, company)])
    answers = await asyncio.gather(*(pg.write(w, affinity="one partition")
                                     for w in works(items)))
    assert [summary(a) for a in answers] == [
        ("stored", "processed", [(first, None, P, "applied")]),
        ("stored", "processed", [(first, P, L, "applied")]),
        ("stored", "processed", [(second, None, P, "applied")])]
    assert int(await pg.read(lambda tx: tx.fetchval(sql(
        "SELECT last_value FROM codat_hooks_terminate_once")))) >= 1


async def install_terminator(db: Database, connection_id: str) -> None:
    statements = [
        "DROP TRIGGER IF EXISTS inject_failure ON connection_history",
        "DROP SEQUENCE IF EXISTS codat_hooks_terminate_once",
        "CREATE SEQUENCE codat_hooks_terminate_once",
        f"""CREATE OR REPLACE FUNCTION inject_failure() RETURNS trigger AS $$
            BEGIN IF NEW.connection_id = '{connection_id}'
                AND nextval('codat_hooks_terminate_once') = 1 THEN
                PERFORM pg_terminate_backend(pg_backend_pid()); END IF;
            RETURN NEW; END $$ LANGUAGE plpgsql""",
        """CREATE TRIGGER inject_failure BEFORE INSERT ON connection_history
           FOR EACH ROW EXECUTE FUNCTION inject_failure()"""]

    async def work(tx: Tx) -> None:
        for statement in statements:
            await tx.execute(sql(statement))
    await db.write(work)


@pytest.mark.postgres
async def test_a_duplicate_is_answered_from_what_the_statement_found(pg: Database) -> None:
    [item] = examined_items([created(new_id(), new_id())])
    first = await pg.read(lambda tx: Ingest.run_at_once(tx, works([item])))
    again = await pg.read(lambda tx: Ingest.run_at_once(tx, works([item])))
    assert summary(first[0])[0] == "stored"
    assert summary(again[0]) == ("duplicate", "processed", [])


@pytest.mark.postgres
async def test_what_the_statement_leaves_to_the_row_path(pg: Database) -> None:
    company = new_id()
    [one] = examined_items([created(new_id(), company)])
    await pg.read(lambda tx: Ingest.run_at_once(tx, works([one])))
    another_body = (one[0].message_id, created(new_id(), company, 9))  # same id, other body
    conflict = (delivery(another_body[1], another_body[0]),
                examine(another_body[1], message_id=another_body[0], timestamp=0))
    legacy = examined_items([b'{"RuleType": "DataConnectionStatusChanged", "AlertId": "a", '
                             b'"CompanyId": "c", "DataConnectionId": "d", '
                             b'"Data": {"newStatus": "Linked"}}'])[0]
    read = examined_items([b'{"id": "r", "eventType": "client.rateLimit.reset", '
                           b'"generatedDate": "2026-11-01T12:00:00Z", "payload": {}}'])[0]
    results = await pg.read(lambda tx: Ingest.run_at_once(tx, works([conflict, legacy, read])))
    assert results == [None, None, None]  # nothing written for any of them
    assert int(await pg.read(lambda tx: tx.fetchval(sql("SELECT COUNT(*) FROM deliveries")))) \
        == 1


def test_runs_never_name_a_message_or_a_connection_twice() -> None:
    bodies = [("m1", created("a1", "a")), ("m2", created("b1", "b")), ("m3", created("a2", "a")),
              ("m4", connected("a1", "a")), ("m5", created("c1", "c")), ("m5", created("c1", "c")),
              ("m6", connected("b1", "b"))]
    items = []
    for message_id, body in bodies:
        d = delivery(body, message_id)
        e = examine(body, message_id=message_id, timestamp=0)
        items.append((d, e.facts, e.event, None))
    words = [(i, word_of_event(e, delivery_id=d.message_id, evidence=None))  # type: ignore[arg-type]
             for i, (d, _, e, _) in enumerate(items)]
    runs = [[items[i][0].message_id for i, _ in run] for run in batch._runs(items, words)]
    assert runs == [["m1", "m2", "m3"], ["m4", "m5"], ["m5", "m6"]]



@pytest.mark.postgres
async def test_the_statement_is_prepared_once_per_connection_not_parsed_per_batch(
        pg: Database) -> None:
    # Planning the statement costs PostgreSQL more than running it: asyncpg must keep it
    # prepared (its default size limit for that, 15 KiB, is below the statement's length).
    company = new_id()
    for item in examined_items([created(new_id(), company), created(new_id(), company)]):
        await pg.write(works([item])[0], affinity=company)
    assert isinstance(pg, PostgresDatabase) and pg._batch_pool is not None
    async with pg._batch_pool.acquire() as conn:
        prepared = await conn.fetch("SELECT statement FROM pg_prepared_statements")
    assert any("json_to_recordset" in row["statement"] for row in prepared), \
        "the batch statement is not prepared: it is parsed and planned for every batch"
