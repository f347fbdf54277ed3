"""Repository functions for the write paths: deliveries, companies, connections, history, outbox.

Every statement is built once at import (:func:`service.db.sql`) and each function takes the
transaction as ``tx``. Nothing here decides anything: the handlers decide, this writes.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from handlers import decide
from schemas.changes import NO_LINKED_CONNECTION, ChangeType, move_change, readiness_change
from schemas.commands import NOTHING_HEARD, Cause, Command, Stored, Verdict, Word
from schemas.events import CompanyInfo, DataTypeRead, WriteCompleted
from schemas.state import Source, State
from service import feed
from service.db import Row, Tx, as_dt, sql, to_json
from service.errors import Contended

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


_NEWEST_DELIVERY = sql("SELECT MAX(received_at) FROM deliveries")


async def newest_delivery_at(tx: Tx) -> datetime | None:
    """When the newest delivery was received (one step down ix_deliveries_received_at): how a
    standalone worker knows that a storm is under way."""
    return as_dt(await tx.fetchval(_NEWEST_DELIVERY))


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

# Deletion is irreversible: the first company.deleted is the one recorded.
_DELETE_COMPANY = sql("""
UPDATE companies SET deleted = TRUE, deleted_at = $2, bill_pay_ready = FALSE, deleted_key = $3,
    updated_at = $2
WHERE id = $1 AND NOT deleted
RETURNING id""")


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


# --- connections: every word takes this path, except a PostgreSQL batch (service.batch) -------

_CONNECTION = sql("""
SELECT status, deleted, event_key, platform_key FROM connections WHERE id = $1{lock}""")
# KEY SHARE: a company.deleted under way (it holds the company FOR UPDATE while it lists the
# company's connections, see delete_company) either is seen here or waits for this
# transaction, and then finds its connection: neither misses the other.
_COMPANY_DELETED_KEY = sql("SELECT deleted_key FROM companies WHERE id = $1{key_share}")

# What a word says of the connection besides its state ($9 on); NULL keeps what is known.
_DETAILS = """platform_name = COALESCE($9, platform_name),
    source_type = COALESCE($10, source_type), integration_id = COALESCE($11, integration_id),
    source_id = COALESCE($12, source_id), link_url = COALESCE($13, link_url),
    created = COALESCE($14, created), last_sync = COALESCE($15, last_sync),
    errors = COALESCE($16, errors)"""
_MOVE_SET = """UPDATE connections SET status = COALESCE($3, status), deleted = $4,
    deleted_at = CASE WHEN $4 THEN COALESCE(deleted_at, $2) END, event_key = $5,
    last_event_at = $6, last_event_id = $7, previous_state = $8, version = version + 1,
    updated_at = $2, """
# A connection's platform never changes, and SQLite rewrites an index entry for every column an
# UPDATE sets, changed or not: platform_key (indexed, $17) is set only by a word that brings a
# new one.
_MOVE = sql(f"{_MOVE_SET}{_DETAILS} WHERE id = $1")
_MOVE_PLATFORM = sql(f"{_MOVE_SET}{_DETAILS}, platform_key = $17 WHERE id = $1")
# A row appears with the first word applied to it: a connection is never stored stateless.
_BORN = sql("""
INSERT INTO connections (id, created_at, updated_at, status, deleted, deleted_at, event_key,
    last_event_at, last_event_id, previous_state, company_id, version, platform_key,
    platform_name, source_type, integration_id, source_id, link_url, created, last_sync, errors)
VALUES ($1, $2, $2, $3, $4, $19, $5, $6, $7, $8, $18, 1, $17, $9, $10, $11, $12, $13, $14, $15,
    $16)
ON CONFLICT (id) DO NOTHING RETURNING id""")
# Under the company's row lock, on its newest version: two connections leaving Linked at once on
# two replicas each count the other's move, so the last one out always clears readiness.
# RETURNING sees only new values: readiness was just cleared when it was checked at $3.
_COUNT_LINKED = sql("""
UPDATE companies SET linked_count = linked_count + $2,
    bill_pay_ready = bill_pay_ready AND linked_count + $2 > 0,
    bill_pay_checked_at = CASE WHEN bill_pay_ready AND linked_count + $2 <= 0 THEN $3
        ELSE bill_pay_checked_at END,
    updated_at = $3
WHERE id = $1
RETURNING bill_pay_checked_at = $3 AND NOT bill_pay_ready AS unready""")
_COMPANY_CONNECTIONS = sql("""
SELECT id FROM connections WHERE company_id = $1 ORDER BY id{lock}""")
_LOCK_COMPANY = sql("SELECT id FROM companies WHERE id = $1{lock}")


def _stored(row: Row | None) -> Stored:
    if row is None:
        return NOTHING_HEARD
    return Stored(State.of(row["status"], deleted=bool(row["deleted"])), row["event_key"])


def linked_delta(verdict: Verdict) -> int:
    """How an applied move changes its company's count of Linked connections."""
    if not verdict.applied:
        return 0
    return (verdict.to_state is State.LINKED) - (verdict.from_state is State.LINKED)


