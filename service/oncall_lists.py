"""The on-call page's lists, a page at a time, newest first, each with its company's name.

Keyset pagination: a page ends with a cursor naming its last row, and the next page starts
after it along the same index (``ix_connections_status_deleted_updated_at``, the history's
primary key, ``ix_deliveries_outcome_received_at``, ``ix_outbox_status_next_attempt_at``), so
page 1,000 costs what page 1 does. Names come from a join on the companies' primary key.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from service import outbox, queries
from service.db import Row, Sql, Tx, as_dt, sql
from service.queries import BadQuery

PAGE = 50
EXCERPT_BYTES = 400
STATES = ("PendingAuth", "Unlinked", "Deauthorized", "Linked")
OUTCOMES = ("failed", "unparseable", "ignored", "processed")
JOB_STATUSES = ("dead", "pending", "running")


@dataclass(frozen=True, slots=True)
class Page:
    rows: list[dict[str, Any]]
    next_cursor: str | None


def encode(values: list[Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(values)).decode().rstrip("=")


def decode(cursor: str | None, size: int) -> list[Any] | None:
    if not cursor:
        return None
    try:
        values = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        values = None
    if not isinstance(values, list) or len(values) != size:
        raise BadQuery("before: not a cursor this page gave")
    return values


def _time(value: Any) -> Any:
    moment = as_dt(value) if isinstance(value, str) else None
    if moment is None:
        raise BadQuery("before: not a cursor this page gave")
    return moment


@dataclass(frozen=True, slots=True)
class _Listing:
    """A list's two statements: the first page, and the pages after a cursor. ``where`` may
    use ``$1`` (the filter value) when ``filtered``; ``after`` uses ``{c1}`` (and ``{c2}``)."""

    first: Sql
    later: Sql
    filtered: bool

    @classmethod
    def build(cls, select: str, where: str | None, after: str, order: str) -> _Listing:
        n = 1 if where else 0
        keys = {"c1": f"${n + 1}", "c2": f"${n + 2}"}
        cursor_params = 2 if "{c2}" in after else 1
        clauses = [where] if where else []
        first = sql(f"{select} {_where(clauses)} ORDER BY {order} LIMIT ${n + 1}")
        later = sql(f"{select} {_where([*clauses, after.format(**keys)])} ORDER BY {order} "
                    f"LIMIT ${n + cursor_params + 1}")
        return cls(first, later, bool(where))


def _where(clauses: list[str]) -> str:
    return f"WHERE {' AND '.join(clauses)}" if clauses else ""


_CONNECTIONS = _Listing.build(f"""
SELECT {queries.CONNECTION_COLUMNS_OF_C}, co.name AS company_name
FROM connections c LEFT JOIN companies co ON co.id = c.company_id""",
    "c.status = $1 AND c.deleted = FALSE",
    "c.updated_at <= {c1} AND (c.updated_at < {c1} OR c.id < {c2})",
    "c.updated_at DESC, c.id DESC")
_HISTORY = _Listing.build(f"""
SELECT {queries.HISTORY_COLUMNS_OF_H}, co.name AS company_name
FROM connection_history h LEFT JOIN companies co ON co.id = h.company_id""",
    None, "h.id < {c1}", "h.id DESC")
_DELIVERIES = _Listing.build(f"""
SELECT d.message_id, d.msg_timestamp, d.event_id, d.event_type, d.company_id, d.connection_id,
    substr(d.body, 1, {EXCERPT_BYTES}) AS body, d.body_sha256, d.headers, d.secret_id,
    d.received_at, d.processed_at, d.outcome, d.error, d.attempts, 0 AS conflicts,
    co.name AS company_name
FROM deliveries d LEFT JOIN companies co ON co.id = d.company_id""",
    "d.outcome = $1",
    "d.received_at <= {c1} AND (d.received_at < {c1} OR d.message_id < {c2})",
    "d.received_at DESC, d.message_id DESC")
_JOBS = _Listing.build("""
SELECT j.id, j.kind, j.dedupe_key, j.company_id, j.connection_id, j.payload, j.status,
    j.attempts, j.max_attempts, j.next_attempt_at, j.lease_until, j.locked_by, j.last_error,
    j.created_at, j.updated_at, co.name AS company_name
