"""The outbox table: claiming due jobs under a lease, finishing, rescheduling, listing.

Several workers on one PostgreSQL database claim with ``FOR UPDATE SKIP LOCKED``, so no job runs
twice at once; a job whose worker died is claimed again once its lease has expired. SQLite has a
single writer, so its claim is atomic as it stands.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from schemas.commands import NOT_CODAT_JOBS_SQL, JobKind
from service.db import Row, Tx, as_dt, from_json, sql


class JobStatus:
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    DEAD = "dead"
    ALL = ("pending", "running", "done", "dead")


@dataclass(frozen=True, slots=True)
class Job:
    id: str
    kind: JobKind
    dedupe_key: str
    company_id: str | None
    connection_id: str | None
    payload: dict[str, Any]
    attempts: int  # including the one now running
    max_attempts: int
    run: str = ""  # unique to this execution (a retried job gets a new one)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter, never sooner than Codat's Retry-After."""

    base_seconds: float = 2.0
    max_seconds: float = 3600.0
    max_attempts: int = 8

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        backoff = min(self.max_seconds, self.base_seconds * 2 ** max(0, attempt - 1))
        return max(random.uniform(backoff / 2, backoff), retry_after or 0.0)


# The worker's attempt limit is written onto the job as it is claimed: the limit in force. A job
# of a sequence waits while an earlier one of it is pending or running; _CLAIM_KINDS limits the
# kinds (while Codat calls wait, only jobs that do not call Codat run: they have an index of
# their own, so that the backlog of Codat jobs is not walked for each claim).
# Due jobs and jobs whose lease expired are looked up apart, each in the order of the
# (status, next_attempt_at) index, so that a claim reads a few index entries whatever the
# backlog: one condition "pending and due OR running and expired" made both databases collect
# and sort every due job for each claim (2.5 ms with 5,700 pending, the drain quadratic).
_SEQUENCE_FREE = """(j.sequence IS NULL OR NOT EXISTS (
        SELECT 1 FROM outbox e WHERE e.sequence = j.sequence AND e.ordinal < j.ordinal
            AND e.status IN ('pending', 'running')))"""
_CLAIM_FROM = f"""
WITH due AS (
    SELECT j.id, j.next_attempt_at FROM outbox j
    WHERE j.status = 'pending' AND j.next_attempt_at <= $3{{kinds}} AND {_SEQUENCE_FREE}
    ORDER BY j.next_attempt_at, j.id LIMIT $4{{{{skip_locked}}}}),
expired AS (
    SELECT j.id, j.next_attempt_at FROM outbox j
    WHERE j.status = 'running' AND j.lease_until < $3{{kinds}} AND {_SEQUENCE_FREE}
    ORDER BY j.next_attempt_at, j.id LIMIT $4{{{{skip_locked}}}})
UPDATE outbox SET status = 'running', locked_by = $1, lease_until = $2, attempts = attempts + 1,
    max_attempts = $5, updated_at = $3
WHERE id IN (SELECT id FROM (SELECT id, next_attempt_at FROM due
                             UNION ALL SELECT id, next_attempt_at FROM expired) AS candidates
             ORDER BY next_attempt_at, id LIMIT $4)
RETURNING id, kind, dedupe_key, company_id, connection_id, payload, attempts, max_attempts"""
_CLAIM = sql(_CLAIM_FROM.format(kinds=""))
_CLAIM_KINDS = sql(_CLAIM_FROM.format(kinds=f" AND j.{NOT_CODAT_JOBS_SQL}"))

_RENEW = sql("""
UPDATE outbox SET lease_until = $3 WHERE id = $1 AND locked_by = $2 AND status = 'running'
RETURNING id""")

_FINISH = sql("""
UPDATE outbox SET status = $3, last_error = $4, lease_until = NULL, locked_by = NULL,
    updated_at = $5
WHERE id = $1 AND locked_by = $2 AND status = 'running'""")

_RESCHEDULE = sql("""
UPDATE outbox SET status = 'pending', next_attempt_at = $3, last_error = $4, lease_until = NULL,
    locked_by = NULL, updated_at = $5
WHERE id = $1 AND locked_by = $2 AND status = 'running'""")

_RELEASE = sql("""
UPDATE outbox SET status = 'pending', attempts = attempts - 1, lease_until = NULL,
    locked_by = NULL, updated_at = $3
WHERE id = $1 AND locked_by = $2 AND status = 'running'""")

_RETRY = sql("""
UPDATE outbox SET status = 'pending', attempts = 0, next_attempt_at = $2, lease_until = NULL,
    locked_by = NULL, updated_at = $2
WHERE id = $1 AND status = 'dead'
RETURNING id""")

_RETRY_ALL_DEAD = sql("""
UPDATE outbox SET status = 'pending', attempts = 0, next_attempt_at = $1, lease_until = NULL,
    locked_by = NULL, updated_at = $1
WHERE status = 'dead'
RETURNING id""")

