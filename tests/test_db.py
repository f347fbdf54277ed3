"""The write contract of service/db.py, on SQLite and PostgreSQL: writes queued together share a
commit, yet each caller is answered after its own; a unit of work that fails, fails alone; and
closing the database commits what was queued before it (a drain)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from service.db import Database, Tx, open_database, sql, utcnow

_PUT = sql("INSERT INTO subscriber_cursors (name, position, updated_at) VALUES ($1, $2, $3)")
_NAMES = sql("SELECT name FROM subscriber_cursors ORDER BY name")


async def _opened(url: str) -> Database:
    db = open_database(url)
    await db.start()
    return db


def _put(name: str, *, fail: bool = False) -> Any:
    async def work(tx: Tx) -> Tx:
        await tx.execute(_PUT, name, 1, utcnow())
        if fail:
            raise ValueError(f"{name} refused")
        return tx  # the transaction it ran in: which writes shared a commit
    return work


async def _names(db: Database) -> list[str]:
    return [row["name"] for row in await db.read(lambda tx: tx.fetch(_NAMES))]


async def test_writes_queued_together_share_a_commit_and_each_is_answered_after_it(
        database_url: str) -> None:
    db = await _opened(database_url)
    try:
        names = [f"w{n}" for n in range(8)]
        # Every write is queued before the database takes the first (one turn of the loop), and
        # all with one affinity: PostgreSQL batches by affinity, as the receiver asks it to.
        txs = await asyncio.gather(*(db.write(_put(n), affinity="one") for n in names))
        assert len({id(tx) for tx in txs}) < len(names)  # fewer transactions than writes
        assert await _names(db) == names  # each answered write is committed
    finally:
        await db.close()


async def test_a_unit_that_fails_fails_alone_and_the_rest_of_its_batch_commits(
        database_url: str) -> None:
    db = await _opened(database_url)
    try:
        names = [f"w{n}" for n in range(6)]
        results = await asyncio.gather(
            *(db.write(_put(n, fail=n == "w2"), affinity="one") for n in names),
            return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        assert len(failed) == 1 and isinstance(failed[0], ValueError)
        assert str(failed[0]) == "w2 refused"
        assert await _names(db) == [n for n in names if n != "w2"]  # w2's insert rolled back
    finally:
        await db.close()


@pytest.mark.parametrize("affinity", [None, "one"], ids=["alone", "batched"])
async def test_closing_commits_the_writes_queued_before_it(
        database_url: str, affinity: str | None) -> None:
    db = await _opened(database_url)
    names = [f"w{n}" for n in range(8)]
    writes = [asyncio.create_task(db.write(_put(n), affinity=affinity)) for n in names]
    await asyncio.sleep(0)  # each write is queued (or sent), none answered yet
    assert not any(w.done() for w in writes)
    await db.close()
    await asyncio.wait_for(asyncio.gather(*writes), 5)  # every caller answered, none failed
    db = await _opened(database_url)
    try:
        assert await _names(db) == names
    finally:
        await db.close()
