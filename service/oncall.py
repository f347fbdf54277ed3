"""On-call operations behind the CLI: the same code paths as the service, never raw SQL here.

Every write takes an ``actor`` and a ``reason`` and leaves them behind (history rows and a log
line). Long operations work in small batches, each its own transaction, so an interrupted run
leaves consistent state and running it again simply carries on.
"""

from __future__ import annotations

import getpass
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from schemas.commands import Cause
from service import feed, outbox, queries, store, story
from service.codat import CodatClient, CodatNotFound
from service.db import Database, Tx, utcnow
from service.followups import Drift, apply_codat_view
from service.ingest import Replayed, replay
from service.logs import get_logger

log = get_logger("oncall")
MIN_DEDUPE_RETENTION = timedelta(days=30)  # longer than Codat's retry (~28 h) and replay windows


def actor() -> str:
    """Who is asking: CODAT_HOOKS_ACTOR, or the operating-system user."""
    return os.environ.get("CODAT_HOOKS_ACTOR") or getpass.getuser()


def trace(action: str, *, who: str, why: str, **fields: Any) -> None:
    log.info(f"on-call {action}", extra={"fields": {"actor": who, "reason": why, **fields}})


async def company_status(db: Database, company_id: str, *, history: int = 5,
                         timeline: int = 50) -> dict[str, Any] | None:
    """The company, its connections (status, since when, last history), its open jobs, why it
    is not ready for Bill Pay, and its newest ``timeline`` moves, deliveries and jobs."""
    async def work(tx: Tx) -> dict[str, Any] | None:
        company = await queries.get_company(tx, company_id)
        if company is None:
            return None
        for connection in company["dataConnections"]:
            connection["history"] = await queries.recent_history(tx, connection["id"],
                                                                 limit=history)
            state = "Deleted" if connection["deleted"] else connection["status"]
            connection["since"] = await queries.in_state_since(tx, connection["id"], state) \
                if state else None
        company["jobs"] = await outbox.company_jobs(tx, company_id=company_id)
        told = await story.read_story(tx, company_id, limit=timeline)
        if told is not None:  # the company page's story: why not ready, and the timeline
            company["whyNotReady"] = told.why_not_ready
            company["timeline"] = [{"at": e.at.isoformat().replace("+00:00", "Z"),
                                    "kind": e.kind, **e.data} for e in told.entries]
            company["commands"] = story.commands(company_id, told)
        return company
    return await db.read(work)


# --- replay ----------------------------------------------------------------------------------

async def deliveries_to_replay(db: Database, *, outcome: str | None, since: datetime,
                               batch: int = 200) -> AsyncIterator[dict[str, Any]]:
    """Stored deliveries matching the selection, oldest first, read a page at a time."""
    after: tuple[datetime, str] | None = None
    while True:
        page = await db.read(lambda tx, a=after: queries.list_deliveries(  # type: ignore[misc]
            tx, since=since, outcome=outcome, limit=batch, after=a))
        for item in page:
            yield item
        if len(page) < batch:
            return
        after = (page[-1]["_receivedAt"], page[-1]["messageId"])


async def replay_one(db: Database, message_id: str, *, who: str, why: str) -> Replayed:
    result = await db.write(lambda tx: replay(tx, message_id))
    trace("replay", who=who, why=why, message_id=message_id,
          before=result.before, after=result.after, moves=len(result.applied.moves))
    return result


# --- reconcile -------------------------------------------------------------------------------

@dataclass
class ReconcileReport:
    companies: int = 0
    drifts: list[Drift] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


async def reconcile_company(db: Database, client: CodatClient, company_id: str, *,
                            apply: bool, who: str, why: str, run_id: str) -> list[Drift]:
    """Compare our connections of a company with Codat's; with ``apply``, correct the drift."""
    ours = {c["id"]: c for c in await db.read(
        lambda tx: queries.company_connections(tx, company_id))}
    try:
        theirs = {c.id: c for c in await client.list_connections(company_id)}
    except CodatNotFound:
        theirs = {}  # Codat deleted the company, and with it every connection
    answered_at = utcnow()
    drifts = []
    for connection_id in sorted(set(ours) | set(theirs)):
        mine = ours.get(connection_id)
        if mine is not None and mine["deleted"] and connection_id not in theirs:
            continue  # deleted on both sides
        cause = Cause(f"reconcile:{run_id}", "reconcile", reason=f"reconcile by {who}: {why}")
        drift = await apply_codat_view(db, company_id=company_id, connection_id=connection_id,
                                       connection=theirs.get(connection_id), cause=cause,
                                       answered_at=answered_at, apply=apply, only_drift=True)
        if drift.drifted:
            drifts.append(drift)
            trace("reconcile", who=who, why=why, company_id=company_id,
                  connection_id=connection_id, ours=drift.ours, codat=drift.codat,
                  applied=drift.applied)
    return drifts


async def all_company_ids(db: Database, *, batch: int = 500) -> AsyncIterator[str]:
    after = ""
    while True:
        ids = await db.read(lambda tx, a=after: queries.company_ids(  # type: ignore[misc]
            tx, after=a, limit=batch))
        for company_id in ids:
            yield company_id
        if len(ids) < batch:
            return
        after = ids[-1]


# --- outbox and retention --------------------------------------------------------------------

async def retry_jobs(db: Database, *, job_id: str | None, who: str, why: str) -> list[str]:
    ids = await db.write(lambda tx: outbox.retry(tx, job_id=job_id, now=utcnow()))
    trace("outbox retry", who=who, why=why, jobs=ids)
    return ids


async def prune(db: Database, *, older_than: timedelta, keep_dedupe: timedelta, who: str,
                why: str, batch: int = 1000) -> AsyncIterator[tuple[str, int]]:
    """Drop bodies older than ``older_than``, then records older than ``keep_dedupe`` (at least
    30 days), a batch per transaction; yields (what, how many) after each batch."""
    keep_dedupe = max(keep_dedupe, MIN_DEDUPE_RETENTION, older_than)
    now = utcnow()
    trace("prune", who=who, why=why, older_than=str(older_than), keep_dedupe=str(keep_dedupe))
    # The feed keeps its changes as long as the delivery records: only below its horizon.
    horizon = await feed.Horizon().current(db)
    for what, before in (("bodies", now - older_than), ("records", now - keep_dedupe),
                         ("changes", now - keep_dedupe)):
        while True:
            done = await db.write(lambda tx, w=what, b=before: _prune_batch(  # type: ignore[misc]
                tx, w, b, batch, horizon))
            yield what, done
            if done < batch:
                break


async def _prune_batch(tx: Tx, what: str, before: datetime, batch: int, horizon: int) -> int:
    if what == "bodies":
        return await store.prune_bodies(tx, before=before, limit=batch)
    if what == "changes":
        return await feed.prune(tx, before=before, horizon=horizon, limit=batch, now=utcnow())
    return await store.forget_deliveries(tx, before=before, limit=batch)
