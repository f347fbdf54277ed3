"""Repository functions for the write paths: deliveries, companies, connections, history, outbox.

Every statement is built once at import (:func:`service.db.sql`) and each function takes the
transaction as ``tx``. Nothing here decides anything: the handlers decide, this writes.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from schemas.commands import Command, ConnectionSnapshot, Move
from schemas.events import (
    CompanyInfo,
    ConnectionEvent,
    ConnectionInfo,
    DataTypeRead,
    WriteCompleted,
)
from schemas.state import State
from service.db import Row, Tx, as_dt, sql, to_json

DEFAULT_MAX_ATTEMPTS = 8


@dataclass(frozen=True, slots=True)
class NewDelivery:
    """A verified delivery, ready to store."""

    message_id: str
    timestamp: int
    body: bytes
    sha256: str
    secret_id: str
    headers: dict[str, str]
    received_at: datetime


@dataclass(frozen=True, slots=True)
class DeliveryFacts:
    """What parsing found out about a delivery, stored on its row."""

    event_id: str | None
    event_type: str | None
    company_id: str | None
    connection_id: str | None
    outcome: str
    error: str | None


_INSERT_DELIVERY = sql("""
INSERT INTO deliveries (message_id, msg_timestamp, event_id, event_type, company_id,
    connection_id, body, body_sha256, headers, secret_id, received_at, processed_at, outcome,
    error, attempts)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11, $12, $13, 1)
ON CONFLICT (message_id) DO NOTHING
RETURNING message_id""")

_LOCK_DELIVERY = sql(
    "SELECT body_sha256, outcome FROM deliveries WHERE message_id = $1{lock}")

_REPROCESS_DELIVERY = sql("""
UPDATE deliveries SET event_id = $2, event_type = $3, company_id = $4, connection_id = $5,
    outcome = $6, error = $7, processed_at = $8, attempts = attempts + 1
WHERE message_id = $1""")

# A failure is recorded after the rollback, in a transaction of its own. It never overwrites a
# row that a concurrent copy of the same message has since processed.
_RECORD_FAILURE = sql("""
INSERT INTO deliveries (message_id, msg_timestamp, event_id, event_type, company_id,
    connection_id, body, body_sha256, headers, secret_id, received_at, processed_at, outcome,
    error, attempts)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11, 'failed', $12, 1)
ON CONFLICT (message_id) DO UPDATE SET error = excluded.error,
    processed_at = excluded.processed_at, attempts = deliveries.attempts + 1
WHERE deliveries.outcome = 'failed' AND deliveries.body_sha256 = excluded.body_sha256""")

_INSERT_CONFLICT = sql("""
INSERT INTO delivery_conflicts (message_id, body_sha256, body, secret_id, received_at)
VALUES ($1, $2, $3, $4, $5)""")


async def insert_delivery(tx: Tx, *, delivery: NewDelivery, facts: DeliveryFacts) -> bool:
    """Store a delivery; False if its message id is already stored (a redelivery)."""
    row = await tx.fetchrow(
        _INSERT_DELIVERY, delivery.message_id, delivery.timestamp, facts.event_id,
        facts.event_type, facts.company_id, facts.connection_id, delivery.body, delivery.sha256,
        to_json(delivery.headers), delivery.secret_id, delivery.received_at, facts.outcome,
        facts.error)
    return row is not None


async def lock_delivery(tx: Tx, *, message_id: str) -> Row | None:
    """The stored body hash and outcome of a message, locked until the transaction ends."""
    return await tx.fetchrow(_LOCK_DELIVERY, message_id)


async def reprocess_delivery(tx: Tx, *, message_id: str, facts: DeliveryFacts,
                             now: datetime) -> None:
    await tx.execute(_REPROCESS_DELIVERY, message_id, facts.event_id, facts.event_type,
                     facts.company_id, facts.connection_id, facts.outcome, facts.error, now)


async def record_failure(tx: Tx, *, delivery: NewDelivery, facts: DeliveryFacts,
                         error: str) -> None:
    await tx.execute(
        _RECORD_FAILURE, delivery.message_id, delivery.timestamp, facts.event_id,
        facts.event_type, facts.company_id, facts.connection_id, delivery.body, delivery.sha256,
        to_json(delivery.headers), delivery.secret_id, delivery.received_at, error)


async def record_conflict(tx: Tx, *, delivery: NewDelivery) -> None:
    await tx.execute(_INSERT_CONFLICT, delivery.message_id, delivery.sha256, delivery.body,
                     delivery.secret_id, delivery.received_at)


# --- companies -------------------------------------------------------------------------------

# A company is refreshed only when an event says something new of it, and never by an event
# older than the one that last did: most events name a company we know and change nothing.
_UPSERT_COMPANY = sql("""
INSERT INTO companies (id, name, description, tags, redirect, products, created, deleted,
    bill_pay_ready, last_event_at, created_at, updated_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, FALSE, FALSE, $8, $9, $9)
ON CONFLICT (id) DO UPDATE SET
    name = COALESCE(excluded.name, companies.name),
    description = COALESCE(excluded.description, companies.description),
    tags = COALESCE(excluded.tags, companies.tags),
    redirect = COALESCE(excluded.redirect, companies.redirect),
    products = COALESCE(excluded.products, companies.products),
    created = COALESCE(excluded.created, companies.created),
    last_event_at = COALESCE(excluded.last_event_at, companies.last_event_at),
    updated_at = excluded.updated_at
