"""Sequences one verified delivery: parse, store, dedupe, apply, all in one transaction.

The order matters and each step says why:

1. :func:`examine` parses the body *before* the transaction: parsing is pure, and knowing the
   outcome up front lets the delivery row be written once, with its final outcome.
2. :func:`ingest` (the unit of work) inserts the delivery row first. Its primary key is the svix
   message id, so a redelivery, even one racing this one on another replica, stops here.
3. The event's effects (company, connection move, history row, outbox jobs) follow in the SAME
   transaction; the caller answers 2xx only after the commit, so an acknowledged delivery and
   everything it caused are durable together, or neither is.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from handlers import decide_connection_event, decide_move
from schemas.commands import Command, ConnectionSnapshot, JobKind, Move
from schemas.events import (
    CompanyEvent,
    CompanyEventKind,
    CompanyInfo,
    ConnectionEvent,
    ConnectionInfo,
    Event,
    RateLimitChanged,
    ReadCompleted,
    WriteCompleted,
    company_id_of,
    connection_id_of,
)
from schemas.state import Source, State
from schemas.webhook import UnsupportedEvent, UnusableDelivery, parse_event
from service import store
from service.db import Tx, sql, utcnow
from service.store import Cause, DeliveryFacts, NewDelivery


class Outcome(StrEnum):
    """A stored delivery's outcome."""

    PROCESSED = "processed"  # applied (its moves may still be superseded or rejected)
    IGNORED = "ignored"  # authentic, well-formed, an event type we do not act on
    UNPARSEABLE = "unparseable"  # authentic but unusable: not JSON, wrong shape, unknown values
    FAILED = "failed"  # our own processing raised; processed again on redelivery or replay


class Disposition(StrEnum):
    """What this attempt did with the delivery."""

    STORED = "stored"  # first time seen: stored and applied
    REPROCESSED = "reprocessed"  # seen before and failed then: applied now
    DUPLICATE = "duplicate"  # seen before with the same body: nothing changed
    CONFLICT = "conflict"  # seen before with ANOTHER body: recorded, nothing changed


@dataclass(frozen=True, slots=True)
class Examined:
    """A delivery's body, parsed (or not) before any transaction."""

    event: Event | None
    facts: DeliveryFacts


@dataclass(slots=True)
class Applied:
    """What applying an event changed: one entry per connection move."""

    moves: list[tuple[str, Move]] = field(default_factory=list)
    jobs: int = 0


@dataclass(frozen=True, slots=True)
class IngestResult:
    disposition: Disposition
    outcome: Outcome
    applied: Applied


def new_delivery(*, message_id: str, timestamp: int, body: bytes, secret_id: str,
                 headers: dict[str, str], received_at: datetime | None = None) -> NewDelivery:
    return NewDelivery(message_id, timestamp, body, hashlib.sha256(body).hexdigest(), secret_id,
                       headers, received_at or utcnow())


def examine(body: bytes) -> Examined:
    """Parse a verified body into an event and the facts its delivery row records."""
    try:
        event = parse_event(body)
    except UnsupportedEvent as exc:
        return Examined(None, DeliveryFacts(exc.event_id, exc.event_type, None, None,
                                            Outcome.IGNORED, str(exc)))
    except UnusableDelivery as exc:
        return Examined(None, DeliveryFacts(None, None, None, None, Outcome.UNPARSEABLE,
                                            str(exc)))
    facts = DeliveryFacts(event.meta.event_id, event.meta.event_type, company_id_of(event),
                          connection_id_of(event), Outcome.PROCESSED, None)
    return Examined(event, facts)


async def ingest(tx: Tx, delivery: NewDelivery, examined: Examined) -> IngestResult:
    """The unit of work for one delivery (see the module docstring for the order)."""
    now = utcnow()
    outcome = Outcome(examined.facts.outcome)
    event = examined.event
    if isinstance(event, ConnectionEvent):  # the hot path: fewest statements
        snapshot = await store.open_connection_event(tx, delivery=delivery,
                                                     facts=examined.facts, event=event, now=now)
        if snapshot is not None:
            applied = Applied()
            await _apply_connection_event(tx, event, snapshot, delivery.message_id, applied,
                                          now=now)
            return IngestResult(Disposition.STORED, outcome, applied)
    elif await store.insert_delivery(tx, delivery=delivery, facts=examined.facts):
        applied = Applied()
        if event is not None:
            applied = await apply_event(tx, event, delivery_id=delivery.message_id, now=now)
        return IngestResult(Disposition.STORED, outcome, applied)
    return await _stored_before(tx, delivery, examined, now=now)


async def _stored_before(tx: Tx, delivery: NewDelivery, examined: Examined, *,
                         now: datetime) -> IngestResult:
    """The message id is stored already: a duplicate, a conflict, or a failure to retry."""
    outcome = Outcome(examined.facts.outcome)
    existing = await store.lock_delivery(tx, message_id=delivery.message_id)
    assert existing is not None
    if existing["body_sha256"] != delivery.sha256:
        await store.record_conflict(tx, delivery=delivery)
        return IngestResult(Disposition.CONFLICT, Outcome(existing["outcome"]), Applied())
    if existing["outcome"] != Outcome.FAILED:
        return IngestResult(Disposition.DUPLICATE, Outcome(existing["outcome"]), Applied())
    await store.reprocess_delivery(tx, message_id=delivery.message_id, facts=examined.facts,
                                   now=now)
    applied = Applied()
    if examined.event is not None:
        applied = await apply_event(tx, examined.event, delivery_id=delivery.message_id, now=now)
    return IngestResult(Disposition.REPROCESSED, outcome, applied)


