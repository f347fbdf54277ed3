"""The outbox worker end to end, on SQLite and PostgreSQL: follow-up jobs against the sandbox
Codat on a real loopback port, with its faults: Retry-After, backoff, dead jobs and their retry,
timeouts, final 404s, Codat's rate-limit webhooks, rejected moves, two workers on one database,
and a worker killed while it holds a job.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from schemas.commands import Command, JobKind
from service import store
from service.app import build_worker, codat_client
from service.cli import main as cli
from service.db import PostgresDatabase, Tx, utcnow
from service.metrics import Metrics
from tests.conftest import (
    allow_job_completion,
    refuse_job_completion,
    refuse_job_update,
    truncate_postgres,
)
from tests.factories import SECRET, company_body, connection_body, new_id
from tests.flow import API_KEY, BILL_PAY_TYPES, Flow, codat_event, eventually, flow, parse_time

CLOCK_SLACK = timedelta(milliseconds=5)  # the sandbox logs call times to the millisecond


def connection_path(company_id: str, connection_id: str) -> str:
    return f"/companies/{company_id}/connections/{connection_id}"


async def linking_with_fault(f: Flow, **fault: Any) -> tuple[str, str, str]:
    """A connection the SMB authorizes while Codat's GET of it has ``fault``; returns the
    company id, the connection id and the Codat path the confirm job will GET."""
    company_id = await f.create_company()
    connection = await f.create_connection(company_id)
    path = connection_path(company_id, connection["id"])
    await f.fault(f"^{re.escape(path)}$", method="GET", **fault)
    authorized = await f.authorize(connection["linkUrl"])
    assert authorized.status_code == 200
    return company_id, connection["id"], path


async def confirm_job(f: Flow, connection_id: str, **expected: Any) -> dict[str, Any]:
    """The connection's confirm job, once it matches ``expected`` (camelCase fields)."""
    async def found() -> dict[str, Any] | None:
        for job in await f.jobs():
            if job["kind"] == "confirm_connection" and job["connectionId"] == connection_id \
                    and all(job[k] == v for k, v in expected.items()):
                return job
        return None
    job: dict[str, Any] = await eventually(found, timeout=8,
                                           what=f"a confirm job with {expected}")
    return job


async def reconcile_queued(f: Flow) -> tuple[str, str, Command]:
    """A connection Linked at Codat but not yet here (its webhook held back), and a reconcile
    job queued for it: (company id, connection id, the job's command)."""
    company_id = await f.create_company()
    connection_id = (await f.create_connection(company_id))["id"]
    await f.delivered(2)
    await f.control("/webhooks/pause")
    await f.smb("authorize", company_id, connection_id)
    command = Command(JobKind.RECONCILE_CONNECTION, f"reconcile:{connection_id}:test",
                      company_id, connection_id)

    async def enqueue(tx: Tx) -> None:
        await store.enqueue(tx, commands=[command], now=utcnow())
    await f.db.write(enqueue)
    return company_id, connection_id, command


def call_times(calls: list[dict[str, Any]]) -> list[datetime]:
    return [parse_time(c["at"]) for c in calls]


