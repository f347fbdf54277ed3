"""The change feed: every change of a connection's state or a company's readiness, recorded in
the transaction that made it, read in order by cursor, and waited for by long polls.

Never skipping a change. Each change's id is drawn after the rows it describes were locked
(and after its transaction had written, so it holds a transaction id), so ids follow commit
order for each connection. On PostgreSQL a row with a smaller id can still commit after one
with a larger id is visible; a reader therefore reads only up to a *horizon*: the largest id
it saw committed in some snapshot, once every transaction in progress at that snapshot has
ended (then nothing can still appear below it). Each process keeps its recent snapshots
(:class:`Horizon`); a transaction left open somewhere in the cluster holds the horizon back,
so set ``idle_in_transaction_session_timeout``. On SQLite the one writer commits in id order,
so the horizon is the largest id.

Waking: a change committed on PostgreSQL NOTIFYs ``codat_hooks_changes`` (delivered at commit,
by whichever replica or worker made it); each process LISTENs on a connection of its own and
wakes its waiters, and re-checks every second regardless. On SQLite the writer wakes them
after each commit.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from schemas.changes import ChangeType
from service.db import Database, Row, Tx, as_dt, from_json, postgres_dsn, sql, to_json
from service.logs import get_logger

log = get_logger("feed")
CHANNEL = "codat_hooks_changes"
MAX_LIMIT = 500
MAX_WAIT = 30.0
# A filtered read scans at most this many changes past the cursor before it answers (perhaps
# with nothing), so every page costs about the same whatever the filter.
SCAN = 5000

_INSERT = sql("""
INSERT INTO changes (type, at, company_id, connection_id, data) VALUES ($1, $2, $3, $4, $5)""")
_NOTIFY = sql(f"SELECT pg_notify('{CHANNEL}', '')")


async def record(tx: Tx, kind: ChangeType, *, company_id: str, connection_id: str | None,
                 data: dict[str, Any], at: datetime) -> None:
    """Add a change in the caller's transaction, which must have written already (see the
    module docstring); on PostgreSQL its commit wakes every process's waiters."""
    await tx.execute(_INSERT, kind.value, at, company_id, connection_id, to_json(data))
    tx.note_change()
    if tx.dialect == "postgresql":
        await tx.execute(_NOTIFY)  # one per transaction: PostgreSQL folds repeats


# --- reading -----------------------------------------------------------------------------------

class FeedGone(Exception):
    """A cursor below what the feed still keeps."""


class BadCursor(ValueError):
    """A cursor this feed did not hand out."""


_PREFIX = "f1."


