"""Batched ingest on PostgreSQL gives, delivery for delivery and row for row, what ingesting one
delivery at a time gives; and its one-statement commit undoes itself when it lost a race."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from service import store
from service.db import Database, as_dt, from_json, open_database, sql, utcnow
from service.errors import Contended
from service.ingest import (
    Examined,
    Ingest,
    IngestResult,
    _plan_connection_event,
    _runs,
    examine,
    ingest,
    ingest_together,
    new_delivery,
)
from service.store import NewDelivery, OpenEvent
from tests.conftest import Service, truncate_postgres
from tests.factories import (
    at,
    company_body,
    connection_body,
    legacy_body,
    new_id,
    read_completed_body,
)

Item = tuple[NewDelivery, Examined]


def workload(seed: int) -> list[tuple[str, bytes]]:
    """(message id, body) in delivery order: connections going created -> connected ->
    disconnected across a few companies, shuffled (late events), with duplicates, a conflicting
    body, legacy bodies, a company deleted and a read completed among them."""
    rnd = random.Random(seed)
    companies = [f"company-{seed}-{n}" for n in range(6)]
    messages: list[tuple[str, bytes]] = []
    for n in range(18):
        company, connection = companies[n % len(companies)], f"connection-{seed}-{n}"
        t = rnd.randint(0, 50)
        messages.append((new_id(), connection_body(
            "connection.created", company_id=company, connection_id=connection,
            status="PendingAuth", generated=at(t))))
        messages.append((new_id(), connection_body(
            "connection.connected", company_id=company, connection_id=connection,
            status="Linked", generated=at(t + 1))))
        if n % 3 == 0:
            messages.append((new_id(), legacy_body(
                company_id=company, connection_id=connection, new_status="Deauthorized",
                old_status="Linked")))
        else:
            status = "Unlinked" if n % 2 else "Deauthorized"
            messages.append((new_id(), connection_body(
                "connection.disconnected", company_id=company, connection_id=connection,
                status=status, generated=at(t + 2))))
    rnd.shuffle(messages)
    for message in rnd.sample(messages, 8):  # Codat's retries: the same id and body again
        messages.insert(rnd.randrange(len(messages) + 1), message)
    taken_id = messages[5][0]
    messages.insert(30, (taken_id, connection_body(  # the same id with ANOTHER body
        "connection.connected", company_id=companies[0], connection_id="someone-else",
        status="Linked", generated=at(7))))
    messages.insert(20, (new_id(), company_body("company.deleted", company_id=companies[1],
                                                generated=at(30))))
    messages.insert(40, (new_id(), read_completed_body(
        company_id=companies[2], connection_id=f"connection-{seed}-2",
        statuses={"bankAccounts": "Complete"}, generated=at(40))))
    return messages


def items_of(messages: Sequence[tuple[str, bytes]]) -> list[Item]:
    return [(new_delivery(message_id=m, timestamp=1_700_000_000, body=b, secret_id="whsec:t",
                          headers={"svix-id": m}), examine(b)) for m, b in messages]


def summary(result: IngestResult) -> tuple[Any, ...]:
    return (result.disposition, result.outcome, result.applied.jobs,
            [(c, m.from_state, m.to_state, m.result) for c, m in result.applied.moves])


_DUMPS = {
    "companies": "SELECT id, name, description, tags, deleted, bill_pay_ready, last_event_at "
                 "FROM companies",
    "connections": "SELECT id, company_id, status, deleted, deleted_at IS NOT NULL AS gone, "
                   "last_event_at, last_event_id, version, platform_key, platform_name, "
                   "source_type, integration_id, source_id, link_url, created, last_sync, "
                   "errors FROM connections",
    "connection_history": "SELECT connection_id, company_id, from_state, to_state, result, "
                          "source, event_id, event_type, delivery_id, event_time, reason "
                          "FROM connection_history",
    "deliveries": "SELECT message_id, event_id, event_type, company_id, connection_id, "
                  "body_sha256, outcome, error, attempts FROM deliveries",
    "delivery_conflicts": "SELECT message_id, body_sha256 FROM delivery_conflicts",
    "outbox": "SELECT kind, dedupe_key, company_id, connection_id, payload, status, attempts, "
              "max_attempts FROM outbox",
    "data_type_status": "SELECT company_id, data_type, connection_id, status FROM "
                        "data_type_status",
}
_TIMES = {"last_event_at", "event_time", "created", "last_sync"}
_JSON = {"tags", "errors", "payload"}
_BOOLS = {"deleted", "bill_pay_ready", "gone"}


def _normal(column: str, value: Any) -> Any:
    if column in _TIMES:
        return as_dt(value)
    if column in _JSON:
        return from_json(value)
    if column in _BOOLS:
        return bool(value)
    return value


async def dump(db: Database) -> dict[str, list[tuple[Any, ...]]]:
    tables = {}
    for table, query in _DUMPS.items():
        statement = sql(query)
        rows = await db.read(lambda tx, s=statement: tx.fetch(s))  # type: ignore[misc]
        tables[table] = sorted(
            (tuple(_normal(k, v) for k, v in dict(r).items()) for r in rows), key=repr)
    return tables


async def run(url: str, messages: Sequence[tuple[str, bytes]], how: str,
              ) -> tuple[list[tuple[Any, ...]], dict[str, list[tuple[Any, ...]]]]:
    # One write partition: the batcher then commits in the order the writes were made.
    db = open_database(url, write_partitions=1)
    await db.start()
    try:
        items = items_of(messages)
        if how == "one by one":
            results = [await db.write(lambda tx, i=i: ingest(tx, *i))  # type: ignore[misc]
                       for i in items]
        elif how == "batched":  # as the receiver does, 8 in flight: the batcher groups them
            results = []
            for start in range(0, len(items), 8):
                results += await asyncio.gather(*(
                    db.write(Ingest(*i), affinity=i[1].facts.connection_id or i[0].message_id)
                    for i in items[start:start + 8]))
        else:  # under row locks, with set-based statements, 16 deliveries per transaction
            results = []
            for start in range(0, len(items), 16):
                chunk = items[start:start + 16]
                results += await db.write(
                    lambda tx, c=chunk: ingest_together(tx, c))  # type: ignore[misc]
        return [summary(r) for r in results], await dump(db)
    finally:
        await db.close()


@pytest.mark.postgres
@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_batched_ingest_equals_one_at_a_time(postgres_url: str, tmp_path: Path,
                                                   sqlite_template: Path, seed: int) -> None:
    messages = workload(seed)
    lite = tmp_path / "reference.db"
    lite.write_bytes(sqlite_template.read_bytes())
    reference = await run(f"sqlite:///{lite}", messages, "one by one")

    for how in ("one by one", "batched", "under locks"):
        await asyncio.to_thread(truncate_postgres, postgres_url)
        results, tables = await run(postgres_url, messages, how)
        assert results == reference[0], how
        for table, rows in reference[1].items():
            assert tables[table] == rows, (how, table)
    # The workload exercised what it is meant to.
    dispositions = {r[0] for r in reference[0]}
    assert {"stored", "duplicate", "conflict"} <= dispositions
    assert {m[3] for r in reference[0] for m in r[3]} >= {"applied", "superseded", "rejected"}


def test_runs_never_name_a_message_connection_or_company_twice() -> None:
    a1 = connection_body("connection.created", company_id="a", connection_id="a1",
                         status="PendingAuth", generated=at(0))
    a2 = connection_body("connection.created", company_id="a", connection_id="a2",
                         status="PendingAuth", generated=at(0))
    b1 = connection_body("connection.created", company_id="b", connection_id="b1",
                         status="PendingAuth", generated=at(0))
    deleted = company_body("company.deleted", company_id="c", generated=at(1))
    items = items_of([("m1", a1), ("m2", b1), ("m3", a2), ("m4", deleted), ("m5", b1),
                      ("m5", b1), ("m6", a1)])
    runs = [[d.message_id for d, _ in run] for run in _runs(items)]
    assert runs == [["m1", "m2"], ["m3"], ["m4"], ["m5"], ["m5", "m6"]]


# --- the one-statement commit loses a race: it writes nothing ---------------------------------

async def _one(db: Database, body: bytes) -> IngestResult:
    [item] = items_of([(new_id(), body)])
    return await db.write(Ingest(*item), affinity=item[1].facts.connection_id)


async def _counts(db: Database) -> dict[str, int]:
    out = {}
    for table in ("deliveries", "connection_history", "connections", "outbox"):
        statement = sql(f"SELECT COUNT(*) FROM {table}")
        out[table] = int(await db.read(lambda tx, s=statement: tx.fetchval(s)))  # type: ignore[misc]
    return out


async def _peek_then_commit(db: Database, items: list[Item],
                            meanwhile: Any) -> None:
    events = [OpenEvent(d, e.facts, e.event) for d, e in items]  # type: ignore[arg-type]
    peeked = await db.read(lambda tx: store.peek_connection_events(tx, events))
    await meanwhile()
    decided = [(event, _plan_connection_event(event.event, p.snapshot, event.delivery.message_id),
                p.version) for event, p in zip(events, peeked, strict=True)]
    await db.read(lambda tx: store.commit_connection_events(tx, decided, now=utcnow()))


@pytest.fixture
async def pg(postgres_url: str) -> Any:
    await asyncio.to_thread(truncate_postgres, postgres_url)
    db = open_database(postgres_url, write_partitions=1)
    await db.start()
    yield db
    await db.close()


@pytest.mark.postgres
async def test_a_connection_moved_after_the_read_undoes_the_whole_statement(
        pg: Database) -> None:
    company, connection, bystander = new_id(), new_id(), new_id()
    await _one(pg, connection_body("connection.created", company_id=company,
                                   connection_id=connection, status="PendingAuth",
                                   generated=at(0)))
    items = items_of([
        (new_id(), connection_body("connection.connected", company_id=company,
                                   connection_id=connection, status="Linked", generated=at(5))),
        (new_id(), connection_body("connection.created", company_id=new_id(),
                                   connection_id=bystander, status="PendingAuth",
                                   generated=at(0)))])
    before = await _counts(pg)

    async def another_replica_moves_it() -> None:
        result = await _one(pg, connection_body("connection.connected", company_id=company,
                                                connection_id=connection, status="Linked",
                                                generated=at(9)))
        assert [m.result for _, m in result.applied.moves] == ["applied"]
    with pytest.raises(Contended, match="changed meanwhile"):
        await _peek_then_commit(pg, items, another_replica_moves_it)

    after = await _counts(pg)  # only what the other replica wrote: its delivery, move and job
    assert after == {**before, "deliveries": before["deliveries"] + 1,
                     "connection_history": before["connection_history"] + 1,
                     "outbox": before["outbox"] + 1}
    # Run again as the batcher would (under row locks): the late connected event is superseded.
    results = await pg.write(lambda tx: ingest_together(tx, items))
    assert [r.disposition for r in results] == ["stored", "stored"]
    assert [m.result for r in results for _, m in r.applied.moves] == ["superseded", "applied"]


@pytest.mark.postgres
async def test_a_message_stored_after_the_read_undoes_the_statement(pg: Database) -> None:
    company, connection = new_id(), new_id()
    body = connection_body("connection.created", company_id=company, connection_id=connection,
                           status="PendingAuth", generated=at(0))
    items = items_of([(new_id(), body)])

    async def a_copy_lands_first() -> None:
        assert (await pg.write(Ingest(*items[0]), affinity=connection)).disposition == "stored"
    with pytest.raises(Contended):
        await _peek_then_commit(pg, items, a_copy_lands_first)
    assert await _counts(pg) == {"deliveries": 1, "connection_history": 1, "connections": 1,
                                 "outbox": 0}


@pytest.mark.postgres
async def test_a_connection_born_after_the_read_undoes_the_statement(pg: Database) -> None:
    company, connection = new_id(), new_id()
    items = items_of([(new_id(), connection_body(
        "connection.created", company_id=company, connection_id=connection,
        status="PendingAuth", generated=at(0)))])

    async def another_event_creates_it() -> None:
        await _one(pg, connection_body("connection.connected", company_id=company,
                                       connection_id=connection, status="Linked",
                                       generated=at(3)))
    with pytest.raises(Contended):
        await _peek_then_commit(pg, items, another_event_creates_it)
    rows = await pg.read(lambda tx: tx.fetch(sql("SELECT status, version FROM connections")))
    assert [(r["status"], r["version"]) for r in rows] == [("Linked", 1)]


# --- both reasons to touch a company in one delivery ----------------------------------------

async def test_an_unlink_that_renames_the_company_does_both(service: Service) -> None:
    """A company loses Bill Pay readiness with its last Linked connection AND takes the new name
    the same event carries (on PostgreSQL one UPDATE writes both: a statement writes a row
    once, and two updates of one row in one statement would keep only one)."""
    company, connection = new_id(), new_id()
    linked = connection_body("connection.connected", company_id=company,
                             connection_id=connection, status="Linked", generated=at(1))
    assert (await service.deliver(linked)).status_code == 200
    await service.db.write(lambda tx: tx.execute(
        sql("UPDATE companies SET bill_pay_ready = TRUE WHERE id = $1"), company))
    renamed = connection_body("connection.disconnected", company_id=company,
                              connection_id=connection, status="Unlinked", generated=at(2))
    renamed = renamed.replace(b'"Toft stores"', b'"Toft & Daughters"')
    assert (await service.deliver(renamed)).status_code == 200
    [row] = await service.rows("SELECT name, bill_pay_ready FROM companies WHERE id = $1",
                               company)
    assert (row["name"], bool(row["bill_pay_ready"])) == ("Toft & Daughters", False)

