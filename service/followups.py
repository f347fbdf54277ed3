"""The follow-up jobs: the Codat calls a transition asks for, and what their answers change.

Each job calls Codat first, OUTSIDE any transaction; what Codat said is written in one short
transaction, the same one that marks the job done (see :data:`Effect`). Changes of state go
through the same transition function as webhooks (source ``reconcile``). Jobs are safe to run
again: Codat POSTs carry a key derived from the job id, and the history row of a reconcile is
unique per job.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from handlers import assess_readiness
from handlers.readiness import BILL_PAY_DATA_TYPES, READING
from schemas.commands import Cause, JobKind, Word
from schemas.events import ConnectionInfo, DataTypeRead
from schemas.order import instant_of, order_key
from schemas.platforms import BillPayMode
from schemas.state import ConnectionStatus, Source, State
from schemas.webhook import parse_datetime
from service import store
from service.codat import (
    CodatClient,
    CodatNotFound,
    CodatPermanent,
    CodatRetryable,
    Connection,
)
from service.db import Database, Tx, utcnow
from service.errors import PushFailed
from service.outbox import Job
from service.push import Pusher


@dataclass(frozen=True, slots=True)
class Drift:
    """Our view of a connection against Codat's."""

    company_id: str
    connection_id: str
    ours: str | None  # None: we did not know the connection
    codat: str  # "Deleted" when Codat no longer has it
    applied: bool = False

    @property
    def drifted(self) -> bool:
        return self.ours != self.codat


def _state_of(connection: Connection | None) -> State:
    if connection is None:
        return State.DELETED
    known = connection.known_status
    if known is None:
        raise CodatPermanent(f"Codat reports an unknown connection status {connection.status!r}")
    return State(known.value)


def connection_info(connection: Connection) -> ConnectionInfo:
    """What Codat says of a connection, as the store writes it."""
    return ConnectionInfo(
        id=connection.id, status=ConnectionStatus(_state_of(connection).value),
        platform_key=connection.integration_key, platform_name=connection.platform_name,
        source_type=connection.source_type, integration_id=connection.integration_id,
        source_id=connection.source_id, link_url=connection.link_url,
        created=_date(connection.created), last_sync=_date(connection.last_sync),
        errors=connection.data_connection_errors or [])


def codat_word(company_id: str, connection_id: str, connection: Connection | None, cause: Cause,
               *, source: Source, answered_at: datetime,
               expected: State | None = None) -> Word:
    """Codat's answer about a connection (None: it answered 404, so the connection is gone) as a
    word, true at ``answered_at``: it takes its place among the webhooks by that instant.
    ``expected`` stands in for a status Codat's answer does not name."""
    if connection is not None and connection.known_status is None and expected is not None:
        target, info = expected, None
    else:
        target = _state_of(connection)
        info = None if connection is None else connection_info(connection)
    key = order_key(target, instant_of(answered_at), cause.id)
    return Word(connection_id, company_id, target, key, source,
                Cause(cause.id, cause.type, None, answered_at, cause.reason), info)


def _date(value: str | None) -> Any:
    try:
        return parse_datetime(value)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class CodatView:
    """Codat's answer about one connection, as a word to record (source reconcile)."""

    word: Word
    only_drift: bool = False  # an answer that agrees with ours is not recorded

    @property
    def codat(self) -> str:
        return self.word.state.value

    async def record(self, tx: Tx) -> Drift:
        """Apply the word in ``tx``; report the drift it corrected."""
        company_id, connection_id = self.word.company_id, self.word.connection_id
        if self.only_drift:
            ours = await store.connection_state(tx, connection_id=connection_id)
            if ours is self.word.state:
                return Drift(company_id, connection_id, self.codat, self.codat)
        verdicts = await store.apply_word(tx, self.word, now=utcnow())
        if not verdicts:  # this very answer was applied before (a job run again)
            ours = await store.connection_state(tx, connection_id=connection_id)
            return Drift(company_id, connection_id, ours.value if ours else None, self.codat)
        last = verdicts[-1]
        before = last.from_state.value if last.from_state else None
        return Drift(company_id, connection_id, before, self.codat, applied=last.changed)