WHERE (companies.last_event_at IS NULL OR excluded.last_event_at IS NULL
        OR excluded.last_event_at >= companies.last_event_at)
    AND ((excluded.name IS NOT NULL AND companies.name IS DISTINCT FROM excluded.name)
        OR (excluded.description IS NOT NULL
            AND companies.description IS DISTINCT FROM excluded.description)
        OR (excluded.tags IS NOT NULL
            AND CAST(companies.tags AS TEXT) IS DISTINCT FROM CAST(excluded.tags AS TEXT))
        OR (excluded.redirect IS NOT NULL
            AND companies.redirect IS DISTINCT FROM excluded.redirect)
        OR (excluded.products IS NOT NULL
            AND CAST(companies.products AS TEXT) IS DISTINCT FROM CAST(excluded.products AS TEXT))
        OR (excluded.created IS NOT NULL AND companies.created IS NULL))""")

_INSERT_COMPANY_IF_MISSING = sql("""
INSERT INTO companies (id, deleted, bill_pay_ready, created_at, updated_at)
VALUES ($1, FALSE, FALSE, $2, $2) ON CONFLICT (id) DO NOTHING""")

_DELETE_COMPANY = sql("""
UPDATE companies SET deleted = TRUE, deleted_at = COALESCE(deleted_at, $2), bill_pay_ready = FALSE,
    updated_at = $2
WHERE id = $1""")


async def upsert_company(tx: Tx, *, company: CompanyInfo, event_time: datetime | None,
                         now: datetime) -> None:
    """Create the company or refresh what the event says of it (an older event changes nothing)."""
    if company.name is None and company.tags is None and company.redirect is None \
            and company.products is None:
        await tx.execute(_INSERT_COMPANY_IF_MISSING, company.id, now)
        return
    await tx.execute(
        _UPSERT_COMPANY, company.id, company.name, company.description, to_json(company.tags),
        company.redirect, to_json(company.products), company.created, event_time, now)


async def mark_company_deleted(tx: Tx, *, company_id: str, now: datetime) -> None:
    await tx.execute(_DELETE_COMPANY, company_id, now)


# --- connections -----------------------------------------------------------------------------

_LOCK_CONNECTION = sql("""
SELECT id, company_id, status, deleted, last_event_at FROM connections WHERE id = $1{lock}""")

_INSERT_PLACEHOLDER = sql("""
INSERT INTO connections (id, company_id, deleted, version, created_at, updated_at)
VALUES ($1, $2, FALSE, 0, $3, $3) ON CONFLICT (id) DO NOTHING""")

_COMPANY_CONNECTIONS_FOR_UPDATE = sql("""
SELECT id, company_id, status, deleted, last_event_at FROM connections
WHERE company_id = $1 AND deleted = FALSE ORDER BY id{lock}""")

# One UPDATE writes a move and what the event says of the connection (NULL keeps a value).
_APPLY = """UPDATE connections SET
    status = COALESCE($2, status), deleted = $3,
    deleted_at = CASE WHEN $3 THEN COALESCE(deleted_at, $4) ELSE NULL END,
    last_event_at = COALESCE($5, last_event_at), last_event_id = COALESCE($6, last_event_id),
    version = version + 1, updated_at = $4,
    company_id = COALESCE($7, company_id), platform_key = COALESCE($8, platform_key),
    platform_name = COALESCE($9, platform_name), source_type = COALESCE($10, source_type),
    integration_id = COALESCE($11, integration_id), source_id = COALESCE($12, source_id),
    link_url = COALESCE($13, link_url), created = COALESCE($14, created),
    last_sync = COALESCE($15, last_sync), errors = COALESCE($16, errors)
WHERE id = $1"""
_APPLY_MOVE = sql(_APPLY)

_APPLY_DETAILS = sql("""
UPDATE connections SET
    company_id = $2, platform_key = COALESCE($3, platform_key),
    platform_name = COALESCE($4, platform_name), source_type = COALESCE($5, source_type),
    integration_id = COALESCE($6, integration_id), source_id = COALESCE($7, source_id),
    link_url = COALESCE($8, link_url), created = COALESCE($9, created),
    last_sync = COALESCE($10, last_sync), errors = COALESCE($11, errors)
WHERE id = $1""")


def _snapshot(row: Row) -> ConnectionSnapshot:
    return ConnectionSnapshot(
        id=row["id"], company_id=row["company_id"], exists=row["status"] is not None,
        state=State.of(row["status"], deleted=bool(row["deleted"])),
        last_event_at=as_dt(row["last_event_at"]))


async def lock_connection(tx: Tx, *, connection_id: str, company_id: str,
                          now: datetime) -> ConnectionSnapshot:
    """The connection, locked for this transaction; created (state unknown) if never seen."""
    row = await tx.fetchrow(_LOCK_CONNECTION, connection_id)
    if row is None:
        await tx.execute(_INSERT_PLACEHOLDER, connection_id, company_id, now)
        row = await tx.fetchrow(_LOCK_CONNECTION, connection_id)
        assert row is not None
    return _snapshot(row)


_CONNECTION_STATE = sql("SELECT status, deleted FROM connections WHERE id = $1")


async def connection_state(tx: Tx, *, connection_id: str) -> State | None:
    """A connection's state, read without a lock (None: unknown)."""
    row = await tx.fetchrow(_CONNECTION_STATE, connection_id)
    return None if row is None else State.of(row["status"], deleted=bool(row["deleted"]))


async def lock_company_connections(tx: Tx, *, company_id: str) -> list[ConnectionSnapshot]:
    return [_snapshot(r) for r in await tx.fetch(_COMPANY_CONNECTIONS_FOR_UPDATE, company_id)]


async def apply_details(tx: Tx, *, company_id: str, info: ConnectionInfo,
                        errors: list[dict[str, Any]] | None) -> None:
    """Refresh what Codat says of a connection (platform, link, errors) without a move."""
    await tx.execute(
        _APPLY_DETAILS, info.id, company_id, info.platform_key, info.platform_name,
        info.source_type, info.integration_id, info.source_id, info.link_url, info.created,
        info.last_sync, to_json(errors))


