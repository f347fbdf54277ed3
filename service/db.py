"""One async database interface over SQLite and PostgreSQL, built for the delivery path.

A *unit of work* is an ``async def work(tx) -> T`` that awaits nothing but its :class:`Tx`.
``Database.write(work)`` runs it in a transaction and returns only after the commit;
``Database.read(work)`` runs it on a read connection.

SQLite (the embedded default): one writer thread owns the only write connection. It takes every
unit of work queued since its last commit and runs them in ONE transaction (group commit), so a
storm of deliveries shares each fsync, yet every caller is answered only after its own commit.
Because SQLite statements never wait on the network, the writer drives each unit's coroutine to
completion itself: the event loop is never blocked by a statement or an fsync. Reads run on a
small pool of reader threads (WAL lets them run beside the writer).

PostgreSQL: each unit of work runs in its own transaction on a pooled asyncpg connection, so
several receivers and workers share one database; deadlocks between them are retried.

Statements are written once with ``$n`` placeholders (``{lock}`` marks a row lock, which SQLite
does not need because its single writer already serialises writes) and built for both dialects
at import. Values: datetimes go in as aware UTC datetimes and come out through :func:`as_dt`;
JSON goes in and comes out as text (:func:`to_json`, :func:`from_json`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import queue
import random
import re
import sqlite3
import threading
import time
import zlib
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, Protocol, Self, TypeVar, cast
from urllib.parse import unquote, urlsplit

import asyncpg
import orjson

from service.errors import Contended, DatabaseUnavailable
from service.logs import get_logger
from service.private_files import make_private

T = TypeVar("T")
log = get_logger("db")
Row = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Sql:
    """One statement, built once for each dialect."""

    pg: str
    sqlite: str


_PLACEHOLDER = re.compile(r"\$(\d+)")


_LOCKS = {"{lock}": " FOR UPDATE", "{skip_locked}": " FOR UPDATE SKIP LOCKED",
          "{key_share}": " FOR KEY SHARE"}


def sql(text: str) -> Sql:
    """Build a statement from portable text with ``$n`` placeholders and row-lock markers
    (``{lock}``, ``{skip_locked}``, ``{key_share}``: nothing on SQLite, whose one writer
    serialises writes; ``IS DISTINCT FROM`` is written as SQLite's ``IS NOT`` there)."""
    pg = lite = text
    for marker, clause in _LOCKS.items():
        pg, lite = pg.replace(marker, clause), lite.replace(marker, "")
    lite = _PLACEHOLDER.sub(r"?\1", lite)
    lite = lite.replace(" IS DISTINCT FROM ", " IS NOT ")  # SQLite's null-safe comparison
    return Sql(pg=pg, sqlite=lite)


class Tx(Protocol):
    """A transaction (or read snapshot) a unit of work runs in."""

    dialect: str

    async def fetchrow(self, q: Sql, *args: Any) -> Row | None: ...

    async def fetch(self, q: Sql, *args: Any) -> Sequence[Row]: ...

    async def fetchval(self, q: Sql, *args: Any) -> Any: ...

    async def execute(self, q: Sql, *args: Any) -> None: ...

    def note_change(self) -> None:
        """This transaction recorded a change of the feed: its commit wakes the feed's
        waiters (see :meth:`Database.on_commit`)."""


Work = Callable[[Tx], Coroutine[Any, Any, T]]


class SetWork(ABC, Generic[T]):
    """A unit of work that a batch of its kind may also do at once, with statements that each
    commit on their own (PostgreSQL): fewer round trips, the same effects as each in turn."""

    @abstractmethod
    async def __call__(self, tx: Tx) -> T: ...

    @classmethod
    @abstractmethod
    async def run_at_once(cls, tx: Tx, works: Sequence[Self]) -> list[T | None]:
        """Try ``works`` OUTSIDE a transaction. A result for each unit done; None for each unit
        left to run in a transaction, for which nothing was written."""


def as_dt(value: Any) -> datetime | None:
    """A stored timestamp as an aware UTC datetime (SQLite keeps them as text)."""
    if value is None or isinstance(value, datetime):
        return value
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def to_json(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


def from_json(value: Any) -> Any:
    return None if value is None else orjson.loads(value)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Database(ABC):
    """The interface the rest of the service uses; see the module docstring."""

    dialect: str
    url: str

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def close(self) -> None:
        """Commit the writes queued or under way (a drain: none of them fails for the close),
        then let go of the database."""

    @abstractmethod
    async def write(self, work: Work[T], *, affinity: str | None = None) -> T:
        """Run ``work`` in a transaction; return after its commit. Units of work with an
        ``affinity`` (e.g. a connection id) may be committed together with others."""

    @abstractmethod
    async def read(self, work: Work[T]) -> T: ...

    def on_commit(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (from the committing thread) after each commit of this process's
        writes; where other processes write too, readers must poll as well."""
        self._commit_callbacks.append(callback)

    _commit_callbacks: list[Callable[[], None]]


def open_database(url: str, *, pool_size: int = 8, sqlite_synchronous: str = "FULL",
                  sqlite_busy_timeout_ms: int = 10_000, write_partitions: int = 1) -> Database:
    """The database for a ``DATABASE_URL`` (not yet started)."""
    if url.startswith("sqlite"):
        return SqliteDatabase(url, synchronous=sqlite_synchronous,
                              busy_timeout_ms=sqlite_busy_timeout_ms)
    return PostgresDatabase(url, pool_size=pool_size, write_partitions=write_partitions)


def sqlite_path(url: str) -> str:
    """``sqlite:///relative.db`` or ``sqlite:////absolute.db`` -> a file path."""
    path = url.split("://", 1)[1]
    path = path[1:] if path.startswith("/") else path
    if not path or path == ":memory:":
        raise ValueError("SQLite needs a file (WAL and several processes): sqlite:///PATH")
    return unquote(path)


def postgres_dsn(url: str) -> str:
    """A URL asyncpg accepts (drops a SQLAlchemy ``+driver`` suffix)."""
    scheme, rest = url.split("://", 1)
    return "postgresql://" + rest if scheme.startswith("postgres") else url


def redact_url(url: str) -> str:
    """The URL without its password, for logs and status output."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return parts._replace(netloc=netloc).geturl()
    return url


def _drive(coro: Coroutine[Any, Any, T]) -> T:
    # A SQLite unit of work never suspends (its Tx awaits nothing real), so one send() runs it
    # to the end. If it did suspend, it awaited something else: that is a programming error.
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    coro.close()
    raise RuntimeError("a unit of work awaited something other than its transaction")


@functools.lru_cache(maxsize=64)
def _sqlite_time(value: datetime) -> str:
    # SQLAlchemy's SQLite format ("%Y-%m-%d %H:%M:%S.%f" in UTC); isoformat is ~4x faster than
    # strftime. This runs for every timestamp of every statement, and one unit of work passes
    # the same few instants (its "now") to several: the cache formats each once.
    utc = value if value.tzinfo is UTC else value.astimezone(UTC)
    return utc.replace(tzinfo=None).isoformat(" ", "microseconds")


class _SqliteTx:
    dialect = "sqlite"

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self.changed = False

    def note_change(self) -> None:
        self.changed = True

    def _run(self, q: Sql, args: tuple[Any, ...]) -> sqlite3.Cursor:
        return self._conn.execute(q.sqlite, [_sqlite_time(a) if isinstance(a, datetime) else a
                                             for a in args])

    async def fetchrow(self, q: Sql, *args: Any) -> Row | None:
        row: Row | None = self._run(q, args).fetchone()
        return row

    async def fetch(self, q: Sql, *args: Any) -> Sequence[Row]:
        rows: list[Row] = self._run(q, args).fetchall()
        return rows

    async def fetchval(self, q: Sql, *args: Any) -> Any:
        row = self._run(q, args).fetchone()
        return None if row is None else row[0]

    async def execute(self, q: Sql, *args: Any) -> None:
        self._run(q, args)


@dataclass(slots=True)
class _Job:
    work: Work[Any]
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # the caller went away (cancelled); the commit stands regardless
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


def _settle_all(settled: list[tuple[asyncio.Future[Any], Any]]) -> None:
    for future, result in settled:
        _settle(future, result, None)


_STOP = object()


_WRITER_CACHE_KIB = 64 * 1024
# 0.25 ms: measured against none and 0.5 ms (SQLite, defaults, 3 alternated runs each): 13% less
# CPU per delivery and ~8% more deliveries/s; 1 ms lost throughput to latency.
_GROUP_COMMIT_LINGER = 0.00025


class SqliteDatabase(Database):
    """SQLite in WAL mode: one writer thread with group commit, reader threads beside it."""

    dialect = "sqlite"

    def __init__(self, url: str, *, synchronous: str = "FULL", busy_timeout_ms: int = 10_000,
                 readers: int = 2, max_batch: int = 256) -> None:
        self.url = url
        self._busy_timeout_ms = busy_timeout_ms
        self.path = sqlite_path(url)
        self._synchronous = synchronous
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._readers = ThreadPoolExecutor(max_workers=readers, thread_name_prefix="sqlite-read")
        self._local = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._commit_callbacks = []

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                               timeout=self._busy_timeout_ms / 1000, cached_statements=256)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self._synchronous}")
        conn.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_ms)}")
        return conn

    async def start(self) -> None:
        make_private(self.path)  # it holds raw webhook bodies: 0600, with its -wal and -shm
        conn = self._connect()  # fails here, loudly, if the file cannot be opened
        # The writer's page cache holds the indexes a large database grows. (Checkpoints stay
        # at SQLite's 1,000 WAL pages: at 10,000 ingest gained ~10% on an empty database, but
        # each checkpoint stalled the writer for up to half a second on a large one.)
        conn.execute(f"PRAGMA cache_size=-{_WRITER_CACHE_KIB}")
        self._writer = threading.Thread(target=self._write_loop, args=(conn,),
                                        name="sqlite-writer", daemon=True)
        self._writer.start()

    async def close(self) -> None:
        if self._writer is not None:
            self._queue.put(_STOP)  # queued work before it is still committed: a drain
            await asyncio.to_thread(self._writer.join)
            self._writer = None
        self._readers.shutdown(wait=True)
        with self._lock:
            for conn in self._reader_conns:
                conn.close()
            self._reader_conns.clear()

    async def write(self, work: Work[T], *, affinity: str | None = None) -> T:
        if self._writer is None:
            raise DatabaseUnavailable("the database is not open")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Job(work, future, loop))
        return await future

    async def read(self, work: Work[T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, self._read_sync, work)

    def _read_sync(self, work: Work[T]) -> T:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            conn.execute("PRAGMA query_only=ON")
            self._local.conn = conn
            with self._lock:
                self._reader_conns.append(conn)
        try:
            conn.execute("BEGIN")  # one snapshot for the whole unit of work
            try:
                return _drive(work(_SqliteTx(conn)))
            finally:
                conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            raise DatabaseUnavailable(f"SQLite read failed: {exc}") from exc

    def _write_loop(self, conn: sqlite3.Connection) -> None:
        busy = False  # the last batch held more than one unit of work
        try:
            while True:
                item = self._queue.get()
                if item is _STOP:
                    return
                if busy:
                    # Under load, a quarter of a millisecond lets the event loop queue the
                    # requests that have already arrived: fewer, larger commits (each is an
                    # fsync and a WAL copy of every page it touched). A lone write after a
                    # quiet spell never waits.
                    time.sleep(_GROUP_COMMIT_LINGER)
                batch = [item]
                stop = False
                while len(batch) < self._max_batch:
                    try:
                        more = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if more is _STOP:
                        stop = True
                        break
                    batch.append(more)
                busy = len(batch) > 1
                self._commit_batch(conn, batch)
                if stop:
                    return
        finally:
            conn.close()

    def _commit_batch(self, conn: sqlite3.Connection, batch: list[_Job]) -> None:
        tx = _SqliteTx(conn)
        results: list[Any] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            self._fail_all(batch, exc)
            return
        try:
            for job in batch:
                results.append(_drive(job.work(tx)))
        except Exception:
            # One unit failed: undo the batch and give every unit a transaction of its own, so
            # only the failing one fails. Rare, so simple beats clever here.
            conn.rollback()
            for job in batch:
                self._commit_one(conn, job)
            return
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.rollback()
            self._fail_all(batch, exc)
            return
        self._resolve_all(batch, results)
        if tx.changed:
            self._committed()

    def _committed(self) -> None:
        for callback in self._commit_callbacks:
            callback()

    def _commit_one(self, conn: sqlite3.Connection, job: _Job) -> None:
        try:
            conn.execute("BEGIN IMMEDIATE")
            tx = _SqliteTx(conn)
            result = _drive(job.work(tx))
            conn.execute("COMMIT")
            if tx.changed:
                self._committed()
        except Exception as exc:
            if conn.in_transaction:
                conn.rollback()
            error = (DatabaseUnavailable(f"SQLite write failed: {exc}")
                     if isinstance(exc, sqlite3.OperationalError) else exc)
            self._resolve(job, None, error)
            return
        self._resolve(job, result, None)

    def _fail_all(self, batch: list[_Job], exc: BaseException) -> None:
        for job in batch:
            self._resolve(job, None, DatabaseUnavailable(f"SQLite write failed: {exc}"))

    @staticmethod
    def _resolve(job: _Job, result: Any, error: BaseException | None) -> None:
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
            job.loop.call_soon_threadsafe(_settle, job.future, result, error)

    @staticmethod
    def _resolve_all(batch: list[_Job], results: list[Any]) -> None:
        """Settle a committed batch with one wake-up of each waiting loop, not one per job
        (each is a write to the loop's self-pipe and a trip round it)."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any]]] = {}
        for job, result in zip(batch, results, strict=True):
            by_loop.setdefault(job.loop, []).append((job.future, result))
        for loop, settled in by_loop.items():
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                loop.call_soon_threadsafe(_settle_all, settled)


# asyncpg prepares (and PostgreSQL plans) a statement once per connection only when its text
# is at most this long; its default, 15 KiB, is less than the batch statement of
# service/batch.py, which was then parsed and planned for every batch (over 1 ms of the
# server's CPU per delivery).
_MAX_CACHED_STATEMENT = 64 * 1024


class _PgTx:
    dialect = "postgresql"

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    def note_change(self) -> None:
        """Nothing: a change's transaction NOTIFYs, and every process listens."""

    async def fetchrow(self, q: Sql, *args: Any) -> Row | None:
        try:
            row: Row | None = await self._conn.fetchrow(q.pg, *args)
        except _PG_CONTENDED as exc:
            raise Contended(str(exc)) from exc
        return row

    async def fetch(self, q: Sql, *args: Any) -> Sequence[Row]:
        try:
            rows: list[Row] = await self._conn.fetch(q.pg, *args)
        except _PG_CONTENDED as exc:
            raise Contended(str(exc)) from exc
        return rows

    async def fetchval(self, q: Sql, *args: Any) -> Any:
        try:
            return await self._conn.fetchval(q.pg, *args)
        except _PG_CONTENDED as exc:
            raise Contended(str(exc)) from exc

    async def execute(self, q: Sql, *args: Any) -> None:
        try:
            await self._conn.execute(q.pg, *args)
        except _PG_CONTENDED as exc:
            raise Contended(str(exc)) from exc


# Errors that mean "the database cannot be written now" rather than "our code is wrong".
_PG_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,  # includes ConnectionError and TimeoutError
    asyncpg.InterfaceError,  # includes ConnectionDoesNotExistError
    asyncpg.PostgresConnectionError,  # class 08
    asyncpg.CannotConnectNowError,
    asyncpg.InsufficientResourcesError,  # class 53: disk full, out of memory, too many clients
    asyncpg.OperatorInterventionError,  # class 57: admin shutdown, crash shutdown
    asyncpg.ReadOnlySQLTransactionError,  # a standby, or a primary gone read-only
    asyncpg.UndefinedTableError,  # migrations not applied yet
)
_PG_CONTENDED: tuple[type[BaseException], ...] = (
    asyncpg.DeadlockDetectedError, asyncpg.SerializationError,
)


def is_unavailable(exc: BaseException) -> bool:
    """True for an error that means the database cannot be written now (not a bug of ours)."""
    return isinstance(exc, (DatabaseUnavailable, *_PG_UNAVAILABLE))


@dataclass(slots=True)
class _Pending:
    work: Work[Any]
    future: asyncio.Future[Any]


class PostgresDatabase(Database):
    """PostgreSQL through asyncpg.

    Writes with an affinity (the receiver's, by connection) go through a few partitions, each
    committing what queued up while its previous batch ran (group commit, as on SQLite). A batch
    first tries :meth:`SetWork.run_at_once` (one statement that commits on its own), then runs
    what is left in ONE transaction. A given connection always maps to the same partition, so
    within a process no two batches wait on each other's row locks; across replicas PostgreSQL
    detects such a deadlock and the batch is retried one unit of work at a time. Each partition
    has a connection of its own, set up for keyed writes (see :data:`_KEYED_WRITES`). Other
    writes, and reads, share a pool of ``pool_size`` connections.
    """

    dialect = "postgresql"

    def __init__(self, url: str, *, pool_size: int = 8, acquire_timeout: float = 5.0,
                 write_partitions: int = 1, max_batch: int = 64) -> None:
        self.url = url
        self._dsn = postgres_dsn(url)
        self._pool_size = pool_size
        self._acquire_timeout = acquire_timeout
        self._pool: asyncpg.Pool | None = None
        self._batch_pool: asyncpg.Pool | None = None
        self._partitions = write_partitions
        self._max_batch = max_batch
        self._queues: list[asyncio.Queue[_Pending | None]] = []
        self._batchers: list[asyncio.Task[None]] = []
        self._writing = 0  # writes under way outside the batchers (close waits for them)
        self._written = asyncio.Event()
        self._written.set()
        self._commit_callbacks = []

    async def start(self) -> None:
        # min_size=0: start even while the database is down; /readyz says so until it is back.
        self._pool = await asyncpg.create_pool(
            self._dsn, min_size=0, max_size=self._pool_size, command_timeout=30,
            timeout=self._acquire_timeout, reset=_keep_session,
            max_cacheable_statement_size=_MAX_CACHED_STATEMENT,
        )
        self._batch_pool = await asyncpg.create_pool(
            self._dsn, min_size=0, max_size=self._partitions, command_timeout=30,
            timeout=self._acquire_timeout, server_settings=dict(_KEYED_WRITES),
            reset=_keep_session, max_cacheable_statement_size=_MAX_CACHED_STATEMENT,
        )
        self._queues = [asyncio.Queue() for _ in range(self._partitions)]
        self._batchers = [asyncio.create_task(self._batch_loop(q)) for q in self._queues]

    async def close(self) -> None:
        for q in self._queues:
            q.put_nowait(None)  # what is queued before it is still committed: a drain
        if self._batchers:
            await asyncio.gather(*self._batchers, return_exceptions=True)
        self._queues, self._batchers = [], []
        await self._written.wait()  # and the writes already under way, before the pools go
        for pool in (self._batch_pool, self._pool):
            if pool is not None:
                await pool.close()
        self._pool = self._batch_pool = None

    async def write(self, work: Work[T], *, affinity: str | None = None) -> T:
        if affinity is None or not self._queues:
            return await self._write_alone(work)
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queues[zlib.crc32(affinity.encode()) % len(self._queues)].put_nowait(
            _Pending(work, future))
        return await future

    async def _batch_loop(self, q: asyncio.Queue[_Pending | None]) -> None:
        while True:
            first = await q.get()
            if first is None:
                return
            batch, stop = [first], False
            while len(batch) < self._max_batch and not q.empty():
                more = q.get_nowait()
                if more is None:
                    stop = True
                    break
                batch.append(more)
            await self._commit_batch(batch)
            if stop:
                return

    async def _commit_batch(self, batch: list[_Pending]) -> None:
        try:
            batch = await self._try_at_once(batch)
        except DatabaseUnavailable as exc:
            for pending in batch:
                _settle(pending.future, None, exc)
            return
        if len(batch) > 1:
            try:
                results = await self._run(lambda tx: _run_all(tx, batch), transaction=True,
                                          pool=self._batch_pool)
            except DatabaseUnavailable as exc:
                for pending in batch:
                    _settle(pending.future, None, exc)
                return
            except Exception:  # a unit failed, or a deadlock: each gets a transaction of its own
                pass
            else:
                for pending, result in zip(batch, results, strict=True):
                    _settle(pending.future, result, None)
                return
        for pending in batch:
            try:
                result = await self._write_alone(pending.work, pool=self._batch_pool)
            except Exception as exc:
                _settle(pending.future, None, exc)
            else:
                _settle(pending.future, result, None)

    async def _try_at_once(self, batch: list[_Pending]) -> list[_Pending]:
        """Settle what :meth:`SetWork.run_at_once` does of the batch; return the rest."""
        kind = type(batch[0].work)
        if not issubclass(kind, SetWork) or any(type(p.work) is not kind for p in batch):
            return batch
        works = [cast(SetWork[Any], p.work) for p in batch]
        try:
            done = await self._run(lambda tx: kind.run_at_once(tx, works), transaction=False,
                                   pool=self._batch_pool)
        except DatabaseUnavailable:
            raise
        except Exception as exc:  # a bug of ours: what is left of the batch takes transactions
            log.error("a batch could not be written at once", exc_info=exc)
            return batch
        rest = []
        for pending, result in zip(batch, done, strict=True):
            if result is None:
                rest.append(pending)
            else:
                _settle(pending.future, result, None)
        return rest

    async def _write_alone(self, work: Work[T], *, pool: asyncpg.Pool | None = None) -> T:
        self._writing += 1
        self._written.clear()
        try:
            for attempt in range(5):
                try:
                    return await self._run(work, transaction=True, pool=pool)
                except Contended:
                    await asyncio.sleep(random.uniform(0, 0.02 * 2**attempt))
            raise DatabaseUnavailable("PostgreSQL kept reporting deadlocks; try again")
        finally:
            self._writing -= 1
            if not self._writing:
                self._written.set()

    async def read(self, work: Work[T]) -> T:
        return await self._run(work, transaction=False)

    async def _run(self, work: Work[T], *, transaction: bool,
                   pool: asyncpg.Pool | None = None) -> T:
        pool = pool or self._pool
        if pool is None:
            raise DatabaseUnavailable("the database is not open")
        try:
            async with pool.acquire(timeout=self._acquire_timeout) as conn:
                if not transaction:
                    return await work(_PgTx(conn))
                return await _in_write_transaction(conn, work)
        except _PG_UNAVAILABLE as exc:
            raise DatabaseUnavailable(f"PostgreSQL unavailable: {type(exc).__name__}: {exc}") \
                from exc


# How write statements are planned. The delivery path's set-based statements unnest arrays whose
# length the planner knows only from the values: left to itself it would plan them afresh at
# every execution (custom plans), which costs more than running them, or, planning once while
# the tables are still small, keep a plan that scans them whole. Every write statement here is
# keyed (primary and unique keys), so one generic plan through the indexes is right for all.
# The batch connections ask for it when they connect (so that it is theirs for good);
# other write transactions set it for themselves (SET LOCAL); reads keep the defaults, as their
# filters may want plans by value.
_KEYED_WRITES = (("plan_cache_mode", "force_generic_plan"), ("enable_seqscan", "off"),
                 ("enable_hashjoin", "off"), ("enable_mergejoin", "off"))
_BEGIN_WRITE = "BEGIN; " + " ".join(f"SET LOCAL {k} = {v};" for k, v in _KEYED_WRITES)


async def _keep_session(conn: asyncpg.Connection) -> None:
    """A connection goes back to its pool as it is: asyncpg has already rolled back a transaction
    left open, and nothing here changes the session otherwise (no SET but SET LOCAL, no LISTEN,
    no advisory lock, no cursor). The default reset would cost a round trip per release, that is
    one more per batch of deliveries and per read, before anyone is answered."""


async def _in_write_transaction(conn: asyncpg.Connection, work: Work[T]) -> T:
    await conn.execute(_BEGIN_WRITE)  # one round trip, as a bare BEGIN
    try:
        result = await work(_PgTx(conn))
    except BaseException:
        if not conn.is_closed():
            with contextlib.suppress(Exception):  # releasing the connection resets it anyway
                await conn.execute("ROLLBACK")
        raise
    await conn.execute("COMMIT")
    return result


async def _run_all(tx: Tx, batch: list[_Pending]) -> list[Any]:
    return [await pending.work(tx) for pending in batch]


async def with_database(url: str, fn: Callable[[Database], Awaitable[T]], **options: Any) -> T:
    """Open a database, run ``fn`` with it, close it (for the CLI and scripts)."""
    db = open_database(url, **options)
    await db.start()
    try:
        return await fn(db)
    finally:
        await db.close()