async def apply_codat_view(db: Database, *, company_id: str, connection_id: str,
                           connection: Connection | None, cause: Cause,
                           answered_at: datetime | None = None, apply: bool = True,
                           only_drift: bool = False) -> Drift:
    """Apply what Codat says of a connection (source reconcile); report the drift. With
    ``only_drift`` (an on-call sweep of many connections), an answer that agrees with ours is
    not recorded."""
    view = CodatView(codat_word(company_id, connection_id, connection, cause,
                                source=Source.RECONCILE, answered_at=answered_at or utcnow()),
                     only_drift=only_drift)
    if not apply:  # a dry run only reads: no lock
        ours = await db.read(lambda tx: store.connection_state(tx, connection_id=connection_id))
        return Drift(company_id, connection_id, ours.value if ours else None, view.codat)
    return await db.write(view.record)


Effect = Callable[[Tx], Awaitable[str]]
"""What a job's answers change, as a unit of work returning the job's summary. The worker
commits it in one transaction with the job's completion: a job's effect and its being done
are one commit (and one fsync on SQLite) instead of several."""


@dataclass(frozen=True, slots=True)
class Ran:
    """A job's calls made: their effect, and whether Codat answered any (a job that had no
    need to ask Codat says nothing of whether Codat is up)."""

    effect: Effect
    asked_codat: bool = True