_COLUMNS = """id, kind, dedupe_key, company_id, connection_id, payload, status, attempts,
    max_attempts, next_attempt_at, lease_until, locked_by, last_error, created_at, updated_at"""
_LIST = sql(f"SELECT {_COLUMNS} FROM outbox WHERE id > $1 ORDER BY id LIMIT $2")
_LIST_BY_STATUS = sql(
    f"SELECT {_COLUMNS} FROM outbox WHERE status = $1 AND id > $2 ORDER BY id LIMIT $3")
_COMPANY_JOBS = sql(f"""
SELECT {_COLUMNS} FROM outbox WHERE company_id = $1 AND status IN ('pending', 'running', 'dead')
ORDER BY created_at""")
_COUNTS = sql("SELECT status, COUNT(*) AS n FROM outbox GROUP BY status")
_OLDEST_DUE = sql(
    "SELECT MIN(next_attempt_at) FROM outbox WHERE status = 'pending' AND next_attempt_at <= $1")
_PAUSED_UNTIL = sql("SELECT paused_until FROM rate_limit WHERE id = 1")


def _job(row: Row) -> Job:
    return Job(row["id"], JobKind(row["kind"]), row["dedupe_key"], row["company_id"],
               row["connection_id"], from_json(row["payload"]) or {}, row["attempts"],
               row["max_attempts"], uuid.uuid4().hex[:12])


async def claim(tx: Tx, *, worker_id: str, now: datetime, lease: timedelta,
                limit: int = 1, max_attempts: int = 8, codat: bool = True) -> list[Job]:
    """Take up to ``limit`` due jobs (or jobs whose lease expired) for ``worker_id``; without
    ``codat``, only jobs that do not call Codat."""
    rows = await tx.fetch(_CLAIM if codat else _CLAIM_KINDS, worker_id, now + lease, now, limit,
                          max_attempts)
    return [_job(r) for r in rows]


async def renew(tx: Tx, *, job: Job, worker_id: str, until: datetime) -> bool:
    """Extend the lease of a job still held; False if it is no longer ours."""
    return await tx.fetchrow(_RENEW, job.id, worker_id, until) is not None


async def finish(tx: Tx, *, job: Job, worker_id: str, status: str, error: str | None,
                 now: datetime) -> None:
    await tx.execute(_FINISH, job.id, worker_id, status, error, now)


async def reschedule(tx: Tx, *, job: Job, worker_id: str, at: datetime, error: str,
                     now: datetime) -> None:
    await tx.execute(_RESCHEDULE, job.id, worker_id, at, error, now)


async def release(tx: Tx, *, job: Job, worker_id: str, now: datetime) -> None:
    """Give a job back untouched (the worker is stopping before it could run it)."""
    await tx.execute(_RELEASE, job.id, worker_id, now)


async def retry(tx: Tx, *, job_id: str | None, now: datetime) -> list[str]:
    """Make a dead job (or, with ``job_id=None``, every dead job) pending again."""
    rows = await (tx.fetch(_RETRY, job_id, now) if job_id else tx.fetch(_RETRY_ALL_DEAD, now))
    return [r["id"] for r in rows]


def job_json(row: Row) -> dict[str, Any]:
    def iso(value: Any) -> str | None:
        moment = as_dt(value)
        return None if moment is None else moment.isoformat().replace("+00:00", "Z")
    return {
        "id": row["id"], "kind": row["kind"], "dedupeKey": row["dedupe_key"],
        "companyId": row["company_id"], "connectionId": row["connection_id"],
        "payload": from_json(row["payload"]) or {}, "status": row["status"],
        "attempts": row["attempts"], "maxAttempts": row["max_attempts"],
        "nextAttemptAt": iso(row["next_attempt_at"]), "leaseUntil": iso(row["lease_until"]),
        "lockedBy": row["locked_by"], "lastError": row["last_error"],
        "createdAt": iso(row["created_at"]), "updatedAt": iso(row["updated_at"]),
    }


async def list_jobs(tx: Tx, *, status: str | None, after: str, limit: int) -> list[dict[str, Any]]:
    rows = await (tx.fetch(_LIST_BY_STATUS, status, after, limit) if status
                  else tx.fetch(_LIST, after, limit))
    return [job_json(r) for r in rows]


async def company_jobs(tx: Tx, *, company_id: str) -> list[dict[str, Any]]:
    return [job_json(r) for r in await tx.fetch(_COMPANY_JOBS, company_id)]


async def counts(tx: Tx, *, now: datetime) -> tuple[dict[str, int], datetime | None]:
    """Jobs by status, and the due time of the oldest pending job that is due."""
    by_status = {status: 0 for status in JobStatus.ALL}
    for row in await tx.fetch(_COUNTS):
        by_status[row["status"]] = int(row["n"])
    return by_status, as_dt(await tx.fetchval(_OLDEST_DUE, now))


async def paused_until(tx: Tx) -> datetime | None:
    """Until when Codat's rate limit pauses every call (None: not paused)."""
    return as_dt(await tx.fetchval(_PAUSED_UNTIL))
