"""Sequences one verified delivery: parse, store, dedupe, apply, all in one transaction.

The order matters and each step says why:

1. :func:`examine` parses the body *before* the transaction: parsing is pure, and knowing the
   outcome up front lets the delivery row be written once, with its final outcome.
2. :func:`ingest` (the unit of work) inserts the delivery row first. Its primary key is the svix
   message id, so a redelivery, even one racing this one on another replica, stops here.
3. The event's effects (company, connection word, history row, outbox jobs) follow in the SAME
   transaction; the caller answers 2xx only after the commit, so an acknowledged delivery and
   everything it caused are durable together, or neither is.

On PostgreSQL a batch of connection events first goes as one statement (:mod:`service.batch`)
with the same effects; what that statement leaves (a redelivery of a failed delivery, another
body under a known id, a deleted company's connection) takes :func:`ingest`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from handlers import word_of_event
from schemas.commands import Command, JobKind, Verdict
from schemas.events import (
    CompanyEvent,
    CompanyEventKind,
    ConnectionEvent,
    Event,
    RateLimitChanged,
    ReadCompleted,
    WriteCompleted,
    company_id_of,
    connection_id_of,
)
from schemas.order import message_instant, order_key
from schemas.state import State
from schemas.webhook import UnsupportedEvent, UnusableDelivery, parse_event
from service import batch, store
from service.db import SetWork, Tx, sql, utcnow
from service.store import DeliveryFacts, NewDelivery


class Outcome(StrEnum):
    """A stored delivery's outcome."""

    PROCESSED = "processed"  # applied (its words may still be superseded or rejected)
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
    # A legacy body has no time of its own: the instant inside its svix message id orders it.
    evidence: str | None = None


@dataclass(slots=True)
class Applied:
    """What applying an event recorded: one verdict per word about a connection."""

    moves: list[tuple[str, Verdict]] = field(default_factory=list)
    jobs: int = 0

    def add(self, connection_id: str, verdicts: Sequence[Verdict]) -> None:
        for verdict in verdicts:
            self.moves.append((connection_id, verdict))
            self.jobs += len(verdict.commands)


@dataclass(frozen=True, slots=True)
class IngestResult:
    disposition: Disposition
    outcome: Outcome
    applied: Applied


def new_delivery(*, message_id: str, timestamp: int, body: bytes, secret_id: str,
                 headers: dict[str, str], received_at: datetime | None = None) -> NewDelivery:
    return NewDelivery(message_id, timestamp, body, hashlib.sha256(body).hexdigest(), secret_id,
                       headers, received_at or utcnow())


def examine(body: bytes, *, message_id: str, timestamp: int) -> Examined:
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
    evidence = None
    if isinstance(event, ConnectionEvent) and event.legacy:
        evidence = message_instant(message_id, timestamp)
    return Examined(event, facts, evidence)


async def ingest(tx: Tx, delivery: NewDelivery, examined: Examined) -> IngestResult:
    """The unit of work for one delivery (see the module docstring for the order)."""
    now = utcnow()
    if not await store.insert_delivery(tx, delivery=delivery, facts=examined.facts):
        return await _stored_before(tx, delivery, examined, now=now)
    applied = Applied()
    if examined.event is not None:
        applied = await apply_event(tx, examined, delivery_id=delivery.message_id, now=now)
    return IngestResult(Disposition.STORED, Outcome(examined.facts.outcome), applied)


@dataclass(frozen=True, slots=True)
class Ingest(SetWork[IngestResult]):
    """:func:`ingest` as a unit of work; on PostgreSQL a batch of them goes at once."""

    delivery: NewDelivery
    examined: Examined

    async def __call__(self, tx: Tx) -> IngestResult:
        return await ingest(tx, self.delivery, self.examined)

    @classmethod
    async def run_at_once(cls, tx: Tx, works: Sequence[Ingest]) -> list[IngestResult | None]:
        if tx.dialect != "postgresql":
            return [None] * len(works)
        found = await batch.connection_events(
            tx, [(w.delivery, w.examined.facts, w.examined.event, w.examined.evidence)
                 for w in works])
        results: list[IngestResult | None] = []
        for work, result in zip(works, found, strict=True):
            if result is None:
                results.append(None)
            elif result.stored_outcome is not None:
                results.append(IngestResult(Disposition.DUPLICATE,
                                            Outcome(result.stored_outcome), Applied()))
            else:
                applied = Applied()
                applied.add(result.connection_id, result.verdicts)
                results.append(IngestResult(Disposition.STORED,
                                            Outcome(work.examined.facts.outcome), applied))
        return results


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
        applied = await apply_event(tx, examined, delivery_id=delivery.message_id, now=now)
    return IngestResult(Disposition.REPROCESSED, outcome, applied)


_STORED = sql("""
SELECT body, body_sha256, outcome, msg_timestamp FROM deliveries WHERE message_id = $1{lock}""")


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
    examined = examine(bytes(row["body"]), message_id=message_id,
                       timestamp=int(row["msg_timestamp"]))
    now = utcnow()
    await store.reprocess_delivery(tx, message_id=message_id, facts=examined.facts, now=now)
    applied = Applied()
    if examined.event is not None:
        applied = await apply_event(tx, examined, delivery_id=message_id, now=now)
    return Replayed(message_id, Outcome(row["outcome"]), Outcome(examined.facts.outcome), applied)


async def record_failure(tx: Tx, delivery: NewDelivery, examined: Examined, error: str) -> None:
    """After a rolled-back attempt: keep the delivery, marked failed, so a retry processes it."""
    await store.record_failure(tx, delivery=delivery, facts=examined.facts, error=error)


async def apply_event(tx: Tx, examined: Examined, *, delivery_id: str | None,
                      now: datetime) -> Applied:
    """Apply an event's effects (idempotent: applying it again records and moves nothing)."""
    event = examined.event
    applied = Applied()
    if isinstance(event, ConnectionEvent):
        word = word_of_event(event, delivery_id=delivery_id, evidence=examined.evidence)
        applied.add(event.connection.id, await store.apply_word(tx, word, now=now))
    elif isinstance(event, CompanyEvent):
        key = (order_key(State.DELETED, event.meta.generated, event.meta.event_id)
               if event.kind is CompanyEventKind.DELETED and event.meta.generated is not None
               else None)
        if key is not None:  # before any other lock (see store.delete_company)
            await store.lock_company(tx, company=event.company.id)
        await store.upsert_company(tx, company=event.company, event_time=event.meta.generated_at,
                                   now=now)
        if key is not None:
            for connection_id, verdict in await store.delete_company(
                    tx, company=event.company.id, key=key, now=now):
                applied.add(connection_id, [verdict])
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