class FollowUps:
    """Runs one outbox job against Codat: :meth:`run` makes the job's calls, outside any
    transaction, and returns the :data:`Effect` that records what they said (in :class:`Ran`)."""

    def __init__(self, *, db: Database, client: CodatClient, mode: BillPayMode,
                 pusher: Pusher | None = None) -> None:
        self._db = db
        self._client = client
        self._mode = mode
        self._pusher = pusher

    async def run(self, job: Job) -> Ran:
        """Call Codat for ``job``; return its effect. Raises CodatError subclasses to retry or
        fail (nothing is written then)."""
        if job.kind is JobKind.RECONCILE_CONNECTION:
            view = await self._view(job)

            async def reconciled(tx: Tx) -> str:
                drift = await view.record(tx)
                return f"Codat says {drift.codat}, we had {drift.ours}"
            return Ran(reconciled)
        if job.kind is JobKind.CONFIRM_CONNECTION:
            # The Linked word that queued this job was the connection's newest then; if the
            # connection is not Linked now, a newer word has moved it since (the newest word
            # wins, so only a newer one can), and that word queued what it needs: nothing to
            # confirm or prepare, and no Codat call spent of the daily quota.
            current = await self._db.read(
                lambda tx: store.connection_state(tx, connection_id=job.connection_id or ""))
            if current is not None and current is not State.LINKED:
                async def superseded(tx: Tx) -> str:
                    return f"{current.value} since it was queued; Codat not asked"
                return Ran(superseded, asked_codat=False)
            view = await self._view(job)
            if view.word.state is not State.LINKED:
                async def not_linked(tx: Tx) -> str:
                    await view.record(tx)
                    return f"not Linked at Codat ({view.codat}); nothing to prepare"
                return Ran(not_linked)
            # Codat says this connection is Linked: Bill Pay's data is read through it.
            readiness = await self._readiness(job, view.word.connection_id)

            async def confirmed(tx: Tx) -> str:
                await view.record(tx)
                return await readiness(tx)
            return Ran(confirmed)
        if job.kind is JobKind.REFRESH_READINESS:
            company_id = job.company_id or ""
            linked = await self._db.read(
                lambda tx: store.linked_connection_id(tx, company_id=company_id))
            # With no Linked connection there is no one to ask: Codat is not called.
            return Ran(await self._readiness(job, linked, refresh=False),
                       asked_codat=linked is not None)
        if job.kind is JobKind.PUSH_CHANGE:
            if self._pusher is None:
                raise PushFailed("this worker has no FEED_SUBSCRIPTIONS to push with")
            summary = await self._pusher.push(job.payload)

            async def pushed(tx: Tx) -> str:
                return summary
            return Ran(pushed, asked_codat=False)
        raise CodatPermanent(f"no follow-up is defined for job kind {job.kind}")

    async def _view(self, job: Job) -> CodatView:
        company_id, connection_id = job.company_id or "", job.connection_id or ""
        try:
            connection: Connection | None = await self._client.get_connection(company_id,
                                                                              connection_id)
        except CodatNotFound:
            connection = None  # a 404 is final: Codat deleted it
        # Per execution: a job run again fetches again, and that fresher answer is a new word.
        cause = Cause(f"job:{job.id}:{job.run}", job.kind.value, reason=f"outbox job {job.id}")
        return CodatView(codat_word(company_id, connection_id, connection, cause,
                                    source=Source.RECONCILE, answered_at=utcnow()))

    async def _readiness(self, job: Job, connection_id: str | None, *,
                         refresh: bool = True) -> Effect:
        """Ask Codat what Bill Pay needs, through the Linked ``connection_id`` (None: there
        is none, ask nothing); the effect records the answers and the company's readiness
        (not ready if, by the time it commits, the company has no Linked connection)."""
        company_id = job.company_id or ""
        missing_link = {"mode": self._mode.value, "missing": ["a Linked connection"]}
        reads: dict[str, str] = {}
        queued: list[str] = []
        if connection_id is None:
            ready, detail = False, missing_link
        else:
            try:
                if self._mode is BillPayMode.SYNC:
                    ready, detail = await self._sync_readiness(company_id, connection_id)
                else:
                    reads, queued = await self._async_reads(company_id, connection_id, job,
                                                            refresh)
                    ready, detail = False, {}  # from the statuses, in the transaction
            except CodatRetryable as exc:
                if exc.status != 409:
                    raise
                # Codat: no Linked connection (it moved since we looked). Its webhook follows.
                ready, detail = False, {**missing_link, "codat": str(exc)}
                connection_id = None
        through, answered = connection_id, (ready, detail)

        async def record(tx: Tx) -> str:
            now = utcnow()
            ready, detail = answered
            if through is not None and \
                    await store.linked_connection_id(tx, company_id=company_id) is None:
                ready, detail = False, missing_link  # unlinked meanwhile
            elif through is not None and self._mode is BillPayMode.ASYNC:
                for data_type, status in reads.items():
                    await store.record_read(tx, company_id=company_id,
                                            read=DataTypeRead(through, data_type, status),
                                            event_time=now, now=now)
                readiness = assess_readiness(
                    await store.data_type_statuses(tx, company_id=company_id))
                ready, detail = readiness.ready, {
                    "mode": "async", "missing": list(readiness.missing),
                    "failed": list(readiness.failed), "refreshQueued": queued}
            await store.set_readiness(tx, company_id=company_id, ready=ready, detail=detail,
                                      now=now)
            return f"billPayReady={ready}"
        return record

    async def _sync_readiness(self, company_id: str, connection_id: str,
                              ) -> tuple[bool, dict[str, Any]]:
        info = await self._client.company_information(company_id, connection_id)
        accounts = [a for a in await self._client.payment_bank_accounts(company_id, connection_id)
                    if a.status != "Archived"]  # bills cannot be paid from an archived account
        detail = {"mode": "sync", "companyName": info.company_name,
                  "baseCurrency": info.base_currency,
                  "bankAccounts": [{"id": a.id, "name": a.name, "currency": a.currency}
                                   for a in accounts],
                  "missing": [] if accounts else ["bankAccounts"]}
        return bool(accounts), detail

    async def _async_reads(self, company_id: str, connection_id: str, job: Job,
                           refresh: bool) -> tuple[dict[str, str], list[str]]:
        """Codat's read status of each data type Bill Pay needs; with ``refresh``, a read
        queued for each not read nor being read. Returns the statuses and the types queued."""
        statuses = await self._client.data_status(company_id)
        reads = {t: s.current_status for t, s in statuses.items() if t in BILL_PAY_DATA_TYPES}
        queued = []
        if refresh:
            for data_type in BILL_PAY_DATA_TYPES:
                status = reads.get(data_type)
                if status in READING or status == "Complete":
                    continue
                await self._client.refresh_data_type(
                    company_id, data_type, connection_id=connection_id,
                    # Per execution: Codat replays a cached 5xx to a reused key for 90
                    # minutes, and queueing a read twice is harmless.
                    idempotency_key=f"{job.id}:{data_type}:{job.run}")
                queued.append(data_type)
        return reads, queued