# --- the delivery path, set-based on PostgreSQL ----------------------------------------------
# Each statement is a round trip, and round trips are what bound a receiver on PostgreSQL. There,
# data-modifying CTEs over unnest()ed arrays do, for a whole batch of connection events, what
# SQLite (in-process, no round trips) does row by row: the same rows, the same conflict rules,
# two statements whatever the batch's size. A batch never names a message, a connection or a
# company twice (the caller splits it, see service.ingest), so every row a statement writes is
# written once, and each event's effects are those it would have alone.
# The CTEs of one statement run in no defined order and see the snapshot taken when the
# statement began, not each other's writes: that is why each row is written by one CTE only.

_PG_OPEN_CONNECTION_EVENTS = sql("""
WITH d AS (
    SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[],
        $6::text[], $7::bytea[], $8::text[], $9::text[], $10::text[], $11::timestamptz[],
        $12::text[], $13::text[], $14::text[], $15::text[], $16::text[], $17::timestamptz[])
        WITH ORDINALITY AS d(message_id, msg_timestamp, event_id, event_type, company_id,
            connection_id, body, body_sha256, headers, secret_id, received_at, outcome, error,
            name, description, tags, event_time, ord)
), fresh AS (
    INSERT INTO deliveries (message_id, msg_timestamp, event_id, event_type, company_id,
        connection_id, body, body_sha256, headers, secret_id, received_at, processed_at,
        outcome, error, attempts)
    SELECT message_id, msg_timestamp, event_id, event_type, company_id, connection_id, body,
        body_sha256, headers::json, secret_id, received_at, received_at, outcome, error, 1
    FROM d ORDER BY ord
    ON CONFLICT (message_id) DO NOTHING
    RETURNING message_id
), opened AS (
    SELECT d.* FROM d WHERE d.message_id IN (SELECT message_id FROM fresh)
), company AS (
    -- DO NOTHING takes no lock on an existing company; a refresh comes with the move.
    INSERT INTO companies (id, name, description, tags, deleted, bill_pay_ready, last_event_at,
        created_at, updated_at)
    SELECT company_id, name, description, tags::json, FALSE, FALSE, event_time, received_at,
        received_at
    FROM opened ORDER BY company_id
    ON CONFLICT (id) DO NOTHING
), locked AS (
    SELECT id, company_id, status, deleted, last_event_at FROM connections
    WHERE id IN (SELECT connection_id FROM opened)
    ORDER BY id FOR UPDATE
), placeholder AS (
    INSERT INTO connections (id, company_id, deleted, version, created_at, updated_at)
    SELECT connection_id, company_id, FALSE, 0, received_at, received_at FROM opened
    WHERE connection_id NOT IN (SELECT id FROM locked)
    ORDER BY connection_id
    ON CONFLICT (id) DO NOTHING
    RETURNING id
)
SELECT d.message_id IN (SELECT message_id FROM fresh) AS fresh,
    d.connection_id IN (SELECT id FROM placeholder) AS created,
    l.id, l.company_id, l.status, l.deleted, l.last_event_at
FROM d LEFT JOIN locked l ON l.id = d.connection_id
ORDER BY d.ord""")

# A company stops being ready for Bill Pay when it loses its last Linked connection. This
# statement's snapshot still shows the moving connection Linked: look at the others.
_UNREADY = """(r.unlinks AND co.bill_pay_ready AND NOT EXISTS (
    SELECT 1 FROM connections o WHERE o.company_id = r.company_id AND o.id <> r.id
        AND o.status || '' = 'Linked' AND o.deleted = FALSE))"""
# What the event says of its company, unless an event newer than it already said it.
_REFRESH = """((co.last_event_at IS NULL OR r.event_time IS NULL
        OR r.event_time >= co.last_event_at)
    AND ((r.name IS NOT NULL AND co.name IS DISTINCT FROM r.name)
        OR (r.description IS NOT NULL AND co.description IS DISTINCT FROM r.description)
        OR (r.tags IS NOT NULL AND CAST(co.tags AS TEXT) IS DISTINCT FROM r.tags)))"""

# Fragments both set-based statements below share; ``m`` is the unnest()ed moves, ``r`` the moves
# being written.
_HISTORY_INSERT = """
    INSERT INTO connection_history (connection_id, company_id, from_state, to_state, result,
        source, event_id, event_type, delivery_id, event_time, recorded_at, reason)
    SELECT id, company_id, from_state, to_state, result, source, event_id, event_type,
        delivery_id, event_time, $1, reason FROM {source}
    ON CONFLICT (connection_id, event_id, event_type) DO NOTHING
    RETURNING connection_id"""
_MOVE_SET = """
        status = COALESCE(r.status, c.status), deleted = r.deleted,
        deleted_at = CASE WHEN r.deleted THEN COALESCE(c.deleted_at, $1) ELSE NULL END,
        last_event_at = COALESCE(r.event_time, c.last_event_at),
        last_event_id = COALESCE(r.event_id, c.last_event_id),
        version = c.version + 1, updated_at = $1,
        company_id = COALESCE(r.company_id, c.company_id),
        platform_key = COALESCE(r.platform_key, c.platform_key),
        platform_name = COALESCE(r.platform_name, c.platform_name),
        source_type = COALESCE(r.source_type, c.source_type),
        integration_id = COALESCE(r.integration_id, c.integration_id),
        source_id = COALESCE(r.source_id, c.source_id),
        link_url = COALESCE(r.link_url, c.link_url), created = COALESCE(r.created, c.created),
        last_sync = COALESCE(r.last_sync, c.last_sync),
        errors = COALESCE(r.errors::json, c.errors)"""