def iso_ms(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def ms(moment: datetime) -> datetime:
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


# --- retries ---------------------------------------------------------------------------------

async def test_a_429_is_not_retried_sooner_than_its_retry_after(database_url: str) -> None:
    async with flow(database_url) as f:
        _, connection_id, path = await linking_with_fault(f, status=429, retry_after=1)
        waiting = await confirm_job(f, connection_id, status="pending", attempts=1)
        first = parse_time((await f.calls("GET", path))[0]["at"])
        assert "429" in waiting["lastError"]
        # The backoff alone would say 25-50 ms; Codat said a second.
        assert parse_time(waiting["nextAttemptAt"]) >= first + timedelta(seconds=1) - CLOCK_SLACK
        done = await confirm_job(f, connection_id, status="done")
        assert done["attempts"] == 2 and done["lastError"] is None
        calls = await f.calls("GET", path)
        assert [c["status"] for c in calls] == [429, 200]
        second = parse_time(calls[1]["at"])
        assert second - first >= timedelta(seconds=1) - CLOCK_SLACK
        assert second >= parse_time(waiting["nextAttemptAt"]) - CLOCK_SLACK


async def test_a_burst_of_5xx_is_retried_with_growing_backoff_then_done(
        database_url: str) -> None:
    base = 0.25
    async with flow(database_url, outbox_backoff_base_seconds=base) as f:
        company_id = await f.create_company()
        connection = await f.create_connection(company_id)
        path = connection_path(company_id, connection["id"])
        for status in (500, 503, 500):  # rules are used up in the order they were added
            await f.fault(f"^{re.escape(path)}$", method="GET", status=status)
        await f.authorize(connection["linkUrl"])
        done = await confirm_job(f, connection["id"], status="done")
        assert done["attempts"] == 4
        calls = await f.calls("GET", path)
        assert [c["status"] for c in calls] == [500, 503, 500, 200]
        times = call_times(calls)
        gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
        # Attempt n waits between half and all of base * 2^(n-1): never less than the half.
        for attempt, gap in enumerate(gaps, start=1):
            assert gap >= base * 2 ** (attempt - 1) / 2 - 0.005, gaps
        assert gaps[2] > gaps[0], gaps


async def _retry_dead_with_the_cli(database_url: str) -> str:
    """``codat-hooks outbox retry --dead --apply --reason ...``, run as on-call would (in a
    thread: the CLI runs its own event loop)."""
    result = await asyncio.to_thread(
        CliRunner().invoke, cli, ["outbox", "retry", "--dead", "--apply", "--reason",
                                  "Codat is back"],
        env={"DATABASE_URL": database_url, "CODAT_HOOKS_ACTOR": "on-call"})
    assert result.exit_code == 0, result.output
    return result.output


async def test_a_persistent_5xx_makes_the_job_dead_until_on_call_retries_it(
        database_url: str) -> None:
    async with flow(database_url, outbox_backoff_base_seconds=0.01) as f:
        _, connection_id, path = await linking_with_fault(f, status=503, count=100)
        dead = await confirm_job(f, connection_id, status="dead")
        assert dead["attempts"] == dead["maxAttempts"]
        assert "answered 503" in dead["lastError"]
        assert len(await f.calls("GET", path)) == dead["attempts"]
        await asyncio.sleep(0.2)  # a dead job is left alone
        assert len(await f.calls("GET", path)) == dead["attempts"]

        await f.clear_faults()
        output = await _retry_dead_with_the_cli(database_url)
        assert f"1 job(s) pending again: {dead['id']}" in output
        done = await confirm_job(f, connection_id, status="done")
        assert done["id"] == dead["id"] and done["attempts"] == 1
        assert done["lastError"] is None
        assert (await f.calls("GET", path))[-1]["status"] == 200


async def test_outbox_max_attempts_bounds_the_attempts(database_url: str) -> None:
    """OUTBOX_MAX_ATTEMPTS is the limit in force (it was once ignored for a default of 8)."""
    async with flow(database_url, outbox_max_attempts=2, outbox_backoff_base_seconds=0.01) as f:
        _, connection_id, path = await linking_with_fault(f, status=500, count=100)
        dead = await confirm_job(f, connection_id, status="dead")
        assert (dead["attempts"], dead["maxAttempts"]) == (2, 2)
        assert "answered 500" in dead["lastError"]
        assert len(await f.calls("GET", path)) == 2


async def test_a_job_that_outlives_its_lease_does_not_run_twice_at_once(
        database_url: str) -> None:
    """A live worker keeps its job: its lease is renewed while a slow Codat call runs."""
    async with flow(database_url, worker_enabled=False, outbox_lease_seconds=0.5) as f:
        _, connection_id, path = await linking_with_fault(f, delay=1.5)
        await confirm_job(f, connection_id, status="pending")
        workers = [build_worker(f.settings, f.db, f.app.state.codat, worker_id=name)
                   for name in ("worker-1", "worker-2")]
        stop = asyncio.Event()
        tasks = [asyncio.create_task(w.run(stop)) for w in workers]
        try:
            done = await confirm_job(f, connection_id, status="done")
        finally:
            stop.set()
            await asyncio.gather(*tasks)
        assert len(await f.calls("GET", path)) == 1  # Codat was asked once...
        assert done["attempts"] == 1  # ...by the one worker that held the job


async def test_a_worker_runs_the_jobs_it_claims_at_once_each_exactly_once(
        database_url: str) -> None:
    async with flow(database_url, worker_enabled=False, worker_concurrency=3) as f:
        company_id = await f.create_company()
        connections = [(await f.create_connection(company_id))["id"] for _ in range(4)]
        paths = [connection_path(company_id, c) for c in connections]
        for path in paths:
            await f.fault(f"^{re.escape(path)}$", method="GET", delay=2.0)
        for n, connection_id in enumerate(connections):
            command = Command(JobKind.RECONCILE_CONNECTION, f"reconcile:{connection_id}:test",
                              company_id, connection_id)

            async def enqueue(tx: Tx, command: Command = command, n: int = n) -> None:
                await store.enqueue(tx, commands=[command],
                                    now=utcnow() - timedelta(seconds=10 - n))
            await f.db.write(enqueue)
        worker = build_worker(f.settings, f.db, f.app.state.codat)
        batch = asyncio.create_task(worker.run_once())

        async def three_in_flight() -> list[str]:
            waiting = [p for p in paths
                       if any(c["status"] is None for c in await f.calls("GET", p))]
            return waiting if len(waiting) == 3 else []
        # The three oldest jobs' Codat calls (2 s each) wait at the same moment: they overlap.
        assert await eventually(three_in_flight, timeout=1.8,
                                what="three calls in flight at once") == paths[:3]
        assert await batch == 3
        assert await worker.run_once() == 1  # the fourth, in the next batch
        assert await worker.run_once() == 0
        for connection_id, path in zip(connections, paths, strict=True):
            [job] = [j for j in await f.jobs() if j["connectionId"] == connection_id]
            assert (job["status"], job["attempts"]) == ("done", 1)
            assert len(await f.calls("GET", path)) == 1


async def test_a_job_that_fails_leaves_the_others_of_its_batch_to_finish_first(
        database_url: str) -> None:
    # One job of a batch cannot even be rescheduled (the database refuses it); the batch's
    # other job, whose Codat call is slower, still runs to its end before the worker reports
    # the failure: no job is left running behind the worker's loop.
    async with flow(database_url, worker_enabled=False, worker_concurrency=2) as f:
        company_id = await f.create_company()
        failing, slow = [(await f.create_connection(company_id))["id"] for _ in range(2)]
        await f.fault(f"^{re.escape(connection_path(company_id, failing))}$", method="GET",
                      status=500)
        await f.fault(f"^{re.escape(connection_path(company_id, slow))}$", method="GET",
                      delay=1.0)
        for connection_id in (failing, slow):
            command = Command(JobKind.RECONCILE_CONNECTION, f"reconcile:{connection_id}:test",
                              company_id, connection_id)

            async def enqueue(tx: Tx, command: Command = command) -> None:
                await store.enqueue(tx, commands=[command], now=utcnow() - timedelta(seconds=5))
            await f.db.write(enqueue)
        worker = build_worker(f.settings, f.db, f.app.state.codat)
        await refuse_job_update(f.db, when=f"NEW.status = 'pending' AND "
                                           f"NEW.connection_id = '{failing}'",
                                message="injected failure to reschedule")
        try:
            with pytest.raises(Exception, match="injected failure to reschedule"):
                await worker.run_once()
            jobs = {j["connectionId"]: j for j in await f.jobs()}
        finally:
            await allow_job_completion(f.db)
        assert jobs[slow]["status"] == "done"  # finished before the failure was raised
        assert jobs[failing]["status"] == "running"  # its lease expires: it is claimed again


async def test_a_jobs_effect_commits_only_with_its_completion(database_url: str) -> None:
    async with flow(database_url, worker_enabled=False, outbox_backoff_base_seconds=0.05) as f:
        _, connection_id, command = await reconcile_queued(f)

        async def reconcile() -> dict[str, Any]:
            [job] = [j for j in await f.jobs() if j["dedupeKey"] == command.dedupe_key]
            return job
        worker = build_worker(f.settings, f.db, f.app.state.codat)

        await refuse_job_completion(f.db)  # the job cannot be marked done...
        try:
            await worker.run_once()
        finally:
            await allow_job_completion(f.db)
        job = await reconcile()
        assert (job["status"], job["attempts"]) == ("pending", 1)
        assert "injected failure to finish" in job["lastError"]
        # ...so nothing it learned was kept: Codat's word waits for the run that is done.
        assert (await f.connection(connection_id))["status"] == "PendingAuth"
        assert not [h for h in await f.history(connection_id) if h["source"] == "reconcile"]

        await asyncio.sleep(0.2)  # past the backoff
        while await worker.run_once():
            pass
        job = await reconcile()
        assert (job["status"], job["attempts"]) == ("done", 2)
        assert (await f.connection(connection_id))["status"] == "Linked"
        applied = [h for h in await f.history(connection_id)
                   if h["eventId"].startswith(f"job:{job['id']}:")]
        assert [(h["fromState"], h["toState"]) for h in applied] == [("PendingAuth", "Linked")]


async def test_a_confirm_whose_connection_moved_on_asks_codat_nothing(
        database_url: str) -> None:
    async with flow(database_url, worker_enabled=False) as f:
        company_id = await f.create_company()
        connection = await f.create_connection(company_id)
        connection_id = connection["id"]
        assert (await f.authorize(connection["linkUrl"])).status_code == 200
        await confirm_job(f, connection_id, status="pending")  # Linked here, not yet confirmed
        await f.smb("deauthorize", company_id, connection_id)  # then a newer word
        await f.until_status(connection_id, "Deauthorized")
        worker = build_worker(f.settings, f.db, f.app.state.codat)
        while await worker.run_once():
            pass
        done = await confirm_job(f, connection_id, status="done")
        assert done["attempts"] == 1
        # Nothing to confirm: Codat was not asked (its daily quota is not spent on it).
        assert await f.calls("GET", connection_path(company_id, connection_id)) == []
        assert (await f.connection(connection_id))["status"] == "Deauthorized"
        assert not [h for h in await f.history(connection_id) if h["source"] == "reconcile"]


async def test_a_codat_answer_slower_than_the_timeout_is_retried_and_webhooks_stay_fast(
        database_url: str) -> None:
    async with flow(database_url, codat_timeout_seconds=0.6,
                    outbox_backoff_base_seconds=0.3) as f:
        _, connection_id, path = await linking_with_fault(f, delay=1.2)

        async def in_flight() -> bool:
            return any(c["status"] is None for c in await f.calls("GET", path))
        await eventually(in_flight, what="the worker's call to be waiting on Codat")
        assert (await confirm_job(f, connection_id))["status"] == "running"
        # The worker is stuck on Codat; a delivery is stored and answered as fast as ever.
        body = company_body("company.created", company_id=new_id(), generated=utcnow())
        started = time.perf_counter()
        response = await f.deliver(body)
        took = time.perf_counter() - started
        assert response.status_code == 200, response.text
        assert took < 0.3, took
        assert (await confirm_job(f, connection_id))["status"] == "running"

        waiting = await confirm_job(f, connection_id, status="pending", attempts=1)
        assert "timed out" in waiting["lastError"]
        done = await confirm_job(f, connection_id, status="done")
        assert done["attempts"] == 2
        assert [c["status"] for c in await f.calls("GET", path)][1] == 200


async def test_a_404_from_codat_is_final_and_marks_the_connection_deleted(
        database_url: str) -> None:
    async with flow(database_url) as f:
        # A connection we first hear of when it is already gone from Codat.
        company_id, connection_id = new_id(), new_id()
        body = connection_body("connection.connected", company_id=company_id,
                               connection_id=connection_id, status="Linked",
                               generated=utcnow())
        assert (await f.deliver(body)).status_code == 200
        jobs = await f.settled({"confirm_connection", "reconcile_connection"})
        assert all((j["status"], j["attempts"], j["lastError"]) == ("done", 1, None)
                   for j in jobs), jobs
        state = await f.connection(connection_id)
        assert state["deleted"] is True and state["deletedAt"] is not None
        reconciled = [h for h in await f.history(connection_id) if h["source"] == "reconcile"]
        # Each job's 404 is a word of Codat's: the first recorded deletes it, the second agrees
        # (the jobs run at once: answered first but recorded second, it is the older word).
        first, second = [(h["fromState"], h["toState"], h["result"]) for h in reconciled]
        assert first == ("Linked", "Deleted", "applied")
        assert second[:2] == ("Deleted", "Deleted")
        assert second[2] in {"applied", "superseded"}
        path = connection_path(company_id, connection_id)
        calls = await f.calls("GET", path)
        assert [c["status"] for c in calls] == [404] * len(jobs)
        await asyncio.sleep(0.2)  # nothing is retried
        assert len(await f.calls("GET", path)) == len(jobs)


async def test_a_rejected_reconcile_does_not_queue_reconcile_after_reconcile(
        database_url: str) -> None:
    async with flow(database_url) as f:
        company_id, connection_id, path = await linking_with_fault(f, status=404)

        async def deleted() -> bool:
            return bool((await f.connection(connection_id))["deleted"])
        await eventually(deleted, what="the one 404 to mark the connection Deleted")
        # Codat still has it: the SMB revokes access, and Codat says so.
        await f.smb("deauthorize", company_id, connection_id)

        async def reconciled() -> bool:
            return any(j["kind"] == "reconcile_connection" and j["status"] == "done"
                       for j in await f.jobs())
        await eventually(reconciled, what="the reconcile the rejected webhook queued")
        await asyncio.sleep(0.5)  # time for a chain to show
        reconciles = [j for j in await f.jobs() if j["kind"] == "reconcile_connection"]
        assert len(reconciles) == 1, f"{len(reconciles)} reconcile jobs"
        assert len(await f.calls("GET", path)) == 2  # the confirm's 404, the reconcile's GET


# --- Codat's rate limit ----------------------------------------------------------------------

async def _authorize(f: Flow, connection: dict[str, Any]) -> str:
    """The SMB authorizes on the Link page (Codat's, not ours: our pause does not apply)."""
    authorized = await f.authorize(connection["linkUrl"])
    assert authorized.status_code == 200, authorized.text
    await f.until_status(connection["id"], "Linked")
    return str(connection["id"])


async def test_rate_limit_reached_pauses_every_codat_call_until_its_expiry(
        database_url: str) -> None:
    async with flow(database_url) as f:
        company_id = await f.create_company("Toft stores")
        connection = await f.create_connection(company_id)
        expiry = ms(datetime.now(UTC) + timedelta(seconds=1.5))
        reached = codat_event("client.rateLimit.reached",
                              {"dailyQuota": 12000, "quotaRemaining": 0,
                               "expiryDate": iso_ms(expiry)})
        assert (await f.deliver(reached)).status_code == 200
        connection_id = await _authorize(f, connection)
        await confirm_job(f, connection_id, status="pending", attempts=0)
        assert datetime.now(UTC) < expiry - timedelta(seconds=0.3), "the test was too slow"
        jobs = await f.settled({"confirm_connection", "refresh_readiness"}, timeout=8)
        assert all(j["status"] == "done" and j["attempts"] == 1 for j in jobs), jobs
        worker_calls = await f.calls("GET")
        assert worker_calls
        assert min(call_times(worker_calls)) >= expiry - CLOCK_SLACK


async def test_rate_limit_reset_resumes_the_worker_at_once(database_url: str) -> None:
    async with flow(database_url) as f:
        later = datetime.now(UTC) + timedelta(minutes=5)
        reached = codat_event("client.rateLimit.reached",
                              {"dailyQuota": 12000, "quotaRemaining": 0,
                               "expiryDate": iso_ms(later)})
        company_id = await f.create_company("Toft stores")
        connection = await f.create_connection(company_id)
        assert (await f.deliver(reached)).status_code == 200
        connection_id = await _authorize(f, connection)
        await confirm_job(f, connection_id, status="pending", attempts=0)
        await asyncio.sleep(0.3)  # several polls of the worker
        assert await f.calls("GET") == []

        reset_at = ms(datetime.now(UTC))
        reset = codat_event("client.rateLimit.reset",
                            {"dailyQuota": 12000, "quotaRemaining": 12000,
                             "expiryDate": iso_ms(later)})
        assert (await f.deliver(reset)).status_code == 200
        jobs = await f.settled({"confirm_connection", "refresh_readiness"}, timeout=3)
        assert all(j["status"] == "done" for j in jobs), jobs
        first = min(call_times(await f.calls("GET")))
        assert reset_at <= first + CLOCK_SLACK
        assert first - reset_at < timedelta(seconds=1)


# --- reconcile -------------------------------------------------------------------------------

async def drain(f: Flow) -> None:
    """Run a worker in the test until no job is due."""
    worker = build_worker(f.settings, f.db, f.app.state.codat, worker_id="test-worker")
    deadline = time.monotonic() + 5
    while await worker.run_once():
        assert time.monotonic() < deadline


async def test_codats_newest_word_wins_even_when_it_arrives_first(database_url: str) -> None:
    # Issue #10's first case: created, then disconnected (newest), then the older connected
    # arriving last, as a Svix retry does. The state is Codat's newest word at once, with Codat
    # unreachable; the skipped state is confirmed with Codat when it answers.
    async with flow(database_url, worker_enabled=False) as f:
        company_id = await f.create_company()
        connection_id = (await f.create_connection(company_id))["id"]
        await f.delivered(2)
        # The SMB links, then revokes access; Codat's two events arrive in reverse order.
        await f.control("/webhooks/pause")
        await f.smb("authorize", company_id, connection_id)
        await f.smb("deauthorize", company_id, connection_id)
        await f.control("/webhooks/resume", {"order": "reverse"})
        await f.delivered(4)
        history = await f.history(connection_id)
        webhooks = [(h["eventType"], h["fromState"], h["toState"], h["result"], h["skipped"])
                    for h in history if h["source"] == "webhook"
                    and h["eventType"] != "connection.created"]
        assert webhooks == [
            ("connection.disconnected", "PendingAuth", "Deauthorized", "applied", True),
            ("connection.connected", "Deauthorized", "Linked", "superseded", False)]
        assert (await f.connection(connection_id))["status"] == "Deauthorized"
        assert [j["kind"] for j in await f.jobs("pending")] == ["reconcile_connection"]

        await drain(f)
        assert (await f.connection(connection_id))["status"] == "Deauthorized"
        at_codat = await f.codat("GET", connection_path(company_id, connection_id))
        assert at_codat.json()["status"] == "Deauthorized"
        reconciled = [h for h in await f.history(connection_id) if h["source"] == "reconcile"]
        assert [(h["fromState"], h["toState"], h["result"]) for h in reconciled] == [
            ("Deauthorized", "Deauthorized", "applied")]
        assert all(j["status"] == "done" for j in await f.jobs())


# --- several workers, and a worker that dies -------------------------------------------------

def _runs(metrics: Metrics) -> int:
    return int(sum(s.value for m in metrics.job_runs.collect() for s in m.samples
                   if s.name.endswith("_total")))


@pytest.fixture
def clean_postgres(postgres_url: str) -> str:
    """The PostgreSQL database alone (two workers need several connections to one server)."""
    truncate_postgres(postgres_url)
    return postgres_url


@pytest.mark.postgres
async def test_two_workers_run_every_job_exactly_once(clean_postgres: str) -> None:
    postgres_url = clean_postgres
    companies = 14  # three jobs each
    async with flow(postgres_url, worker_enabled=False, sandbox={"read_delay": 0.6}) as f:
        # Each company ends with a Linked connection B whose data Codat has not read (its read
        # was superseded by connection A's, which A's revocation cancelled): B's confirm job
        # queues a refresh of every Bill Pay data type.
        for n in range(companies):
            company = (await f.codat("POST", "/companies", json={"name": f"Company {n}"})).json()
            a, b = [(await f.codat("POST", f"/companies/{company['id']}/connections",
                                   json={"platformKey": "qhyg"})).json() for _ in range(2)]
            await f.smb("authorize", company["id"], b["id"])
            await f.smb("authorize", company["id"], a["id"])
            await f.until_status(a["id"], "Linked")  # so A's revocation cannot overtake it
            await f.smb("deauthorize", company["id"], a["id"])
        await f.delivered(7 * companies, timeout=10)
        linked = await f.ok("GET", "/v1/connections", params={"status": "Linked", "limit": 500})
        assert len(linked["results"]) == companies  # every B, and no A
        await eventually(lambda: all(s.current_status == "Cancelled"
                                     for c in f.sandbox.companies.values()
                                     for s in c.data_status.values()), what="reads cancelled")
        await f.control("/webhooks/pause")  # the refreshes' reads add no jobs meanwhile
        pending = await f.jobs("pending")
        assert len(pending) >= 3 * companies

        metrics, workers, resources = [], [], []
        for name in ("worker-1", "worker-2"):
            db = PostgresDatabase(postgres_url, pool_size=4)
            await db.start()
            client = codat_client(f.settings)
            metrics.append(Metrics())
            workers.append(build_worker(f.settings, db, client, metrics[-1], worker_id=name))
            resources.append((db, client))
        stop = asyncio.Event()
        tasks = [asyncio.create_task(w.run(stop)) for w in workers]
        try:
            jobs = await f.settled(timeout=20)
        finally:
            stop.set()
            await asyncio.gather(*tasks)
            for db, client in resources:
                await client.aclose()
                await db.close()

        assert len(jobs) == len(pending)
        assert all((j["status"], j["attempts"]) == ("done", 1) for j in jobs), jobs
        runs = [_runs(m) for m in metrics]
        assert sum(runs) == len(jobs) and min(runs) > 0, runs
        log = await f.call_log()
        refreshes = [c for c in log["calls"] if c["method"] == "POST"
                     and "/data/queue/" in c["path"]]
        keys = [c["idempotencyKey"] for c in refreshes]
        assert len(keys) == len(set(keys)) == 7 * companies
        # {job.id}:{dataType}:{execution}: one execution per job means one key per data type.
        by_job: dict[str, list[str]] = {}
        executions: dict[str, set[str]] = {}
        for key in keys:
            assert log["byIdempotencyKey"][key] == 1
            job_id, data_type, execution = key.split(":")
            by_job.setdefault(job_id, []).append(data_type)
            executions.setdefault(job_id, set()).add(execution)
        confirms = {j["id"] for j in jobs if j["kind"] == "confirm_connection"}
        assert set(by_job) <= confirms and len(by_job) == companies
        assert all(sorted(types) == sorted(BILL_PAY_TYPES) for types in by_job.values())
        assert all(len(runs) == 1 for runs in executions.values()), executions


def _worker_command() -> list[str]:
    script = Path(sys.executable).with_name("codat-hooks")
    if script.exists():
        return [str(script), "worker"]
    return [sys.executable, "-c", "from service.cli import main; main()", "worker"]


async def test_a_killed_workers_job_is_claimed_again_once_its_lease_expires(
        database_url: str, tmp_path: Path) -> None:
    lease = 2.0
    async with flow(database_url, worker_enabled=False, outbox_lease_seconds=lease) as f:
        company_id, connection_id, _ = await reconcile_queued(f)
        job_id = (await f.jobs())[0]["id"]
        path = connection_path(company_id, connection_id)
        await f.fault(f"^{re.escape(path)}$", method="GET", delay=lease + 0.5)

        env = {**os.environ, "DATABASE_URL": database_url, "CODAT_API_KEY": API_KEY,
               "CODAT_BASE_URL": f.sandbox_url, "CODAT_WEBHOOK_SECRETS": SECRET,
               "OUTBOX_LEASE_SECONDS": str(lease), "WORKER_POLL_SECONDS": "0.1",
               "LOG_LEVEL": "WARNING"}
        with (tmp_path / "worker.log").open("wb") as output:
            process = await asyncio.create_subprocess_exec(
                *_worker_command(), "--id", "doomed", env=env, stdout=output,
                stderr=subprocess.STDOUT)
            try:
                async def held() -> dict[str, Any] | None:
                    job = await f.job(job_id)
                    return job if job["status"] == "running" else None
                taken = await eventually(held, timeout=20, what="the subprocess to claim it")
                assert taken["lockedBy"] == "doomed" and taken["attempts"] == 1

                async def in_flight() -> bool:
                    return any(c["status"] is None for c in await f.calls("GET", path))
                await eventually(in_flight, what="the subprocess to be waiting on Codat")
                process.send_signal(signal.SIGKILL)
                assert await asyncio.wait_for(process.wait(), 5) == -signal.SIGKILL
            finally:
                if process.returncode is None:
                    process.kill()
                    await process.wait()

        lease_until = parse_time(taken["leaseUntil"])
        orphan = await f.job(job_id)
        assert (orphan["status"], orphan["lockedBy"]) == ("running", "doomed")
        # The dead process left no lock behind: the database takes writes at once.
        started = time.perf_counter()
        await f.deliver(company_body("company.created", company_id=new_id(), generated=utcnow()))
        assert time.perf_counter() - started < 1

        survivor = build_worker(f.settings, f.db, f.app.state.codat, worker_id="survivor")
        deadline = time.monotonic() + lease + 5
        refused_while_leased = 0
        while True:
            before = datetime.now(UTC)
            if await survivor.run_once():
                break
            refused_while_leased += before < lease_until
            assert time.monotonic() < deadline, "the job was never claimed again"
            await asyncio.sleep(0.05)
        assert refused_while_leased > 0  # tried, and refused, while the lease still held
        assert before >= lease_until - timedelta(seconds=0.2)

        done = await f.job(job_id)
        assert (done["status"], done["attempts"], done["lockedBy"]) == ("done", 2, None)
        calls = await f.calls("GET", path)
        assert len(calls) == 2 and calls[1]["status"] == 200
        assert parse_time(calls[1]["at"]) >= lease_until - CLOCK_SLACK
        assert (await f.connection(connection_id))["status"] == "Linked"
        applied = [h for h in await f.history(connection_id) if h["source"] == "reconcile"]
        # One word of Codat's: the second run's answer (the killed run's never arrived).
        assert [(h["fromState"], h["toState"]) for h in applied] == [("PendingAuth", "Linked")]
        assert applied[0]["eventId"].startswith(f"job:{job_id}:")
