"""The outbox worker: claims due jobs, runs them, and retries, backs off or gives up.

Runs as its own process (``codat-hooks worker``) or as a task inside ``codat-hooks serve``.
A stop request lets the running job finish (or, if it cannot within the grace period, gives it
back to the outbox); a worker killed outright leaves its job to be claimed again once the lease
expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import traceback
from datetime import timedelta

from schemas.commands import CODAT_JOBS
from service import outbox, push
from service.codat import CodatNotFound, CodatPermanent, CodatRateLimited, CodatRetryable
from service.db import Database, Tx, utcnow
from service.errors import DatabaseUnavailable, Retryable
from service.feed import Horizon
from service.followups import FollowUps
from service.logs import get_logger
from service.metrics import Metrics
from service.outbox import Job, JobStatus, RetryPolicy
from service.pacing import Breaker, Pressure
from service.settings import Subscription

log = get_logger("worker")


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Worker:
    """One worker; several may run against one PostgreSQL database."""

    def __init__(self, *, db: Database, followups: FollowUps, policy: RetryPolicy,
                 lease_seconds: float, poll_seconds: float, metrics: Metrics | None = None,
                 worker_id: str | None = None,
                 subscriptions: tuple[Subscription, ...] = (),
                 pressure: Pressure | None = None, breaker: Breaker | None = None,
                 concurrency: int = 1) -> None:
        self._db = db
        self._pressure = pressure  # the receiver's, when this worker shares its process
        self._breaker = breaker or Breaker()
        self._subscriptions = subscriptions
        self._horizon = Horizon()
        self._handed = -1  # the feed's horizon when changes were last handed to subscribers
        self._followups = followups
        self._policy = policy
        self._lease = timedelta(seconds=lease_seconds)
        self._poll = poll_seconds
        self._metrics = metrics
        self.worker_id = worker_id or default_worker_id()
        self._concurrency = concurrency
        self.heartbeat = time.monotonic()  # the last time the loop went round

    async def run_once(self) -> int:
        """Hand new changes to the push subscribers; claim up to ``concurrency`` due jobs and
        run them at once (their Codat calls overlap, their writes share commits); return how
        many ran."""
        if self._subscriptions:
            horizon = await self._horizon.current(self._db, patience=0)
            if horizon != self._handed:
                await push.fan_out(self._db, self._subscriptions, horizon,
                                   max_attempts=self._policy.max_attempts)
                self._handed = horizon
        now = utcnow()
        paused = await self._db.read(outbox.paused_until)
        # While Codat's quota is used up, or Codat keeps failing, Codat calls wait; pushes do not.
        codat = (paused is None or paused <= now) and not self._breaker.open
        if not codat and not self._subscriptions:
            # Nothing it could run: without subscriptions every job calls Codat. Not even a
            # claim (it would walk the whole backlog of Codat jobs to find none, each poll).
            return 0
        jobs = await self._db.write(lambda tx: outbox.claim(
            tx, worker_id=self.worker_id, now=now, lease=self._lease,
            limit=1 if self._breaker.probing else self._concurrency,
            max_attempts=self._policy.max_attempts, codat=codat))
        # Each runs to its end even if another fails (say, the database went away): none is
        # left running behind the loop's back.
        for outcome in await asyncio.gather(*(self._execute(job) for job in jobs),
                                            return_exceptions=True):
            if isinstance(outcome, BaseException):
                raise outcome
        return len(jobs)

    async def run(self, stop: asyncio.Event) -> None:
        """Work until ``stop`` is set, between jobs."""
        log.info("worker started", extra={"fields": {"worker_id": self.worker_id}})
        while not stop.is_set():
            self.heartbeat = time.monotonic()
            if self._metrics is not None:
                self._metrics.worker_heartbeat.labels(self.worker_id).set(time.time())
            started = time.monotonic()
            try:
                ran = await self.run_once()
            except DatabaseUnavailable as exc:
                log.warning("database unavailable", extra={"fields": {"error": str(exc)}})
                ran = 0
            # Deliveries come first: while they flow, jobs take only a small share of the time
            # (see service/pacing.py: the receiver tells an embedded worker; a standalone one
            # reads it from the database).
            took = time.monotonic() - started
            if ran and self._pressure is not None:
                with contextlib.suppress(DatabaseUnavailable):
                    await self._pressure.refresh()
            pause = self._poll if not ran else (
                0.0 if self._pressure is None else self._pressure.pause_after(took))
            if pause:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), pause)
        if self._metrics is not None:  # a stopped worker has no heartbeat to report
            with contextlib.suppress(KeyError):
                self._metrics.worker_heartbeat.remove(self.worker_id)
        log.info("worker stopped", extra={"fields": {"worker_id": self.worker_id}})

    async def _release(self, job: Job) -> None:
        """Give a running job back (used when a stop could not wait for it)."""
        await self._db.write(lambda tx: outbox.release(
            tx, job=job, worker_id=self.worker_id, now=utcnow()))

    async def _execute(self, job: Job) -> None:
        started = time.perf_counter()
        retry_after: float | None = None
        renewal = asyncio.create_task(self._keep_lease(job))
        try:
            ran = await self._followups.run(job)  # Codat's calls, outside any transaction

            async def done(tx: Tx) -> str:  # what they said, and the job done, in one commit
                summary = await ran.effect(tx)
                await outbox.finish(tx, job=job, worker_id=self.worker_id,
                                    status=JobStatus.DONE, error=None, now=utcnow())
                return summary
            summary = await self._db.write(done)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await self._release(job)
            raise
        except Retryable as exc:
            error, retryable, retry_after = str(exc), True, exc.retry_after
            self._judge_codat(job, exc)
        except (CodatNotFound, CodatPermanent) as exc:
            error, retryable = str(exc), False
            self._judge_codat(job, None)  # Codat answered: it is up
        except Exception as exc:  # our own bug or a database hiccup: retry, then give up
            error = "".join(traceback.format_exception_only(exc)).strip()
            retryable = True
        else:
            if ran.asked_codat:
                self._judge_codat(job, None)
            self._log(job, "done", started, summary=summary)
            return
        finally:
            renewal.cancel()
        if retryable and job.attempts < job.max_attempts:
            delay = self._policy.delay(job.attempts, retry_after)
            await self._db.write(lambda tx: outbox.reschedule(
                tx, job=job, worker_id=self.worker_id, at=utcnow() + timedelta(seconds=delay),
                error=error, now=utcnow()))
            self._log(job, "retry", started, error=error, retry_in=round(delay, 3))
        else:
            await self._finish(job, JobStatus.DEAD, error)
            self._log(job, "dead", started, error=error)

    def _judge_codat(self, job: Job, failure: Retryable | None) -> None:
        """Tell the breaker what a Codat job said of Codat."""
        if job.kind not in CODAT_JOBS:
            return
        down = isinstance(failure, CodatRetryable) and not isinstance(failure, CodatRateLimited) \
            and (failure.status is None or failure.status >= 500)
        if down:
            self._breaker.failed()
        elif failure is None:
            self._breaker.succeeded()
        if self._metrics is not None:
            self._metrics.codat_circuit_open.set(1 if self._breaker.open else 0)

    async def _keep_lease(self, job: Job) -> None:
        # A job may outlast its lease (several Codat calls, each up to its timeout); renewing it
        # at a third of the lease keeps another worker from taking it while this one is alive.
        while True:
            await asyncio.sleep(self._lease.total_seconds() / 3)
            with contextlib.suppress(DatabaseUnavailable):
                await self._db.write(lambda tx: outbox.renew(
                    tx, job=job, worker_id=self.worker_id, until=utcnow() + self._lease))

    async def _finish(self, job: Job, status: str, error: str | None) -> None:
        await self._db.write(lambda tx: outbox.finish(
            tx, job=job, worker_id=self.worker_id, status=status, error=error, now=utcnow()))

    def _log(self, job: Job, result: str, started: float, **fields: object) -> None:
        if self._metrics is not None:
            self._metrics.job_runs.labels(job.kind.value, result).inc()
        level = log.warning if result == "dead" else log.info
        level("follow-up job", extra={"fields": {
            "job_id": job.id, "kind": job.kind.value, "company_id": job.company_id,
            "connection_id": job.connection_id, "attempt": job.attempts, "outcome": result,
            "duration_ms": round((time.perf_counter() - started) * 1000, 3), **fields}})