# One UPDATE for both reasons to touch a company: a statement writes a row once.
_COMPANY_UPDATE = f"""
    UPDATE companies co SET
        bill_pay_ready = co.bill_pay_ready AND NOT {_UNREADY},
        bill_pay_checked_at = CASE WHEN {_UNREADY} THEN $1 ELSE co.bill_pay_checked_at END,
        name = CASE WHEN {_REFRESH} THEN COALESCE(r.name, co.name) ELSE co.name END,
        description = CASE WHEN {_REFRESH} THEN COALESCE(r.description, co.description)
            ELSE co.description END,
        tags = CASE WHEN {_REFRESH} THEN COALESCE(r.tags::json, co.tags) ELSE co.tags END,
        last_event_at = CASE WHEN {_REFRESH} THEN COALESCE(r.event_time, co.last_event_at)
            ELSE co.last_event_at END,
        updated_at = $1
    FROM {{source}} r WHERE co.id = r.company_id AND ({_UNREADY} OR {_REFRESH})"""

def _typed(spec: str) -> tuple[tuple[str, str], ...]:
    """``"name type, name type"`` -> ((name, type), ...): the columns of a set of rows."""
    return tuple((name, kind) for name, kind in (column.split() for column in spec.split(",")))


_JOB_COLUMNS = _typed("""owner text, id text, kind text, dedupe_key text, company_id text,
    connection_id text, payload text, max_attempts int""")


def _jobs_insert(source: str) -> str:
    """Enqueue the follow-ups of the moves the ``history`` CTE recorded, from ``source``: rows
    ``j`` as :func:`_job_rows` makes them (see :func:`_unnested` and :func:`_from_json`)."""
    return f"""INSERT INTO outbox (id, kind, dedupe_key, company_id, connection_id, payload, status,
        attempts, max_attempts, next_attempt_at, created_at, updated_at)
    SELECT j.id, j.kind, j.dedupe_key, j.company_id, j.connection_id, j.payload::json,
        'pending', 0, j.max_attempts, $1, $1, $1
    FROM {source}
    WHERE j.owner IN (SELECT connection_id FROM history)
    ON CONFLICT (dedupe_key) DO NOTHING"""


def _unnested(alias: str, columns: Sequence[tuple[str, str]], first: int) -> str:
    """Rows ``alias`` from one array parameter per column, from ``$first`` on."""
    arrays = ", ".join(f"${first + i}::{t}[]" for i, (_, t) in enumerate(columns))
    return f"unnest({arrays}) AS {alias}({', '.join(c for c, _ in columns)})"


def _from_json(alias: str, columns: Sequence[tuple[str, str]], parameter: int) -> str:
    """Rows ``alias`` from one parameter, a JSON array of objects (see :func:`_json_rows`)."""
    return (f"json_to_recordset(${parameter}::json) AS {alias}("
            f"{', '.join(f'{c} {t}' for c, t in columns)})")


def _json_rows(columns: Sequence[tuple[str, str]], rows: Sequence[tuple[Any, ...]]) -> str:
    """Rows for :func:`_from_json`: one JSON document, where asyncpg would encode an array per
    column value by value (for a batch's ~50 columns, most of the client's CPU per statement)."""
    names = [c for c, _ in columns]
    return orjson.dumps([dict(zip(names, row, strict=True)) for row in rows]).decode()


def _job_rows(planned: PlannedMove, max_attempts: int) -> list[tuple[Any, ...]]:
    return [(planned.snapshot.id, uuid.uuid4().hex, c.kind.value, c.dedupe_key, c.company_id,
             c.connection_id, to_json(c.payload), max_attempts) for c in planned.move.commands]

_PG_RECORD_MOVES = sql(f"""
WITH m AS (
    SELECT * FROM unnest($2::text[], $3::text[], $4::boolean[], $5::timestamptz[], $6::text[],
        $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[],
        $14::timestamptz[], $15::timestamptz[], $16::text[], $17::text[], $18::text[],
        $19::text[], $20::text[], $21::text[], $22::text[], $23::text[], $24::boolean[],
        $25::text[], $26::text[], $27::text[], $28::boolean[])
        AS m(id, status, deleted, event_time, event_id, company_id, platform_key,
            platform_name, source_type, integration_id, source_id, link_url, created, last_sync,
            errors, from_state, to_state, result, source, event_type, delivery_id, reason,
            applied, name, description, tags, unlinks)
), history AS (
    {_HISTORY_INSERT.format(source='m')}
), recorded AS (
    SELECT m.* FROM m WHERE m.id IN (SELECT connection_id FROM history)
), moved AS (
    UPDATE connections c SET {_MOVE_SET}
    FROM recorded r WHERE c.id = r.id AND r.applied
), company AS (
    {_COMPANY_UPDATE.format(source='recorded')}
), jobs AS (
    {_jobs_insert(_unnested('j', _JOB_COLUMNS, 29))}
)
SELECT connection_id FROM history""")


@dataclass(frozen=True, slots=True)
class OpenEvent:
    """A connection event's delivery, to store and open together with others."""

    delivery: NewDelivery
    facts: DeliveryFacts
    event: ConnectionEvent


async def open_connection_event(tx: Tx, *, delivery: NewDelivery, facts: DeliveryFacts,
                                event: ConnectionEvent, now: datetime,
                                ) -> ConnectionSnapshot | None:
    """Store a connection event's delivery and, if new, make sure its company exists and lock
    its connection (created, state unknown, if never seen). None: the message id is stored
    already."""
    if tx.dialect == "postgresql":
        return (await open_connection_events(tx, [OpenEvent(delivery, facts, event)],
                                             now=now))[0]
    if not await insert_delivery(tx, delivery=delivery, facts=facts):
        return None
    company = event.company
    await upsert_company(tx, company=company, event_time=event.meta.generated_at, now=now)
    return await lock_connection(tx, connection_id=event.connection.id, company_id=company.id,
                                 now=now)


