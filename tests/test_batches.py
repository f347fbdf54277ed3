"""Batched ingest on PostgreSQL gives, delivery for delivery and row for row, what ingesting one
delivery at a time gives; and its one-statement commit undoes itself when it lost a race."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import asyncpg
import pytest

from schemas.commands import ConnectionSnapshot
from schemas.events import ConnectionEvent
from schemas.state import State
from service import store
from service.db import Database, Tx, _PgTx, as_dt, from_json, open_database, sql, utcnow
from service.errors import Contended
from service.ingest import (
    Examined,
    Ingest,
    IngestResult,
    _plan_connection_event,
    _runs,
    examine,
    ingest,
    ingest_at_once,
    ingest_together,
    new_delivery,
)
from service.known import KnownConnections
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


def wrong_guesses(messages: Sequence[tuple[str, bytes]]) -> KnownConnections:
    """A guess for every connection the messages name, each one wrong: another company, Linked,
    at a version it never had, with an event far in the future (trusted, it would make every
    event superseded)."""
    known = KnownConnections()
    for _, examined in items_of(messages):
        if isinstance(examined.event, ConnectionEvent):
            known.note(ConnectionSnapshot(examined.event.connection.id, "another-company",
                                          exists=True, state=State.LINKED,
                                          last_event_at=at(100_000)), 41)
    return known


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
        elif how.startswith("batched"):  # as the receiver does, 8 in flight: grouped
            known = {"batched": KnownConnections(),
                     "batched, forgetful": KnownConnections(size=1),
                     "batched, from wrong guesses": wrong_guesses(messages)}[how]
            results = []
            for start in range(0, len(items), 8):
                results += await asyncio.gather(*(
                    db.write(Ingest(*i, known),
                             affinity=i[1].facts.connection_id or i[0].message_id)
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

    for how in ("one by one", "batched", "batched, forgetful", "batched, from wrong guesses",
                "under locks"):
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


# --- the one-statement commit: wrong guesses write nothing; a race lost undoes it all ---------

async def _one(db: Database, body: bytes, known: KnownConnections | None = None,
               ) -> IngestResult:
    [item] = items_of([(new_id(), body)])
    return await db.write(Ingest(*item, KnownConnections() if known is None else known),
                          affinity=item[1].facts.connection_id)


async def _counts(db: Database) -> dict[str, int]:
    out = {}
    for table in ("deliveries", "connection_history", "connections", "outbox"):
        statement = sql(f"SELECT COUNT(*) FROM {table}")
        out[table] = int(await db.read(lambda tx, s=statement: tx.fetchval(s)))  # type: ignore[misc]
    return out


def _decided(items: list[Item], known: KnownConnections,
             ) -> list[tuple[OpenEvent, store.PlannedMove, int | None]]:
    decided = []
    for delivery, examined in items:
        event = cast(ConnectionEvent, examined.event)
        snapshot, version = known.guess(event.connection.id, event.company.id)
        decided.append((OpenEvent(delivery, examined.facts, event),
                        _plan_connection_event(event, snapshot, delivery.message_id), version))
    return decided


async def _commit(db: Database, items: list[Item], known: KnownConnections,
                  ) -> list[store.Committed]:
    decided = _decided(items, known)
    return await db.read(lambda tx: store.commit_connection_events(tx, decided, now=utcnow()))


class _Meanwhile:
    """Another replica's transaction, left open while the one-statement commit runs into it."""

    def __init__(self, url: str) -> None:
        self._url = url

    async def __aenter__(self) -> _Meanwhile:
        self._conn = await asyncpg.connect(self._url)
        await self._conn.execute("BEGIN")
        self.tx: Tx = _PgTx(self._conn)
        return self

    async def commit_once_waited_for(self, statement: asyncio.Task[Any]) -> None:
        """COMMIT, as soon as ``statement`` waits for one of this transaction's row locks."""
        watch = await asyncpg.connect(self._url)  # outside the transaction: fresh statistics
        try:
            for _ in range(500):
                waiting = await watch.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock'")
                if waiting or statement.done():
                    break
                await asyncio.sleep(0.01)
        finally:
            await watch.close()
        assert waiting, "the statement never waited for the other transaction"
        await self._conn.execute("COMMIT")

    async def __aexit__(self, *exc: object) -> None:
        await self._conn.close()


@pytest.fixture
async def pg(postgres_url: str) -> Any:
    await asyncio.to_thread(truncate_postgres, postgres_url)
    db = open_database(postgres_url, write_partitions=1)
    await db.start()
    yield db
    await db.close()


def _created(company: str, connection: str, t: int = 0) -> bytes:
    return connection_body("connection.created", company_id=company, connection_id=connection,
                           status="PendingAuth", generated=at(t))


def _connected(company: str, connection: str, t: int) -> bytes:
    return connection_body("connection.connected", company_id=company,
                           connection_id=connection, status="Linked", generated=at(t))