FROM outbox j LEFT JOIN companies co ON co.id = j.company_id""",
    "j.status = $1",
    "j.next_attempt_at <= {c1} AND (j.next_attempt_at < {c1} OR j.id < {c2})",
    "j.next_attempt_at DESC, j.id DESC")
_CONFLICTS = _Listing.build(f"""
SELECT c.id, c.message_id, c.body_sha256, substr(c.body, 1, {EXCERPT_BYTES}) AS body,
    c.received_at, d.body_sha256 AS stored_sha256, d.outcome AS stored_outcome,
    d.event_type AS stored_event_type, d.company_id, co.name AS company_name
FROM delivery_conflicts c LEFT JOIN deliveries d ON d.message_id = c.message_id
LEFT JOIN companies co ON co.id = d.company_id""",
    None, "c.id < {c1}", "c.id DESC")


def excerpt(body: Any) -> str | None:
    raw = None if body is None else bytes(body)
    return None if raw is None else raw.decode("utf-8", "replace") + (
        " …" if len(raw) >= EXCERPT_BYTES else "")


async def _page(tx: Tx, listing: _Listing, value: Any, after: list[Any] | None,
                limit: int, shape: Callable[[Row], dict[str, Any]],
                last: Callable[[dict[str, Any]], list[Any]]) -> Page:
    args = ([value] if listing.filtered else []) + list(after or []) + [limit + 1]
    rows = await tx.fetch(listing.later if after else listing.first, *args)
    page = [shape(r) for r in rows[:limit]]
    more = len(rows) > limit
    return Page(page, encode(last(page[-1])) if more and page else None)


def _named(row: Row, shaped: dict[str, Any]) -> dict[str, Any]:
    return shaped | {"companyName": row["company_name"]}


async def connections(tx: Tx, state: str, *, before: str | None = None,
                      limit: int = PAGE) -> Page:
    """Connections in ``state`` (not deleted), most recently changed first."""
    if state not in STATES:
        raise BadQuery(f"state: one of {', '.join(STATES)}")
    after = decode(before, 2)
    if after is not None:
        after = [_time(after[0]), str(after[1])]
    return await _page(tx, _CONNECTIONS, state, after, limit,
                       lambda r: _named(r, queries.connection_json(r)),
                       lambda c: [c["updatedAt"], c["id"]])


async def transitions(tx: Tx, *, before: str | None = None, limit: int = PAGE) -> Page:
    """Every connection's moves, newest first."""
    after = decode(before, 1)
    if after is not None and not isinstance(after[0], int):
        raise BadQuery("before: not a cursor this page gave")
    return await _page(tx, _HISTORY, None, after, limit,
                       lambda r: _named(r, queries.history_json(r)), lambda h: [h["id"]])


async def deliveries(tx: Tx, outcome: str, *, before: str | None = None,
                     limit: int = PAGE) -> Page:
    """Deliveries of one outcome, newest first, with the start of their body."""
    if outcome not in OUTCOMES:
        raise BadQuery(f"outcome: one of {', '.join(OUTCOMES)}")
    after = decode(before, 2)
    if after is not None:
        after = [_time(after[0]), str(after[1])]
    return await _page(
        tx, _DELIVERIES, outcome, after, limit,
        lambda r: _named(r, queries.delivery_json(r, include_body=False)
                         | {"excerpt": excerpt(r["body"])}),
        lambda d: [d["receivedAt"], d["messageId"]])


async def jobs(tx: Tx, status: str, *, before: str | None = None, limit: int = PAGE) -> Page:
    """Follow-up jobs of one status, latest next attempt first."""
    if status not in JOB_STATUSES:
        raise BadQuery(f"status: one of {', '.join(JOB_STATUSES)}")
    after = decode(before, 2)
    if after is not None:
        after = [_time(after[0]), str(after[1])]
    return await _page(tx, _JOBS, status, after, limit,
                       lambda r: _named(r, outbox.job_json(r)),
                       lambda j: [j["nextAttemptAt"], j["id"]])


async def conflicts(tx: Tx, *, before: str | None = None, limit: int = PAGE) -> Page:
    """Message ids seen again with another body, newest first."""
    after = decode(before, 1)
    if after is not None and not isinstance(after[0], int):
        raise BadQuery("before: not a cursor this page gave")
    return await _page(tx, _CONFLICTS, None, after, limit,
                       lambda r: dict(r) | {"excerpt": excerpt(r["body"]),
                                            "companyName": r["company_name"]},
                       lambda c: [c["id"]])