def _columns(rows: Sequence[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Rows -> one list per column (the arrays a set-based statement unnests)."""
    return [list(column) for column in zip(*rows, strict=True)] if rows else [[]] * width


async def open_connection_events(tx: Tx, items: Sequence[OpenEvent], *,
                                 now: datetime) -> list[ConnectionSnapshot | None]:
    """:func:`open_connection_event` for several events at once, on PostgreSQL: one statement.
    No two items may share a message id, a connection or a company."""
    rows = [(i.delivery.message_id, i.delivery.timestamp, i.facts.event_id, i.facts.event_type,
             i.event.company.id, i.event.connection.id, i.delivery.body, i.delivery.sha256,
             to_json(i.delivery.headers), i.delivery.secret_id, i.delivery.received_at,
             i.facts.outcome, i.facts.error, i.event.company.name, i.event.company.description,
             to_json(i.event.company.tags), i.event.meta.generated_at) for i in items]
    found = await tx.fetch(_PG_OPEN_CONNECTION_EVENTS, *_columns(rows, 17))
    opened: list[ConnectionSnapshot | None] = []
    for item, row in zip(items, found, strict=True):
        connection_id, company_id = item.event.connection.id, item.event.company.id
        if not row["fresh"]:
            opened.append(None)
        elif row["id"] is not None:
            opened.append(_snapshot(row))
        elif row["created"]:
            opened.append(ConnectionSnapshot(connection_id, company_id, exists=False,
                                             state=None, last_event_at=None))
        else:  # another transaction created the connection after this statement began
            opened.append(await lock_connection(tx, connection_id=connection_id,
                                                company_id=company_id, now=now))
    return opened


@dataclass(frozen=True, slots=True)
class PlannedMove:
    """A decided move with everything recording it writes: the history row, the connection
    (with what ``info`` says of it), the company (with what ``company`` says of it), jobs."""

    snapshot: ConnectionSnapshot
    move: Move
    cause: Cause
    info: ConnectionInfo | None = None
    errors: list[dict[str, Any]] | None = None
    company: CompanyInfo | None = None

    @property
    def unlinks(self) -> bool:
        """A company is ready for Bill Pay only while it has a Linked connection."""
        move = self.move
        return move.applied and move.from_state is State.LINKED \
            and move.to_state is not State.LINKED

    @property
    def reason(self) -> str | None:
        return "; ".join(r for r in (self.cause.reason, self.move.reason) if r) or None

    def details(self) -> tuple[Any, ...]:
        info = self.info
        return (None,) * 9 if info is None else (
            info.platform_key, info.platform_name, info.source_type, info.integration_id,
            info.source_id, info.link_url, info.created, info.last_sync, to_json(self.errors))

    def history(self) -> tuple[Any, ...]:
        move = self.move
        return (move.from_state.value if move.from_state else None, move.to_state.value,
                move.result.value, move.source.value, self.cause.event_type,
                self.cause.delivery_id, self.reason)


async def record_move(tx: Tx, *, snapshot: ConnectionSnapshot, move: Move, cause: Cause,
                      info: ConnectionInfo | None = None,
                      errors: list[dict[str, Any]] | None = None,
                      company: CompanyInfo | None = None, now: datetime) -> bool:
    """Record a move's history row; if applied, write it with what ``info`` says of the
    connection; refresh what ``company`` says of its company; enqueue its follow-ups.

    False, and nothing written, when this event was already recorded for the connection: that
    unique history row is what makes a replayed event a no-op.
    """
    planned = PlannedMove(snapshot, move, cause, info, errors, company)
    if tx.dialect == "postgresql":
        return (await record_moves(tx, [planned], now=now))[0]
    from_state, to_state, result, source, event_type, delivery_id, reason = planned.history()
    recorded = await tx.fetchrow(
        _INSERT_HISTORY, snapshot.id, snapshot.company_id, from_state, to_state, result, source,
        cause.event_id, event_type, delivery_id, cause.event_time, now, reason) is not None
    if recorded and move.applied:
        status = None if move.to_state is State.DELETED else move.to_state.value
        await tx.execute(_APPLY_MOVE, snapshot.id, status, move.to_state is State.DELETED, now,
                         cause.event_time, cause.event_id, snapshot.company_id,
                         *planned.details())
    if recorded and planned.unlinks:
        await tx.execute(_NOT_READY_WITHOUT_LINK, snapshot.company_id, now)
    if recorded and move.commands:
        await enqueue(tx, commands=move.commands, now=now)
    return recorded


async def record_moves(tx: Tx, planned: Sequence[PlannedMove], *, now: datetime,
                       max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> list[bool]:
    """:func:`record_move` for several moves at once, on PostgreSQL: one statement. No two
    moves may share a connection or a company."""
    rows: list[tuple[Any, ...]] = []
    jobs: list[tuple[Any, ...]] = []
    for p in planned:
        move, cause, snapshot = p.move, p.cause, p.snapshot
        deleted = move.to_state is State.DELETED
        company = p.company
        rows.append((
            snapshot.id, None if deleted else move.to_state.value, deleted, cause.event_time,
            cause.event_id, snapshot.company_id, *p.details(), *p.history(), move.applied,
            *((None, None, None) if company is None
              else (company.name, company.description, to_json(company.tags))),
            p.unlinks))
        jobs.extend(_job_rows(p, max_attempts))
    recorded = {r["connection_id"] for r in await tx.fetch(
        _PG_RECORD_MOVES, now, *_columns(rows, 27), *_columns(jobs, 8))}
    return [p.snapshot.id in recorded for p in planned]


# --- the delivery path in one statement, on PostgreSQL ---------------------------------------
# The fewest round trips of all: decide in Python from what this process last saw of each
# connection (a guess: see service.known), then write everything in ONE statement that commits on
# its own, with no read before it, no BEGIN and no COMMIT to wait for. The statement checks each
# guess against what its snapshot holds (the message is new, the connection has the version
# guessed, or still does not exist) and writes only the events that pass; for the others it
# returns what it found, to decide again from. A row changed by another transaction after the
# snapshot was taken makes it call codat_hooks_lost_race() (migration 0005), which raises: the
# whole statement is undone and the caller runs the batch again under row locks
# (open_connection_events, record_moves).

# What the one-statement commit takes of each event, in the order of commit_connection_events.
_COMMIT_COLUMNS = _typed("""
    ord bigint, message_id text, msg_timestamp bigint, d_event_id text, d_event_type text,
    d_company_id text, d_connection_id text, body text, body_sha256 text, headers text,
    secret_id text, received_at timestamptz, outcome text, error text,
    co_id text, name text, description text, tags text,
    id text, company_id text, expected bigint,
    status text, deleted boolean, applied boolean, event_time timestamptz, event_id text,
    platform_key text, platform_name text, source_type text, integration_id text,
    source_id text, link_url text, created timestamptz, last_sync timestamptz, errors text,
    from_state text, to_state text, result text, source text, event_type text,
    delivery_id text, reason text, unlinks boolean""")

_PG_COMMIT_CONNECTION_EVENTS = sql(f"""
WITH m AS (
    SELECT * FROM {_from_json('m', _COMMIT_COLUMNS, 2)}
), found AS (
    -- What the snapshot holds; an event is written only if it was decided from that.
    SELECT m.ord, s.body_sha256 AS stored_sha256, s.outcome AS stored_outcome, c.id AS c_id,
        c.company_id AS c_company_id, c.status AS c_status, c.deleted AS c_deleted,
        c.last_event_at AS c_last_event_at, c.version AS c_version,
        s.message_id IS NULL AND c.version IS NOT DISTINCT FROM m.expected AS ok
    FROM m LEFT JOIN deliveries s ON s.message_id = m.message_id
    LEFT JOIN connections c ON c.id = m.id
), fresh AS (
    INSERT INTO deliveries (message_id, msg_timestamp, event_id, event_type, company_id,
        connection_id, body, body_sha256, headers, secret_id, received_at, processed_at,
        outcome, error, attempts)
    SELECT message_id, msg_timestamp, d_event_id, d_event_type, d_company_id, d_connection_id,
        decode(body, 'base64'), body_sha256, headers::json, secret_id, received_at,
        received_at, outcome, error, 1
    FROM m WHERE m.ord IN (SELECT ord FROM found WHERE ok)
    ON CONFLICT (message_id) DO NOTHING
    RETURNING message_id
), go AS (
    -- Stored now: every other write follows from these (a copy stored meanwhile: none).
    SELECT m.* FROM m WHERE m.message_id IN (SELECT message_id FROM fresh)
), company AS (
    -- DO NOTHING takes no lock on an existing company; "refreshed" below updates it.
    INSERT INTO companies (id, name, description, tags, deleted, bill_pay_ready, last_event_at,
        created_at, updated_at)
    SELECT co_id, name, description, tags::json, FALSE, FALSE, event_time, $1, $1
    FROM go ORDER BY co_id
    ON CONFLICT (id) DO NOTHING
), history AS (
    {_HISTORY_INSERT.format(source='go')}
), r AS (
    SELECT go.* FROM go WHERE go.id IN (SELECT connection_id FROM history)
), born AS (
    -- A connection first heard of now: inserted as it ends up, unless another got there first.
    INSERT INTO connections (id, company_id, status, deleted, deleted_at, last_event_at,
        last_event_id, version, created_at, updated_at, platform_key, platform_name,
        source_type, integration_id, source_id, link_url, created, last_sync, errors)
    SELECT id, company_id, CASE WHEN moves THEN status END, moves AND deleted,
        CASE WHEN moves AND deleted THEN $1::timestamptz END,
        CASE WHEN moves THEN event_time END, CASE WHEN moves THEN event_id END,
        CASE WHEN moves THEN 1 ELSE 0 END, $1, $1,
        CASE WHEN moves THEN platform_key END, CASE WHEN moves THEN platform_name END,
        CASE WHEN moves THEN source_type END, CASE WHEN moves THEN integration_id END,
        CASE WHEN moves THEN source_id END, CASE WHEN moves THEN link_url END,
        CASE WHEN moves THEN created END, CASE WHEN moves THEN last_sync END,
        CASE WHEN moves THEN errors::json END
    FROM (SELECT go.*, go.applied AND h.connection_id IS NOT NULL AS moves
          FROM go LEFT JOIN history h ON h.connection_id = go.id
          WHERE go.expected IS NULL) b
    ORDER BY id
    ON CONFLICT (id) DO NOTHING
    RETURNING id, company_id, status, deleted, last_event_at, version
), moved AS (
    -- A waiting UPDATE re-reads the row: a version changed meanwhile drops it from the count.
    UPDATE connections c SET {_MOVE_SET}
    FROM r WHERE c.id = r.id AND r.applied AND c.version = r.expected
    RETURNING c.id, c.company_id, c.status, c.deleted, c.last_event_at, c.version
), held AS (
    -- Not moved now, but what the history row says was decided from this version: keep it.
    SELECT c.id, c.company_id, c.status, c.deleted, c.last_event_at, c.version
    FROM connections c JOIN go ON c.id = go.id
    WHERE go.expected IS NOT NULL AND c.version = go.expected
        AND NOT (go.applied AND go.id IN (SELECT connection_id FROM history))
    FOR UPDATE OF c
), refreshed AS (
    {_COMPANY_UPDATE.format(source='r')}
), jobs AS (
    {_jobs_insert(_from_json('j', _JOB_COLUMNS, 3))}
), written AS (
    SELECT * FROM born UNION ALL SELECT * FROM moved UNION ALL SELECT * FROM held
), held_up AS (
    -- Each event stored now wrote or locked its connection: born, moved or held.
    SELECT CASE WHEN (SELECT count(*) FROM written) = (SELECT count(*) FROM go) THEN TRUE
        ELSE codat_hooks_lost_race('a row this batch was decided from changed meanwhile')
        END AS ok
)
SELECT f.ok, m.message_id IN (SELECT message_id FROM fresh) AS fresh,
    m.id IN (SELECT connection_id FROM history) AS recorded, f.stored_sha256, f.stored_outcome,
    COALESCE(w.id, f.c_id) AS id,
    CASE WHEN w.id IS NULL THEN f.c_company_id ELSE w.company_id END AS company_id,
    CASE WHEN w.id IS NULL THEN f.c_status ELSE w.status END AS status,
    CASE WHEN w.id IS NULL THEN f.c_deleted ELSE w.deleted END AS deleted,
    CASE WHEN w.id IS NULL THEN f.c_last_event_at ELSE w.last_event_at END AS last_event_at,
    CASE WHEN w.id IS NULL THEN f.c_version ELSE w.version END AS version
FROM m JOIN found f ON f.ord = m.ord LEFT JOIN written w ON w.id = m.id
CROSS JOIN held_up
WHERE held_up.ok
ORDER BY m.ord""")


@dataclass(frozen=True, slots=True)
class Committed:
    """What the one-statement commit did with one connection event, and what it found."""

    ok: bool  # decided from what the database holds: a new message, the connection as guessed
    fresh: bool  # stored now, with its move unless ``recorded`` is False (an event seen before)
    recorded: bool
    stored_sha256: str | None  # the message was stored before: its body's hash and outcome
    stored_outcome: str | None
    snapshot: ConnectionSnapshot  # the connection as it now is (exists=False: no such row)
    version: int | None  # None: no such connection


async def commit_connection_events(tx: Tx,
                                   items: Sequence[tuple[OpenEvent, PlannedMove, int | None]],
                                   *, now: datetime,
                                   max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> list[Committed]:
    """Store new connection events with their decided moves in ONE statement that commits on
    its own (PostgreSQL, outside a transaction). ``items`` pair each event with the move decided
    from a guess of its connection and the version guessed (None: no such connection). Only
    the events whose guess holds and whose message is new are written; the others come back
    with what the statement found, and nothing written for them. Raises
    :class:`~service.errors.Contended`, having written nothing at all, if a row changed while
    the statement ran. No two items may share a message id, a connection or a company."""
    rows: list[tuple[Any, ...]] = []
    jobs: list[tuple[Any, ...]] = []
    for ord, (item, p, version) in enumerate(items):
        d, f, company = item.delivery, item.facts, item.event.company
        move, cause, snapshot = p.move, p.cause, p.snapshot
        deleted = move.to_state is State.DELETED
        rows.append((
            ord, d.message_id, d.timestamp, f.event_id, f.event_type, f.company_id,
            f.connection_id, base64.b64encode(d.body).decode(), d.sha256, to_json(d.headers),
            d.secret_id, d.received_at, f.outcome, f.error,
            company.id, company.name, company.description, to_json(company.tags),
            snapshot.id, snapshot.company_id, version,
            None if deleted else move.to_state.value, deleted, move.applied, cause.event_time,
            cause.event_id, *p.details(), *p.history(), p.unlinks))
        jobs.extend(_job_rows(p, max_attempts))
    found = await tx.fetch(_PG_COMMIT_CONNECTION_EVENTS, now,
                           _json_rows(_COMMIT_COLUMNS, rows), _json_rows(_JOB_COLUMNS, jobs))
    committed = []
    for (item, _, _), row in zip(items, found, strict=True):
        if row["id"] is None:
            snapshot = ConnectionSnapshot(item.event.connection.id, item.event.company.id,
                                          exists=False, state=None, last_event_at=None)
        else:
            snapshot = _snapshot(row)
        committed.append(Committed(
            row["ok"], row["fresh"], row["recorded"], row["stored_sha256"],
            row["stored_outcome"], snapshot,
            None if row["version"] is None else int(row["version"])))
    return committed


# --- history and outbox ----------------------------------------------------------------------

_INSERT_HISTORY = sql("""
INSERT INTO connection_history (connection_id, company_id, from_state, to_state, result, source,
    event_id, event_type, delivery_id, event_time, recorded_at, reason)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
ON CONFLICT (connection_id, event_id, event_type) DO NOTHING
RETURNING id""")

_INSERT_JOB = sql("""
INSERT INTO outbox (id, kind, dedupe_key, company_id, connection_id, payload, status, attempts,
    max_attempts, next_attempt_at, created_at, updated_at)
VALUES ($1, $2, $3, $4, $5, $6, 'pending', 0, $7, $8, $8, $8)
ON CONFLICT (dedupe_key) DO NOTHING""")


@dataclass(frozen=True, slots=True)
class Cause:
    """What caused a move, for its history row."""

    event_id: str | None
    event_type: str | None
    delivery_id: str | None
    event_time: datetime | None
    reason: str | None = None


async def enqueue(tx: Tx, *, commands: tuple[Command, ...] | list[Command], now: datetime,
                  max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> None:
    """Add follow-up jobs to the outbox (once per dedupe key), in the caller's transaction."""
    for command in commands:
        await tx.execute(
            _INSERT_JOB, uuid.uuid4().hex, command.kind.value, command.dedupe_key,
            command.company_id, command.connection_id, to_json(command.payload), max_attempts,
            now)


# --- reads, writes, rate limits --------------------------------------------------------------

_UPSERT_DATA_TYPE = sql("""
INSERT INTO data_type_status (company_id, data_type, connection_id, status, records_modified,
    issues, event_time, updated_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (company_id, data_type) DO UPDATE SET connection_id = excluded.connection_id,
    status = excluded.status, records_modified = excluded.records_modified,
    issues = excluded.issues, event_time = excluded.event_time, updated_at = excluded.updated_at
WHERE data_type_status.event_time IS NULL OR excluded.event_time IS NULL
    OR excluded.event_time >= data_type_status.event_time""")

_INSERT_WRITE_RESULT = sql("""
INSERT INTO write_results (event_id, company_id, connection_id, data_type, successful,
    push_operation_key, operation, status, record_id, event_time, recorded_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
ON CONFLICT (event_id) DO NOTHING""")

_UPSERT_RATE_LIMIT = sql("""
INSERT INTO rate_limit (id, paused_until, daily_quota, quota_remaining, event_time, updated_at)
VALUES (1, $1, $2, $3, $4, $5)
ON CONFLICT (id) DO UPDATE SET paused_until = excluded.paused_until,
    daily_quota = excluded.daily_quota, quota_remaining = excluded.quota_remaining,
    event_time = excluded.event_time, updated_at = excluded.updated_at
WHERE rate_limit.event_time IS NULL OR excluded.event_time >= rate_limit.event_time""")


async def record_read(tx: Tx, *, company_id: str, read: DataTypeRead,
                      event_time: datetime | None, now: datetime) -> None:
    await tx.execute(_UPSERT_DATA_TYPE, company_id, read.data_type, read.connection_id,
                     read.status, read.records_modified, to_json(read.issues), event_time, now)


async def record_write(tx: Tx, *, write: WriteCompleted, now: datetime) -> None:
    await tx.execute(
        _INSERT_WRITE_RESULT, write.meta.event_id, write.company.id, write.connection_id,
        write.data_type, write.successful, write.push_operation_key, write.operation,
        write.status, write.record_id, write.meta.generated_at, now)


async def record_rate_limit(tx: Tx, *, paused_until: datetime | None, daily_quota: int | None,
                            quota_remaining: int | None, event_time: datetime | None,
                            now: datetime) -> None:
    await tx.execute(_UPSERT_RATE_LIMIT, paused_until, daily_quota, quota_remaining,
                     event_time, now)


# --- Bill Pay readiness ----------------------------------------------------------------------

# Ready only if a Linked connection still exists as this commits: a revocation may have been
# applied while the job was asking Codat.
_SET_READINESS = sql("""
UPDATE companies SET bill_pay_ready = $2 AND EXISTS (
        SELECT 1 FROM connections WHERE company_id = $1 AND status || '' = 'Linked'
            AND deleted = FALSE),
    bill_pay_checked_at = $3, bill_pay_detail = $4, updated_at = $3
WHERE id = $1""")

# A company is ready for Bill Pay only while it has a Linked connection to read and pay through.
# The subquery must walk the company's connections (ix_connections_company_id_id), never every
# Linked connection through the status index: "status || ''" keeps planners off that index.
_NOT_READY_WITHOUT_LINK = sql("""
UPDATE companies SET bill_pay_ready = FALSE, bill_pay_checked_at = $2, updated_at = $2
WHERE id = $1 AND bill_pay_ready AND NOT EXISTS (
    SELECT 1 FROM connections c WHERE c.company_id = companies.id
        AND c.status || '' = 'Linked' AND c.deleted = FALSE)""")

_DATA_TYPE_STATUSES = sql("SELECT data_type, status FROM data_type_status WHERE company_id = $1")

_LINKED_CONNECTION = sql("""
SELECT id FROM connections WHERE company_id = $1 AND status || '' = 'Linked' AND deleted = FALSE
ORDER BY updated_at DESC LIMIT 1""")


async def set_readiness(tx: Tx, *, company_id: str, ready: bool, detail: dict[str, Any],
                        now: datetime) -> None:
    await tx.execute(_SET_READINESS, company_id, ready, now, to_json(detail))


async def data_type_statuses(tx: Tx, *, company_id: str) -> dict[str, str]:
    return {r["data_type"]: r["status"] for r in await tx.fetch(_DATA_TYPE_STATUSES, company_id)}


async def linked_connection_id(tx: Tx, *, company_id: str) -> str | None:
    value = await tx.fetchval(_LINKED_CONNECTION, company_id)
    return None if value is None else str(value)


# --- retention -------------------------------------------------------------------------------

# Failed deliveries keep their bodies whatever their age: they are still to be replayed.
_PRUNE_BODIES = sql("""
UPDATE deliveries SET body = NULL WHERE message_id IN (
    SELECT message_id FROM deliveries
    WHERE received_at < $1 AND body IS NOT NULL AND outcome <> 'failed' LIMIT $2)
RETURNING message_id""")

_FORGET_DELIVERIES = sql("""
DELETE FROM deliveries WHERE message_id IN (
    SELECT message_id FROM deliveries WHERE received_at < $1 AND outcome <> 'failed' LIMIT $2)
RETURNING message_id""")

_FORGET_CONFLICTS = sql("""
DELETE FROM delivery_conflicts WHERE id IN (
    SELECT id FROM delivery_conflicts WHERE received_at < $1 LIMIT $2)
RETURNING id""")


async def prune_bodies(tx: Tx, *, before: datetime, limit: int) -> int:
    """Drop the bodies of up to ``limit`` deliveries received before ``before``."""
    return len(await tx.fetch(_PRUNE_BODIES, before, limit))


async def forget_deliveries(tx: Tx, *, before: datetime, limit: int) -> int:
    """Delete up to ``limit`` delivery records (and conflicts) received before ``before``."""
    deleted = len(await tx.fetch(_FORGET_DELIVERIES, before, limit))
    return deleted + len(await tx.fetch(_FORGET_CONFLICTS, before, limit))
