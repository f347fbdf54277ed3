"""The outbox's claim (service/outbox.py), on SQLite and PostgreSQL: which jobs it takes, in
which order, and that taking one reads a few index entries however long the backlog is."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from schemas.commands import Command, JobKind
from service import outbox, store
from service.db import Tx, as_dt, utcnow
from tests.conftest import Service
from tests.factories import connection_body, new_id

LEASE = timedelta(seconds=1)


def _confirm(n: int) -> Command:
    return Command(JobKind.CONFIRM_CONNECTION, f"confirm:{n}", "company", f"connection-{n}")


async def test_a_claim_takes_expired_leases_and_due_jobs_oldest_first(service: Service) -> None:
    t0 = utcnow()
    for n, offset in enumerate((0, 1, 2, 100)):
        async def enqueue(tx: Tx, n: int = n, offset: int = offset) -> None:
            await store.enqueue(tx, commands=[_confirm(n)], now=t0 + timedelta(seconds=offset))
        await service.db.write(enqueue)

    async def claim(worker: str, at: float, limit: int) -> list[tuple[str, int]]:
        jobs = await service.db.write(lambda tx: outbox.claim(
            tx, worker_id=worker, now=t0 + timedelta(seconds=at), lease=LEASE, limit=limit))
        return sorted((job.connection_id or "", job.attempts) for job in jobs)

    assert await claim("first", 0.5, 5) == [("connection-0", 1)]  # only that one is due
    assert await claim("second", 1.2, 5) == [("connection-1", 1)]  # first's lease still holds
    # At 10 s: first's lease (to 1.5 s) and second's (to 2.2 s) have expired; the oldest two
    # of everything due go first, whether pending or expired.
    assert await claim("third", 10, 2) == [("connection-0", 2), ("connection-1", 2)]
    assert await claim("third", 10, 5) == [("connection-2", 1)]
    assert await claim("third", 10, 5) == []  # connection-3 is due at 100 s
    rows = await service.rows("SELECT connection_id, locked_by FROM outbox "
                              "WHERE status = 'running' ORDER BY connection_id")
    assert [(r["connection_id"], r["locked_by"]) for r in rows] == [
        ("connection-0", "third"), ("connection-1", "third"), ("connection-2", "third")]


async def test_a_claim_only_takes_jobs_that_do_not_call_codat_when_told(
        service: Service) -> None:
    t0 = utcnow()
    push = Command(JobKind.PUSH_CHANGE, "push:1", "company", "connection-9", {"n": 1})

    async def enqueue(tx: Tx) -> None:
        await store.enqueue(tx, commands=[_confirm(1)], now=t0)
        await store.enqueue(tx, commands=[push], now=t0 + timedelta(seconds=1))
    await service.db.write(enqueue)
    jobs = await service.db.write(lambda tx: outbox.claim(
        tx, worker_id="w", now=t0 + timedelta(seconds=5), lease=LEASE, limit=5, codat=False))
    assert [job.kind for job in jobs] == [JobKind.PUSH_CHANGE]


# --- the cost of a claim does not grow with the backlog ---------------------------------------

def _pending_rows(count: int, now: str, kind: str = "confirm_connection",
                  prefix: str = "job") -> list[tuple[Any, ...]]:
    return [(f"{prefix}-{n:06d}", kind, f"{prefix}:{n}", "company", f"connection-{n}",
             "{}", "pending", 0, 8, f"2026-01-01 00:{n // 6000 % 60:02d}:{n // 100 % 60:02d}."
             f"{n % 100:06d}+00:00", now, now) for n in range(count)]


_INSERT = ("INSERT INTO outbox (id, kind, dedupe_key, company_id, connection_id, payload, status, "
           "attempts, max_attempts, next_attempt_at, created_at, updated_at) "
           "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)")
_NOW = "2026-06-01 00:00:00.000000+00:00"
# One push due after every Codat job of the backlog: what a claim while Codat calls wait takes.
_PUSH = ("push-000000", "push_change", "push:0", "company", "connection-0", "{}", "pending", 0, 8,
         "2026-01-02 00:00:00.000000+00:00", _NOW, _NOW)
_CLAIMS = {True: (outbox._CLAIM, "job-000000"), False: (outbox._CLAIM_KINDS, "push-000000")}


def _sqlite_claim_steps(path: Path, backlog: int, *, codat: bool = True) -> int:
    """SQLite virtual-machine steps (in thousands) that one claim takes with ``backlog`` Codat
    jobs pending (and one push, due last); without ``codat``, the claim of what does not call
    Codat."""
    statement, first = _CLAIMS[codat]
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("DELETE FROM outbox")
        conn.executemany(_INSERT.replace("$", "?"), [*_pending_rows(backlog, _NOW), _PUSH])
        steps = 0

        def count() -> int:
            nonlocal steps
            steps += 1
            return 0
        conn.execute("BEGIN")
        conn.set_progress_handler(count, 1000)
        claimed = conn.execute(statement.sqlite, ("w", _NOW, _NOW, 1, 8)).fetchall()
        conn.set_progress_handler(None, 0)
        conn.execute("ROLLBACK")
        assert [row[0] for row in claimed] == [first]
        return steps
    finally:
        conn.close()


@pytest.mark.parametrize("codat", [True, False], ids=["any job", "no Codat call"])
def test_a_sqlite_claim_reads_as_much_with_5000_jobs_pending_as_with_50(
        sqlite_template: Path, tmp_path: Path, codat: bool) -> None:
    path = tmp_path / "claim.db"
    shutil.copy(sqlite_template, path)
    small = _sqlite_claim_steps(path, 50, codat=codat)
    large = _sqlite_claim_steps(path, 5000, codat=codat)
    # Before: every due job collected and sorted for each claim (about 100 times the steps);
    # and while Codat calls waited, every pending Codat job walked to skip it (60 times).
    assert large <= small + 2, (small, large)


@pytest.mark.parametrize("codat", [True, False], ids=["any job", "no Codat call"])
async def test_a_postgres_claim_reads_a_few_rows_with_5000_jobs_pending(
        postgres_url: str, codat: bool) -> None:
    statement, first = _CLAIMS[codat]
    conn = await asyncpg.connect(postgres_url)
    try:
        await conn.execute("TRUNCATE outbox")
        rows = [*_pending_rows(5000, _NOW), _PUSH]
        await conn.executemany(_INSERT.replace("$10", "$10::text::timestamptz")
                               .replace("$11", "$11::text::timestamptz")
                               .replace("$12", "$12::text::timestamptz"), rows)
        await conn.execute("ANALYZE outbox")
        for explain in (False, True):  # the claim is only checked and measured, never kept
            measuring = conn.transaction()
            await measuring.start()
            if explain:
                plan = json.loads(await conn.fetchval(
                    "EXPLAIN (ANALYZE, FORMAT JSON) " + statement.pg, "w", utcnow(), utcnow(),
                    1, 8))
            else:
                claimed = await conn.fetch(statement.pg, "w", utcnow(), utcnow(), 1, 8)
                assert [row["id"] for row in claimed] == [first]
            await measuring.rollback()

        def scanned(node: dict[str, Any]) -> list[int]:
            own = [int(node["Actual Rows"]) + int(node.get("Rows Removed by Filter", 0))
                   ] if "Scan" in node["Node Type"] else []
            return own + [n for child in node.get("Plans", []) for n in scanned(child)]
        reads = scanned(plan[0]["Plan"])
        # before: 5,000 (a bitmap scan of them all), and while Codat calls waited, 5,000 to skip
        assert reads and max(reads) <= 100, reads
    finally:
        await conn.close()


async def test_job_ids_begin_with_their_creation_so_new_jobs_append_to_the_key(
        service: Service) -> None:
    # A job's id is its primary key: a random one would put each new job on a random page of
    # that index (a page written per job). Both paths that enqueue make them alike: the
    # delivery path (on PostgreSQL, its batch statement) and store.enqueue.
    company, connection = new_id(), new_id()
    response = await service.deliver(connection_body(
        "connection.connected", company_id=company, connection_id=connection, status="Linked",
        generated=utcnow()))
    assert response.status_code == 200
    later = utcnow() + timedelta(seconds=5)
    await service.db.write(lambda tx: store.enqueue(tx, commands=[_confirm(1)], now=later))
    rows = await service.rows("SELECT id, created_at FROM outbox ORDER BY created_at, id")
    assert len(rows) >= 2 and rows[-1]["id"].startswith(f"{int(later.timestamp() * 1000):012x}")
    for row in rows:
        assert re.fullmatch("[0-9a-f]{32}", row["id"])
        created = as_dt(row["created_at"])
        assert created is not None
        assert int(row["id"][:12], 16) == int(created.timestamp() * 1000)
    assert [r["id"] for r in rows] == sorted(r["id"] for r in rows)
