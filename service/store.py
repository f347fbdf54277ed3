"""Repository functions for the write paths: deliveries, companies, connections, history, outbox.

Every statement is built once at import (:func:`service.db.sql`) and each function takes the
transaction as ``tx``. Nothing here decides anything: the handlers decide, this writes.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

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


# --- the delivery path, fused on PostgreSQL --------------------------------------------------
# Each statement is a round trip, and round trips are what bound a receiver on PostgreSQL. There,
# data-modifying CTEs do in one statement what SQLite (in-process, no round trips) does in
# several: the same rows, the same conflict rules. The CTEs of one statement run in no defined
# order, so at most ONE of them may take a row lock another transaction could also want.

_PG_OPEN_CONNECTION_EVENT = sql("""
WITH fresh AS (
    INSERT INTO deliveries (message_id, msg_timestamp, event_id, event_type, company_id,
        connection_id, body, body_sha256, headers, secret_id, received_at, processed_at,
        outcome, error, attempts)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11, $12, $13, 1)
    ON CONFLICT (message_id) DO NOTHING
    RETURNING message_id
), company AS (
    -- DO NOTHING takes no lock on an existing company; a refresh comes after the move.
    INSERT INTO companies (id, name, description, tags, deleted, bill_pay_ready, last_event_at,
        created_at, updated_at)
    SELECT $5, $14, $15, $16::text::json, FALSE, FALSE, $17::timestamptz, $11, $11
    WHERE EXISTS (SELECT 1 FROM fresh)
    ON CONFLICT (id) DO NOTHING
), locked AS (
    SELECT id, company_id, status, deleted, last_event_at FROM connections
    WHERE id = $6 AND EXISTS (SELECT 1 FROM fresh)
    FOR UPDATE
), placeholder AS (
    INSERT INTO connections (id, company_id, deleted, version, created_at, updated_at)
    SELECT $6, $5, FALSE, 0, $11, $11
    WHERE EXISTS (SELECT 1 FROM fresh) AND NOT EXISTS (SELECT 1 FROM locked)
    ON CONFLICT (id) DO NOTHING
    RETURNING id
)
SELECT EXISTS (SELECT 1 FROM fresh) AS fresh, EXISTS (SELECT 1 FROM placeholder) AS created,
    locked.id, locked.company_id, locked.status, locked.deleted, locked.last_event_at