_STORED = sql("SELECT body, body_sha256, outcome FROM deliveries WHERE message_id = $1{lock}")


@dataclass(frozen=True, slots=True)
class Replayed:
    message_id: str
    before: Outcome | None  # None: no such delivery, or its body was pruned
    after: Outcome | None
    applied: Applied


async def replay(tx: Tx, message_id: str) -> Replayed:
    """Run a stored delivery through the ingest path again (idempotent: a processed event's
    effects are not applied twice, because its history rows already exist)."""
    row = await tx.fetchrow(_STORED, message_id)
    if row is None or row["body"] is None:
        return Replayed(message_id, None, None, Applied())
    examined = examine(bytes(row["body"]))
    now = utcnow()
    await store.reprocess_delivery(tx, message_id=message_id, facts=examined.facts, now=now)
    applied = Applied()
    if examined.event is not None:
        applied = await apply_event(tx, examined.event, delivery_id=message_id, now=now)
    return Replayed(message_id, Outcome(row["outcome"]), Outcome(examined.facts.outcome), applied)


async def record_failure(tx: Tx, delivery: NewDelivery, examined: Examined, error: str) -> None:
    """After a rolled-back attempt: keep the delivery, marked failed, so a retry processes it."""
    await store.record_failure(tx, delivery=delivery, facts=examined.facts, error=error)


async def apply_event(tx: Tx, event: Event, *, delivery_id: str | None,
                      now: datetime) -> Applied:
    """Apply an event's effects (idempotent: applying it again records and moves nothing)."""
    applied = Applied()
    if isinstance(event, ConnectionEvent):
        await store.upsert_company(tx, company=event.company, event_time=event.meta.generated_at,
                                   now=now)
        snapshot = await store.lock_connection(tx, connection_id=event.connection.id,
                                               company_id=event.company.id, now=now)
        await _apply_connection_event(tx, event, snapshot, delivery_id, applied, now=now)
    elif isinstance(event, CompanyEvent):
        await store.upsert_company(tx, company=event.company, event_time=event.meta.generated_at,
                                   now=now)
        if event.kind is CompanyEventKind.DELETED:
            await _delete_company(tx, event, delivery_id, applied, now=now)
    elif isinstance(event, ReadCompleted):
        await store.upsert_company(tx, company=event.company, event_time=None, now=now)
        for read in event.data_types:
            await store.record_read(tx, company_id=event.company.id, read=read,
                                    event_time=event.meta.generated_at, now=now)
        # Readiness is the worker's to decide (in sync mode it asks Codat), off the hot path.
        readiness = Command(JobKind.REFRESH_READINESS,
                            f"readiness:{event.company.id}:{event.meta.event_id}",
                            event.company.id, connection_id_of(event))
        await store.enqueue(tx, commands=[readiness], now=now)
        applied.jobs += 1
    elif isinstance(event, WriteCompleted):
        await store.upsert_company(tx, company=event.company, event_time=None, now=now)
        await store.record_write(tx, write=event, now=now)
    elif isinstance(event, RateLimitChanged):
        await store.record_rate_limit(
            tx, paused_until=event.expires_at if event.reached else None,
            daily_quota=event.daily_quota, quota_remaining=event.quota_remaining,
            event_time=event.meta.generated_at, now=now)
    return applied


async def apply_move(tx: Tx, snapshot: ConnectionSnapshot, move: Move, cause: Cause, *,
                     now: datetime, info: ConnectionInfo | None = None,
                     errors: list[dict[str, Any]] | None = None) -> bool:
    """Record a decided move and, if applied, write it (for the API and reconcile paths)."""
    return await _record_move(tx, snapshot, move, cause, Applied(), now=now, info=info,
                              errors=errors)


async def _apply_connection_event(tx: Tx, event: ConnectionEvent, snapshot: ConnectionSnapshot,
                                  delivery_id: str | None, applied: Applied, *,
                                  now: datetime) -> None:
    move = decide_connection_event(event, snapshot)
    cause = Cause(event.meta.event_id, event.meta.event_type, delivery_id,
                  event.meta.generated_at)
    errors = event.connection.errors
    if errors is None and move.to_state is not State.DELETED:
        errors = []  # a move that does not report errors clears the old ones
    await _record_move(tx, snapshot, move, cause, applied, now=now, info=event.connection,
                       errors=errors, company=event.company)


async def _record_move(tx: Tx, snapshot: ConnectionSnapshot, move: Move, cause: Cause,
                       applied: Applied, *, now: datetime, info: ConnectionInfo | None = None,
                       errors: list[dict[str, Any]] | None = None,
                       company: CompanyInfo | None = None) -> bool:
    if not await store.record_move(tx, snapshot=snapshot, move=move, cause=cause, info=info,
                                  errors=errors, company=company, now=now):
        return False
    applied.moves.append((snapshot.id, move))
    applied.jobs += len(move.commands)
    return True


async def _delete_company(tx: Tx, event: CompanyEvent, delivery_id: str | None,
                          applied: Applied, *, now: datetime) -> None:
    await store.mark_company_deleted(tx, company_id=event.company.id, now=now)
    cause = Cause(event.meta.event_id, event.meta.event_type, delivery_id,
                  event.meta.generated_at, reason="company deleted")
    for snapshot in await store.lock_company_connections(tx, company_id=event.company.id):
        move = decide_move(snapshot, State.DELETED, source=Source.WEBHOOK,
                           event_time=None, cause=event.meta.event_id)
        await _record_move(tx, snapshot, move, cause, applied, now=now)

