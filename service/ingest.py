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
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, cast

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
from service.db import SetWork, Tx, sql, utcnow
from service.errors import Contended
from service.known import KnownConnections
from service.store import Cause, DeliveryFacts, NewDelivery, OpenEvent, PlannedMove


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


@dataclass(frozen=True, slots=True)
class Ingest(SetWork[IngestResult]):
    """:func:`ingest` as a unit of work; a batch of them runs as :func:`ingest_together`."""

    delivery: NewDelivery
    examined: Examined
    known: KnownConnections  # the receiver's; a batch decides from its first unit's

    async def __call__(self, tx: Tx) -> IngestResult:
        return await ingest(tx, self.delivery, self.examined)

    @classmethod
    async def run_together(cls, tx: Tx, works: Sequence[Ingest]) -> list[IngestResult]:
        return await ingest_together(tx, [(w.delivery, w.examined) for w in works])

    @classmethod
    async def run_at_once(cls, tx: Tx, works: Sequence[Ingest]) -> list[IngestResult | None]:
        return await ingest_at_once(tx, [(w.delivery, w.examined) for w in works],
                                    works[0].known)


async def ingest_at_once(tx: Tx, items: Sequence[tuple[NewDelivery, Examined]],
                         known: KnownConnections) -> list[IngestResult | None]:
    """Ingest what can be, OUTSIDE a transaction: on PostgreSQL, runs of new connection events
    (see :func:`_runs`), each decided from what ``known`` guesses of its connections and written
    in one statement that commits on its own; an event decided from a wrong guess is decided
    again from what that statement found. A duplicate is answered from what it found too. None
    for every delivery left to :func:`ingest_together` (another event, a conflict, a failure to
    process again, a race lost, and every run after one of those, so that deliveries still
    apply in their order); nothing was written for those."""
    results: list[IngestResult | None] = [None] * len(items)
    if tx.dialect != "postgresql":
        return results
    start = 0
    for run in _runs(items):
        if not isinstance(run[0][1].event, ConnectionEvent):
            break
        done = await _connection_events_at_once(tx, run, known)
        results[start:start + len(run)] = done
        start += len(run)
        if None in done:  # what follows waits for it: deliveries are applied in their order
            break
    for (_, examined), result in zip(items, results, strict=True):
        if result is None and isinstance(examined.event, ConnectionEvent):
            known.forget(examined.event.connection.id)  # the row locks will move it
    return results


async def ingest_together(tx: Tx, items: Sequence[tuple[NewDelivery, Examined]],
                          ) -> list[IngestResult]:
    """:func:`ingest` for several deliveries in one transaction, with the same results as
    ingesting each in turn. On PostgreSQL, runs of connection events that name no message,
    connection or company twice take two statements per run, whatever its length."""
    if tx.dialect != "postgresql":
        return [await ingest(tx, delivery, examined) for delivery, examined in items]
    results: list[IngestResult] = []
    for run in _runs(items):
        if len(run) == 1:
            results.append(await ingest(tx, *run[0]))
        else:
            results.extend(await _ingest_connection_events(tx, run))
    return results


def _runs(items: Sequence[tuple[NewDelivery, Examined]],
          ) -> list[list[tuple[NewDelivery, Examined]]]:
    """Consecutive connection events, cut wherever one names a message, connection or company
    the run already names (set-based statements write each row once); any other event alone."""
    runs: list[list[tuple[NewDelivery, Examined]]] = []
    named: set[tuple[str, str]] | None = None  # what the open run names; None: no open run
    for delivery, examined in items:
        event = examined.event
        if not isinstance(event, ConnectionEvent):
            runs.append([(delivery, examined)])
            named = None
            continue
        keys = {("message", delivery.message_id), ("connection", event.connection.id),
                ("company", event.company.id)}
        if named is None or not named.isdisjoint(keys):
            runs.append([])
            named = set()
        runs[-1].append((delivery, examined))
        named |= keys
    return runs


# A guess, then what the database said it was: a connection moved twice meanwhile waits for
# its row lock instead.
_TRIES = 2