FROM (SELECT 1) AS one LEFT JOIN locked ON TRUE""")

_PG_RECORD_MOVE = sql(f"""
WITH history AS (
    INSERT INTO connection_history (connection_id, company_id, from_state, to_state, result,
        source, event_id, event_type, delivery_id, event_time, recorded_at, reason)
    VALUES ($1, $17, $18, $19, $20, $21, $22, $23, $24, $25, $4, $26)
    ON CONFLICT (connection_id, event_id, event_type) DO NOTHING
    RETURNING id
), moved AS (
    {_APPLY} AND $27::boolean AND EXISTS (SELECT 1 FROM history)
), unready AS (
    -- This statement's snapshot still shows the connection Linked: look at the others.
    UPDATE companies SET bill_pay_ready = FALSE, bill_pay_checked_at = $4, updated_at = $4
    WHERE $31::boolean AND id = $17 AND bill_pay_ready AND EXISTS (SELECT 1 FROM history)
        AND NOT EXISTS (SELECT 1 FROM connections c WHERE c.company_id = $17 AND c.id <> $1
                        AND c.status || '' = 'Linked' AND c.deleted = FALSE)
), company AS (
    UPDATE companies SET name = COALESCE($28::text, name),
        description = COALESCE($29::text, description),
        tags = COALESCE($30::text::json, tags), last_event_at = COALESCE($25, last_event_at),
        updated_at = $4
    WHERE id = $17 AND EXISTS (SELECT 1 FROM history)
        AND (last_event_at IS NULL OR $25 IS NULL OR $25 >= last_event_at)
        AND (($28::text IS NOT NULL AND name IS DISTINCT FROM $28::text)
            OR ($29::text IS NOT NULL AND description IS DISTINCT FROM $29::text)
            OR ($30::text IS NOT NULL AND CAST(tags AS TEXT) IS DISTINCT FROM $30::text))
)
SELECT EXISTS (SELECT 1 FROM history)""")


async def open_connection_event(tx: Tx, *, delivery: NewDelivery, facts: DeliveryFacts,
                                event: ConnectionEvent, now: datetime,
                                ) -> ConnectionSnapshot | None:
    """Store a connection event's delivery and, if new, make sure its company exists and lock
    its connection (created, state unknown, if never seen). None: the message id is stored
    already."""
    company, connection_id = event.company, event.connection.id
    if tx.dialect != "postgresql":
        if not await insert_delivery(tx, delivery=delivery, facts=facts):
            return None
        await upsert_company(tx, company=company, event_time=event.meta.generated_at, now=now)
        return await lock_connection(tx, connection_id=connection_id, company_id=company.id,
                                     now=now)
    row = await tx.fetchrow(
        _PG_OPEN_CONNECTION_EVENT, delivery.message_id, delivery.timestamp, facts.event_id,
        facts.event_type, company.id, connection_id, delivery.body, delivery.sha256,
        to_json(delivery.headers), delivery.secret_id, delivery.received_at, facts.outcome,
        facts.error, company.name, company.description, to_json(company.tags),
        event.meta.generated_at)
    assert row is not None
    if not row["fresh"]:
        return None
    if row["id"] is not None:
        return _snapshot(row)
    if row["created"]:
        return ConnectionSnapshot(connection_id, company.id, exists=False, state=None,
                                  last_event_at=None)
    # Another transaction created the connection after this statement began: lock its row.
    return await lock_connection(tx, connection_id=connection_id, company_id=company.id, now=now)


async def record_move(tx: Tx, *, snapshot: ConnectionSnapshot, move: Move, cause: Cause,
                      info: ConnectionInfo | None = None,
                      errors: list[dict[str, Any]] | None = None,
                      company: CompanyInfo | None = None, now: datetime) -> bool:
    """Record a move's history row; if applied, write it with what ``info`` says of the
    connection; refresh what ``company`` says of its company; enqueue its follow-ups.

    False, and nothing written, when this event was already recorded for the connection: that
    unique history row is what makes a replayed event a no-op.
    """
    reason = "; ".join(r for r in (cause.reason, move.reason) if r) or None
    deleted = move.to_state is State.DELETED
    status = None if deleted else move.to_state.value
    details: tuple[Any, ...] = (None,) * 9 if info is None else (
        info.platform_key, info.platform_name, info.source_type, info.integration_id,
        info.source_id, info.link_url, info.created, info.last_sync, to_json(errors))
    apply_args = (snapshot.id, status, deleted, now, cause.event_time, cause.event_id,
                  snapshot.company_id, *details)
    history_args = (snapshot.company_id, move.from_state.value if move.from_state else None,
                    move.to_state.value, move.result.value, move.source.value, cause.event_id,
                    cause.event_type, cause.delivery_id, cause.event_time, reason)
    # A company is ready for Bill Pay only while it has a Linked connection.
    unlinks = (move.applied and move.from_state is State.LINKED
               and move.to_state is not State.LINKED)
    if tx.dialect == "postgresql":
        company_args = ((None, None, None) if company is None
                        else (company.name, company.description, to_json(company.tags)))
        recorded = bool(await tx.fetchval(_PG_RECORD_MOVE, *apply_args, *history_args,
                                          move.applied, *company_args, unlinks))
    else:
        recorded = await tx.fetchrow(_INSERT_HISTORY, snapshot.id, *history_args[:9], now,
                                     reason) is not None
        if recorded and move.applied:
            await tx.execute(_APPLY_MOVE, *apply_args)
        if recorded and unlinks:
            await tx.execute(_NOT_READY_WITHOUT_LINK, snapshot.company_id, now)
    if recorded and move.commands:
        await enqueue(tx, commands=move.commands, now=now)
    return recorded


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
