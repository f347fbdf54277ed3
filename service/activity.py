"""What happened over time, for the on-call page's charts: deliveries by outcome, connection
moves by target state, the job backlog by age, refusals by reason.

Every read is bounded by its time window and walks an index: deliveries one outcome at a time
along ``ix_deliveries_outcome_received_at`` (index-only), history from the first id of the
window (found by bisecting the primary key, as ids grow with time), pending jobs along
``ix_outbox_status_next_attempt_at``. A chart costs what its window holds, not what is stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from service.db import Sql, Tx, as_dt, sql
from service.recent import MinuteCounts

OUTCOMES = ("processed", "ignored", "unparseable", "failed")
TARGET_STATES = ("PendingAuth", "Linked", "Unlinked", "Deauthorized")
BACKLOG_AGES = (("not yet due", None), ("due < 1 min", 60), ("1-5 min", 300),
                ("5-15 min", 900), ("15-60 min", 3600), ("over 1 h", None))


@dataclass(frozen=True, slots=True)
class Window:
    """``buckets`` buckets of ``seconds`` each, the last one holding ``now``."""

    now: datetime
    buckets: int
    seconds: int

    @property
    def start(self) -> datetime:
        epoch = int(self.now.timestamp()) // self.seconds * self.seconds
        return datetime.fromtimestamp(epoch - (self.buckets - 1) * self.seconds,
                                      self.now.tzinfo)

    def edges(self) -> list[datetime]:
        return [self.start + timedelta(seconds=i * self.seconds) for i in range(self.buckets)]


def _bucketed(table: str, column: str, where: str, label: str) -> Sql:
    """``SELECT bucket, label, COUNT(*)`` over rows of ``table`` since ``$1`` (a datetime),
    bucket = (epoch of ``column`` - ``$2``) / ``$3``; the dialects count epochs apart."""
    text = (f"SELECT {{bucket}} AS bucket, {label} AS label, COUNT(*) AS n FROM {table} "
            f"WHERE {where} GROUP BY 1, 2")
    pg = sql(text.format(bucket=f"floor((extract(epoch FROM {column}) - $2) / $3)::int")).pg
    lite = sql(text.format(
        bucket=f"(CAST(strftime('%s', {column}) AS INTEGER) - $2) / $3")).sqlite
    return Sql(pg=pg, sqlite=lite)


_DELIVERIES = _bucketed("deliveries", "received_at", "outcome = $4 AND received_at >= $1",
                        "outcome")
_MOVES = _bucketed("connection_history", "recorded_at",
                   "id >= $4 AND recorded_at >= $1 AND result = 'applied'", "to_state")
_HISTORY_AT = sql("SELECT id, recorded_at FROM connection_history WHERE id >= $1 "
                  "ORDER BY id LIMIT 1")
_HISTORY_LAST = sql("SELECT MAX(id) FROM connection_history")
_PENDING_BETWEEN = sql("SELECT COUNT(*) FROM outbox WHERE status = 'pending' "
                       "AND next_attempt_at > $1 AND next_attempt_at <= $2")
_PENDING_BEFORE = sql("SELECT COUNT(*) FROM outbox WHERE status = 'pending' "
                      "AND next_attempt_at <= $1")
_PENDING_AFTER = sql("SELECT COUNT(*) FROM outbox WHERE status = 'pending' "
                     "AND next_attempt_at > $1")


def _series(rows: list[tuple[int, str, int]], window: Window,
            names: tuple[str, ...]) -> dict[str, list[int]]:
    series = {name: [0] * window.buckets for name in names}
    for bucket, name, n in rows:
        if 0 <= bucket < window.buckets:
            series.setdefault(name, [0] * window.buckets)[bucket] += n
    return series


async def deliveries(tx: Tx, window: Window) -> dict[str, list[int]]:
    """Stored deliveries per bucket, by outcome."""
    rows: list[tuple[int, str, int]] = []
    start = window.start
    for outcome in OUTCOMES:
        for r in await tx.fetch(_DELIVERIES, start, int(start.timestamp()), window.seconds,
                                outcome):
            rows.append((int(r["bucket"]), str(r["label"]), int(r["n"])))
    return _series(rows, window, OUTCOMES)


async def first_history_id(tx: Tx, since: datetime) -> int | None:
    """The first history id recorded at or after ``since`` (ids grow with time): a bisection
    over the primary key, ~20 point reads for a million rows. None: nothing since."""
    last = await tx.fetchval(_HISTORY_LAST)
    if last is None:
        return None
    low, high = 1, int(last) + 1  # the answer is in [low, high); high: none
    while low < high:
        middle = (low + high) // 2
        row = await tx.fetchrow(_HISTORY_AT, middle)
        if row is None or (as_dt(row["recorded_at"]) or since) >= since:
            high = middle
        else:
            low = int(row["id"]) + 1
    return None if low > int(last) else low


async def moves(tx: Tx, window: Window) -> dict[str, list[int]]:
    """Applied connection moves per bucket, by the state moved to."""
    first = await first_history_id(tx, window.start)
    if first is None:
        return _series([], window, TARGET_STATES)
    start = window.start
    rows = [(int(r["bucket"]), str(r["label"]), int(r["n"])) for r in await tx.fetch(
        _MOVES, start, int(start.timestamp()), window.seconds, first)]
    return _series(rows, window, TARGET_STATES)


async def backlog(tx: Tx, now: datetime) -> list[tuple[str, int]]:
    """Pending jobs by how long they have been due."""
    counts = [("not yet due", int(await tx.fetchval(_PENDING_AFTER, now)))]
    previous = now
    for label, seconds in BACKLOG_AGES[1:-1]:
        assert seconds is not None
        edge = now - timedelta(seconds=seconds)
        counts.append((label, int(await tx.fetchval(_PENDING_BETWEEN, edge, previous))))
        previous = edge
    counts.append((BACKLOG_AGES[-1][0], int(await tx.fetchval(_PENDING_BEFORE, previous))))
    return counts


def refusals(recent: MinuteCounts, window: Window) -> dict[str, list[int]]:
    """Refusals per bucket, by reason, as this process counted them."""
    start = window.start.timestamp()
    rows = [(int((minute * 60 - start) // window.seconds), reason, n)
            for minute, counts in recent.per_minute(
                since=start, until=window.now.timestamp()).items()
            for reason, n in counts.items()]
    return _series(rows, window, ())