def encode_cursor(position: int) -> str:
    return _PREFIX + base64.urlsafe_b64encode(str(position).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    if not cursor.startswith(_PREFIX) or len(cursor) > 40:
        raise BadCursor("after: not a cursor this feed returned (or 'now')")
    body = cursor[len(_PREFIX):]
    try:
        text = base64.b64decode(body + "=" * (-len(body) % 4), altchars=b"-_",
                                validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise BadCursor("after: not a cursor this feed returned (or 'now')") from None
    if not (text.isascii() and text.isdigit()):
        raise BadCursor("after: not a cursor this feed returned (or 'now')")
    return int(text)


@dataclass(frozen=True, slots=True)
class Filters:
    company_id: str | None = None
    connection_id: str | None = None
    type: ChangeType | None = None

    def keep(self, row: Row) -> bool:
        return ((self.company_id is None or row["company_id"] == self.company_id)
                and (self.connection_id is None or row["connection_id"] == self.connection_id)
                and (self.type is None or row["type"] == self.type.value))


@dataclass(frozen=True, slots=True)
class Page:
    results: list[dict[str, Any]]
    next: int  # the position to continue after


def change_json(row: Row) -> dict[str, Any]:
    at = as_dt(row["at"])
    return {"id": str(row["id"]), "type": row["type"],
            "at": None if at is None else at.isoformat().replace("+00:00", "Z"),
            "companyId": row["company_id"], "connectionId": row["connection_id"],
            "data": from_json(row["data"])}


_PAGE = sql("""
SELECT id, type, at, company_id, connection_id, data FROM changes
WHERE id > $1 AND id <= $2 ORDER BY id LIMIT $3""")
_FLOOR = sql("SELECT floor FROM feed_state WHERE id = 1")
_LAST = sql("SELECT MAX(id) FROM changes")


async def floor(tx: Tx) -> int:
    """Changes up to this id were pruned (0: none ever was)."""
    value = await tx.fetchval(_FLOOR)
    return 0 if value is None else int(value)


async def read_page(tx: Tx, *, after: int | None, horizon: int, limit: int,
                    filters: Filters, scan: int = SCAN) -> Page:
    """Changes after ``after`` (None: from the beginning) up to ``horizon``, at most ``limit``
    of those ``filters`` keep; raises :class:`FeedGone` for a cursor under the floor."""
    lowest = await floor(tx)
    if after is None:
        after = lowest
    elif after < lowest:
        raise FeedGone(f"after: changes up to {lowest} were pruned; this cursor points before "
                       "them. Start again without after (or with after=now).")
    cap = scan if filters != Filters() else limit
    rows = await tx.fetch(_PAGE, after, horizon, cap)
    kept = [r for r in rows if filters.keep(r)][:limit]
    if len(kept) == limit:
        position = int(kept[-1]["id"])  # a full page: there may be more
    elif len(rows) == cap:
        position = int(rows[-1]["id"])  # scanned this far without filling it: go on from here
    else:
        position = max(after, horizon)  # everything up to the horizon was seen
    return Page([change_json(r) for r in kept], position)


# --- the horizon ---------------------------------------------------------------------------------

_OBSERVE = sql("""
SELECT CAST(pg_snapshot_xmin(s) AS TEXT) AS xmin,
    (SELECT CAST(x AS TEXT) FROM pg_snapshot_xip(s) x ORDER BY x DESC LIMIT 1) AS top,
    (SELECT MAX(id) FROM changes) AS last
FROM pg_current_snapshot() s""")


class Horizon:
    """The highest change id below which nothing can still appear (see the module docstring).

    Keeps what this process saw recently: (the newest transaction then in progress, the
    largest id then committed). Once every transaction in progress then has ended, that id is
    the horizon."""

    def __init__(self, remember: int = 256) -> None:
        self._seen: deque[tuple[int, int]] = deque(maxlen=remember)
        self._best = 0

    async def current(self, db: Database, *, patience: float = 1.0) -> int:
        if db.dialect != "postgresql":
            return int(await db.read(lambda tx: tx.fetchval(_LAST)) or 0)
        deadline = time.monotonic() + patience
        while True:
            row = await db.read(lambda tx: tx.fetchrow(_OBSERVE))
            assert row is not None
            xmin, last = int(row["xmin"]), int(row["last"] or 0)
            top = 0 if row["top"] is None else int(row["top"])
            self._seen.append((top, last))
            if top == 0:  # nothing in flight: all committed so far is final
                self._best = max(self._best, last)
            for newest_then, seen_last in self._seen:
                if newest_then < xmin:  # every transaction then in flight has ended
                    self._best = max(self._best, seen_last)
            while self._seen and self._seen[0][0] < xmin:
                self._seen.popleft()
            if self._best >= last or time.monotonic() >= deadline:
                return self._best
            await asyncio.sleep(0.005)


# --- waking ---------------------------------------------------------------------------------------

class Notifier:
    """Wakes long polls when changes commit (see the module docstring)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self._listener: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._dsn: str | None = None

    def wake(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, timeout: float) -> None:
        """Until a change commits, or ``timeout`` (at most a second: a re-check regardless)."""
        event = self._event
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), min(timeout, 1.0))

    async def start(self, db: Database) -> None:
        if db.dialect == "postgresql":
            self._dsn = postgres_dsn(db.url)
            self._task = asyncio.create_task(self._listen())
        else:
            loop = asyncio.get_running_loop()

            def committed() -> None:  # on the writer's thread
                with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits
                    loop.call_soon_threadsafe(self.wake)
            db.on_commit(committed)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._listener is not None and not self._listener.is_closed():
            await self._listener.close()

    async def _listen(self) -> None:
        """A connection of its own (a pooled one would UNLISTEN when released), kept open."""
        assert self._dsn is not None
        while True:
            try:
                self._listener = await asyncpg.connect(self._dsn, timeout=5)
                lost = asyncio.Event()
                self._listener.add_termination_listener(lambda _, gone=lost: gone.set())
                await self._listener.add_listener(CHANNEL, lambda *_: self.wake())
                self.wake()  # changes may have committed while it was not listening
                await lost.wait()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                log.warning("cannot listen for changes; polling every second",
                            extra={"fields": {"error": type(exc).__name__}})
            finally:
                if self._listener is not None and not self._listener.is_closed():
                    await self._listener.close()
            self.wake()
            await asyncio.sleep(1.0)


# --- the feed, as one object the API and the CLI share -------------------------------------------

class Feed:
    """Read and wait: what ``GET /v1/events`` and ``codat-hooks events tail`` do."""

    def __init__(self, db: Database, notifier: Notifier | None = None) -> None:
        self._db = db
        self._horizon = Horizon()
        self.notifier = notifier or Notifier()

    async def now(self) -> int:
        return await self._horizon.current(self._db)

    async def page(self, *, after: int | None, limit: int, wait: float,
                   filters: Filters) -> Page:
        """A page of changes; with ``wait``, until there is one or ``wait`` seconds passed."""
        deadline = time.monotonic() + min(wait, MAX_WAIT)
        while True:
            horizon = await self._horizon.current(self._db)
            found = await self._db.read(lambda tx, a=after, h=horizon: read_page(  # type: ignore[misc]
                tx, after=a, horizon=h, limit=limit, filters=filters))
            left = deadline - time.monotonic()
            if found.results or left <= 0:
                return found
            after = found.next
            await self.notifier.wait(left)


def parse_filters(company_id: str | None, connection_id: str | None,
                  kind: str | None) -> Filters:
    if kind is not None and kind not in set(ChangeType):
        known = ", ".join(ChangeType)
        raise BadCursor(f"type: one of {known}")
    return Filters(company_id, connection_id, ChangeType(kind) if kind else None)


# --- retention -----------------------------------------------------------------------------------

_OLDEST = sql("""
SELECT id, at FROM changes WHERE id > $1 AND id <= $2 ORDER BY id LIMIT $3""")
_FORGET = sql("DELETE FROM changes WHERE id > $1 AND id <= $2")
_SET_FLOOR = sql("""
INSERT INTO feed_state (id, floor, updated_at) VALUES (1, $1, $2)
ON CONFLICT (id) DO UPDATE SET floor = excluded.floor, updated_at = excluded.updated_at""")


async def prune(tx: Tx, *, before: datetime, horizon: int, limit: int, now: datetime) -> int:
    """Forget up to ``limit`` of the oldest changes recorded before ``before``, only below
    ``horizon`` and only from the old end; the floor they leave answers 410 to older cursors."""
    lowest = await floor(tx)
    rows = await tx.fetch(_OLDEST, lowest, horizon, limit)
    top = lowest
    for row in rows:
        at = as_dt(row["at"])
        if at is None or at >= before:
            break
        top = int(row["id"])
    if top == lowest:
        return 0
    await tx.execute(_FORGET, lowest, top)
    await tx.execute(_SET_FLOOR, top, now)
    return sum(1 for r in rows if int(r["id"]) <= top)