async def apply_word(tx: Tx, word: Word, *, now: datetime,
                     max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> list[Verdict]:
    """Decide ``word`` against its connection, locked, and record it: its history row, and if
    applied, the connection, its company's count of Linked connections and its follow-ups.

    The verdicts of what was recorded: empty when this word was recorded before (its unique
    history row makes a replayed word a no-op); two when the connection's company was deleted
    and the connection had not heard of it yet (the deletion is applied to it first).
    """
    # The connection's row lock first, then the company's: the order every writer takes them.
    row = await tx.fetchrow(_CONNECTION, word.connection_id)
    stored = _stored(row)
    exists, platform = row is not None, None if row is None else row["platform_key"]
    if word.company is not None:
        await upsert_company(tx, company=word.company, event_time=word.cause.time, now=now)
    else:
        await tx.execute(_INSERT_COMPANY_IF_MISSING, word.company_id, now)
    verdicts = []
    deletion = await tx.fetchval(_COMPANY_DELETED_KEY, word.company_id)
    if deletion is not None and deletion != word.key \
            and (stored.key is None or deletion > stored.key):
        # company.deleted deleted this connection too, even if we heard of it only now.
        first = _company_deletion(word.connection_id, word.company_id, deletion)
        verdict = decide(stored, first)
        if await _record(tx, first, verdict, exists, platform, now=now,
                         max_attempts=max_attempts):
            verdicts.append(verdict)
        exists, stored = True, Stored(State.DELETED, deletion)
    verdict = decide(stored, word)
    if await _record(tx, word, verdict, exists, platform, now=now, max_attempts=max_attempts):
        verdicts.append(verdict)
    return verdicts


def _company_deletion(connection_id: str, company_id: str, key: str) -> Word:
    event_id = key.split(" ", 2)[2]  # the key of company.deleted ends with its event id
    return Word(connection_id, company_id, State.DELETED, key, Source.WEBHOOK,
                Cause(event_id, "company.deleted", reason="company deleted"))


async def _record(tx: Tx, word: Word, verdict: Verdict, exists: bool, platform: str | None, *,
                  now: datetime, max_attempts: int) -> bool:
    """Record ``word``'s history row and, if applied, its effects (``exists``, ``platform``:
    whether its connection is stored, and with which platform key)."""
    cause = word.cause
    recorded = await tx.fetchrow(
        _INSERT_HISTORY, word.connection_id, word.company_id,
        verdict.from_state.value if verdict.from_state else None, verdict.to_state.value,
        verdict.result.value, verdict.skipped, verdict.source.value, cause.id, cause.type,
        cause.delivery_id, cause.time, word.key, now, verdict.reason) is not None
    if not recorded:
        return False
    if verdict.applied:
        deleted = word.state is State.DELETED
        status = (word.info.status.value if word.info is not None
                  else None if deleted else word.state.value)
        info = word.info
        details = (None,) * 7 if info is None else (
            info.platform_name, info.source_type, info.integration_id, info.source_id,
            info.link_url, info.created, info.last_sync)
        platform_key = None if info is None else info.platform_key
        values = (word.connection_id, now, status, deleted, word.key, cause.time, cause.id,
                  verdict.from_state.value if verdict.from_state else None, *details,
                  to_json(word.errors))
        if not exists:
            if await tx.fetchrow(_BORN, *values, platform_key, word.company_id,
                                 now if deleted else None) is None:
                # Another transaction stored the connection after it was read: decide again.
                raise Contended(f"connection {word.connection_id} was stored meanwhile")
        elif platform_key is None or platform_key == platform:
            await tx.execute(_MOVE, *values)
        else:
            await tx.execute(_MOVE_PLATFORM, *values, platform_key)
        if change := move_change(word, verdict):
            await feed.record(tx, change[0], company_id=word.company_id,
                              connection_id=word.connection_id, data=change[1], at=now)
        if delta := linked_delta(verdict):
            counted = await tx.fetchrow(_COUNT_LINKED, word.company_id, delta, now)
            if counted is not None and counted["unready"]:
                await feed.record(tx, ChangeType.READY_CHANGED, company_id=word.company_id,
                                  connection_id=None, at=now,
                                  data=readiness_change(False, [NO_LINKED_CONNECTION]))
    await enqueue(tx, commands=verdict.commands, now=now, max_attempts=max_attempts)
    return True


async def lock_company(tx: Tx, *, company: str) -> None:
    """Hold the company's row FOR UPDATE (if it is stored) until the transaction ends: what
    company.deleted does before anything else (see :func:`delete_company`)."""
    await tx.fetch(_LOCK_COMPANY, company)


async def delete_company(tx: Tx, *, company: str, key: str, now: datetime,
                         ) -> list[tuple[str, Verdict]]:
    """Record company.deleted (its order key ``key``) and delete each connection of the company
    we know; a connection heard of later is deleted when it is (see :func:`apply_word`).

    The caller holds the company row FOR UPDATE (:func:`lock_company`), taken before any other
    lock of this transaction. A word of a connection first heard of now holds it FOR KEY SHARE
    while it reads the company (:data:`_COMPANY_DELETED_KEY`, and the batch statement of
    service/batch.py): it waits for this transaction and then finds the company deleted, or this
    one waits for it and the list below, read after, holds its connection."""
    connections = [r["id"] for r in await tx.fetch(_COMPANY_CONNECTIONS, company)]  # locked
    if await tx.fetchrow(_DELETE_COMPANY, company, now, key) is None:
        return []  # deleted before: this is the same word again
    await feed.record(tx, ChangeType.COMPANY_DELETED, company_id=company, connection_id=None,
                      data={"eventId": key.split(" ", 2)[2]}, at=now)
    verdicts: list[tuple[str, Verdict]] = []
    for connection_id in connections:
        word = _company_deletion(connection_id, company, key)
        verdicts.extend((connection_id, v) for v in await apply_word(tx, word, now=now))
    return verdicts


_CONNECTION_STATE = sql("SELECT status, deleted FROM connections WHERE id = $1")


async def connection_state(tx: Tx, *, connection_id: str) -> State | None:
    """A connection's state, read without a lock (None: unknown)."""
    row = await tx.fetchrow(_CONNECTION_STATE, connection_id)
    return None if row is None else State.of(row["status"], deleted=bool(row["deleted"]))


# --- history and outbox ----------------------------------------------------------------------

_INSERT_HISTORY = sql("""
INSERT INTO connection_history (connection_id, company_id, from_state, to_state, result, skipped,
    source, event_id, event_type, delivery_id, event_time, event_key, recorded_at, reason)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
ON CONFLICT (connection_id, event_id, event_type) DO NOTHING
RETURNING id""")

_INSERT_JOB = sql("""
INSERT INTO outbox (id, kind, dedupe_key, company_id, connection_id, payload, status, attempts,
    max_attempts, next_attempt_at, created_at, updated_at)
VALUES ($1, $2, $3, $4, $5, $6, 'pending', 0, $7, $8, $8, $8)
ON CONFLICT (dedupe_key) DO NOTHING""")


def job_id(now: datetime) -> str:
    """A new job's id: 32 hex digits, the first 12 its creation in milliseconds, so that new ids
    go to the end of the outbox's primary key rather than to a random page of it (a page
    written to the WAL per job)."""
    return f"{int(now.timestamp() * 1000):012x}{secrets.token_hex(10)}"


async def enqueue(tx: Tx, *, commands: Sequence[Command], now: datetime,
                  max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> None:
    """Add follow-up jobs to the outbox (once per dedupe key), in the caller's transaction."""
    for command in commands:
        await tx.execute(
            _INSERT_JOB, job_id(now), command.kind.value, command.dedupe_key,
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

# Ready only while a connection is Linked as this commits: the count is read from the company
# row's newest version under its lock, so a revocation committed meanwhile is seen.
_READY_NOW = sql("SELECT bill_pay_ready FROM companies WHERE id = $1{lock}")
_SET_READINESS = sql("""
UPDATE companies SET bill_pay_ready = $2 AND linked_count > 0,
    bill_pay_checked_at = $3, bill_pay_detail = $4, updated_at = $3
WHERE id = $1
RETURNING bill_pay_ready, linked_count""")

_DATA_TYPE_STATUSES = sql("SELECT data_type, status FROM data_type_status WHERE company_id = $1")

_LINKED_CONNECTION = sql("""
SELECT id FROM connections WHERE company_id = $1 AND status || '' = 'Linked' AND deleted = FALSE
ORDER BY updated_at DESC LIMIT 1""")


async def set_readiness(tx: Tx, *, company_id: str, ready: bool, detail: dict[str, Any],
                        now: datetime) -> None:
    """Record the worker's assessment; a change of readiness goes to the feed."""
    was = await tx.fetchval(_READY_NOW, company_id)
    row = await tx.fetchrow(_SET_READINESS, company_id, ready, now, to_json(detail))
    if row is None or bool(was) == bool(row["bill_pay_ready"]):
        return
    why_not = [str(m) for m in detail.get("missing", []) if m != "a Linked connection"]
    if not row["linked_count"]:
        why_not.append(NO_LINKED_CONNECTION)
    await feed.record(tx, ChangeType.READY_CHANGED, company_id=company_id, connection_id=None,
                      data=readiness_change(bool(row["bill_pay_ready"]), why_not), at=now)


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