@pytest.mark.postgres
async def test_an_event_decided_from_a_wrong_guess_writes_nothing_and_gets_the_truth(
        pg: Database) -> None:
    company, connection = new_id(), new_id()
    await _one(pg, _created(company, connection))  # another replica: this one did not see it
    before = await _counts(pg)
    known = KnownConnections()  # guesses "no such connection"
    items = items_of([(new_id(), _connected(company, connection, 5))])

    [found] = await _commit(pg, items, known)

    assert (found.ok, found.fresh, found.recorded, found.stored_outcome) == (False, False, False,
                                                                         None)
    assert (found.snapshot.state, found.version) == (State.PENDING_AUTH, 1)
    assert await _counts(pg) == before
    # The receiver's path decides again from that, and the event applies.
    [result] = await pg.write(lambda tx: ingest_at_once(tx, items, known))
    assert result is not None
    assert [(m.from_state, m.to_state, m.result) for _, m in result.applied.moves] == [
        (State.PENDING_AUTH, State.LINKED, "applied")]
    assert known.guess(connection, company)[1] == 2


@pytest.mark.postgres
async def test_a_connection_moved_while_the_statement_ran_undoes_all_of_it(
        pg: Database, postgres_url: str) -> None:
    company, connection, bystander = new_id(), new_id(), new_id()
    known = KnownConnections()
    await _one(pg, _created(company, connection), known)
    items = items_of([(new_id(), _connected(company, connection, 5)),
                      (new_id(), _created(new_id(), bystander))])
    before = await _counts(pg)

    async with _Meanwhile(postgres_url) as other:  # moves it, at a later event
        [other_item] = items_of([(new_id(), _connected(company, connection, 9))])
        assert (await ingest_together(other.tx, [other_item]))[0].applied.moves
        statement = asyncio.create_task(_commit(pg, items, known))
        await other.commit_once_waited_for(statement)
        with pytest.raises(Contended, match="changed meanwhile"):
            await statement

    after = await _counts(pg)  # only what the other replica wrote: its delivery, move and job
    assert after == {**before, "deliveries": before["deliveries"] + 1,
                     "connection_history": before["connection_history"] + 1,
                     "outbox": before["outbox"] + 1}
    # Run again as the batcher would (under row locks): the late connected event is superseded.
    results = await pg.write(lambda tx: ingest_together(tx, items))
    assert [r.disposition for r in results] == ["stored", "stored"]
    assert [m.result for r in results for _, m in r.applied.moves] == ["superseded", "applied"]


@pytest.mark.postgres
async def test_a_copy_stored_while_the_statement_ran_is_left_to_the_row_locks(
        pg: Database, postgres_url: str) -> None:
    company, connection = new_id(), new_id()
    items = items_of([(new_id(), _created(company, connection)),
                      (new_id(), _created(new_id(), new_id()))])

    async with _Meanwhile(postgres_url) as other:  # a copy of the first, ingested under locks
        assert (await ingest_together(other.tx, items[:1]))[0].disposition == "stored"
        statement = asyncio.create_task(_commit(pg, items, KnownConnections()))
        await other.commit_once_waited_for(statement)
        copy, bystander = await statement

    assert (copy.ok, copy.fresh, copy.recorded, copy.stored_outcome) == (True, False, False, None)
    assert (bystander.fresh, bystander.recorded) == (True, True)
    assert await _counts(pg) == {"deliveries": 2, "connection_history": 2, "connections": 2,
                                 "outbox": 0}
    # Under row locks, the copy is what it is: a duplicate.
    [again] = await pg.write(lambda tx: ingest_together(tx, items[:1]))
    assert again.disposition == "duplicate"


@pytest.mark.postgres
async def test_a_connection_born_while_the_statement_ran_undoes_it(
        pg: Database, postgres_url: str) -> None:
    company, connection = new_id(), new_id()
    items = items_of([(new_id(), _created(company, connection))])

    async with _Meanwhile(postgres_url) as other:  # another event creates it, Linked
        [linked] = items_of([(new_id(), _connected(company, connection, 3))])
        await ingest_together(other.tx, [linked])
        statement = asyncio.create_task(_commit(pg, items, KnownConnections()))
        await other.commit_once_waited_for(statement)
        with pytest.raises(Contended):
            await statement

    rows = await pg.read(lambda tx: tx.fetch(sql("SELECT status, version FROM connections")))
    assert [(r["status"], r["version"]) for r in rows] == [("Linked", 1)]
    assert await _counts(pg) == {"deliveries": 1, "connection_history": 1, "connections": 1,
                                 "outbox": 2}  # its follow-ups: confirm, reconcile


@pytest.mark.postgres
async def test_an_event_postgresql_cannot_store_fails_alone_and_its_batch_mates_are_stored(
        pg: Database, caplog: pytest.LogCaptureFixture) -> None:
    # PostgreSQL text cannot hold NUL: the one statement fails for the whole batch, which then
    # runs under row locks one delivery at a time, where only the bad one fails.
    bad = _created(new_id(), new_id()).replace(b'"Toft stores"', b'"Toft\\u0000stores"')
    assert b"\\u0000" in bad
    items = items_of([(new_id(), bad), (new_id(), _created(new_id(), new_id()))])
    known = KnownConnections()

    failed, stored = await asyncio.gather(
        *(pg.write(Ingest(*i, known), affinity=i[1].facts.connection_id) for i in items),
        return_exceptions=True)

    assert isinstance(failed, asyncpg.PostgresError)
    assert isinstance(stored, IngestResult) and stored.disposition == "stored"
    assert "one-statement commit failed" in caplog.text
    assert await _counts(pg) == {"deliveries": 1, "connection_history": 1, "connections": 1,
                                 "outbox": 0}


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