async def _connection_events_at_once(tx: Tx, run: Sequence[tuple[NewDelivery, Examined]],
                                     known: KnownConnections) -> list[IngestResult | None]:
    now = utcnow()
    events = [OpenEvent(d, e.facts, cast(ConnectionEvent, e.event)) for d, e in run]
    results: list[IngestResult | None] = [None] * len(run)
    todo = list(range(len(run)))
    for _ in range(_TRIES):
        plans = []
        for index in todo:
            item = events[index]
            snapshot, version = known.guess(item.event.connection.id, item.event.company.id)
            plans.append((index, item, version, _plan_connection_event(
                item.event, snapshot, item.delivery.message_id)))
        try:
            done = await store.commit_connection_events(
                tx, [(item, plan, version) for _, item, version, plan in plans], now=now)
        except Contended:  # a row changed while it ran: nothing written; under locks, then
            return results
        todo = []
        for (index, item, _, plan), found in zip(plans, done, strict=True):
            known.note(found.snapshot, found.version)
            if found.fresh:
                applied = Applied()
                if found.recorded:
                    applied = Applied([(plan.snapshot.id, plan.move)], len(plan.move.commands))
                results[index] = IngestResult(Disposition.STORED, Outcome(item.facts.outcome),
                                              applied)
            elif found.stored_outcome is not None:
                if found.stored_sha256 == item.delivery.sha256 \
                        and found.stored_outcome != Outcome.FAILED:
                    results[index] = IngestResult(Disposition.DUPLICATE,
                                                  Outcome(found.stored_outcome), Applied())
                # else: another body under this id, or a failure to process again: under locks
            elif not found.ok:
                todo.append(index)  # decided from a stale guess: again, from what it is
            # else: a copy of the message was stored meanwhile: under row locks
        if not todo:
            break
    return results


async def _ingest_connection_events(tx: Tx, run: Sequence[tuple[NewDelivery, Examined]],
                                    ) -> list[IngestResult]:
    now = utcnow()
    opened = await store.open_connection_events(
        tx, [OpenEvent(d, e.facts, cast(ConnectionEvent, e.event)) for d, e in run], now=now)
    results: list[IngestResult | None] = []
    planned: list[tuple[int, PlannedMove]] = []
    for (delivery, examined), snapshot in zip(run, opened, strict=True):
        if snapshot is None:  # stored before: a duplicate, a conflict or a failure to retry
            results.append(await _stored_before(tx, delivery, examined, now=now))
            continue
        event = cast(ConnectionEvent, examined.event)
        planned.append((len(results), _plan_connection_event(event, snapshot,
                                                             delivery.message_id)))
        results.append(None)
    recorded = await store.record_moves(tx, [p for _, p in planned], now=now)
    for (index, p), ok in zip(planned, recorded, strict=True):
        applied = Applied()
        if ok:
            applied.moves.append((p.snapshot.id, p.move))
            applied.jobs += len(p.move.commands)
        outcome = Outcome(run[index][1].facts.outcome)
        results[index] = IngestResult(Disposition.STORED, outcome, applied)
    return [r for r in results if r is not None]


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


def _plan_connection_event(event: ConnectionEvent, snapshot: ConnectionSnapshot,
                           delivery_id: str | None) -> PlannedMove:
    move = decide_connection_event(event, snapshot)
    cause = Cause(event.meta.event_id, event.meta.event_type, delivery_id,
                  event.meta.generated_at)
    errors = event.connection.errors
    if errors is None and move.to_state is not State.DELETED:
        errors = []  # a move that does not report errors clears the old ones
    return PlannedMove(snapshot, move, cause, event.connection, errors, event.company)


async def _apply_connection_event(tx: Tx, event: ConnectionEvent, snapshot: ConnectionSnapshot,
                                  delivery_id: str | None, applied: Applied, *,
                                  now: datetime) -> None:
    p = _plan_connection_event(event, snapshot, delivery_id)
    await _record_move(tx, p.snapshot, p.move, p.cause, applied, now=now, info=p.info,
                       errors=p.errors, company=p.company)


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

