"""The worker's pacing (service/pacing.py): deliveries first, and no hammering a failing Codat."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from schemas.commands import Command, JobKind
from service import outbox, store
from service.app import build_worker
from service.db import utcnow
from service.pacing import Breaker, Pressure, StoredPressure
from tests.conftest import Service
from tests.factories import at, connection_body, new_id, sign


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_breaker_opens_after_failures_in_a_row_and_backs_off_doubling() -> None:
    clock = Clock()
    breaker = Breaker(threshold=3, cooldown=1.0, ceiling=4.0, clock=clock)
    breaker.failed()
    breaker.failed()
    assert not breaker.open
    breaker.failed()
    assert breaker.open and not breaker.probing
    clock.now += 1.01
    assert not breaker.open and breaker.probing  # one may try again
    breaker.failed()
    assert breaker.open
    clock.now += 1.5
    assert breaker.open  # 2 s this time
    clock.now += 0.6
    breaker.failed()
    clock.now += 3.9
    assert breaker.open  # 4 s: the ceiling
    clock.now += 0.2
    breaker.succeeded()  # Codat answered
    assert not breaker.open and not breaker.probing
    breaker.failed()
    assert not breaker.open  # the count started again


def test_pressure_makes_the_worker_wait_only_while_deliveries_flow() -> None:
    clock = Clock()
    pressure = Pressure(window=0.25, clock=clock)
    assert pressure.pause_after(0.5) == 0.0
    pressure.delivered()
    assert pressure.pause_after(0.01) == pytest.approx(0.09)  # jobs take 10% of the time
    assert pressure.pause_after(0.0001) == 0.02  # a floor
    assert pressure.pause_after(5.0) == 1.0  # a ceiling: follow-up work always moves
    clock.now += 0.3
    assert pressure.pause_after(0.01) == 0.0


async def test_stored_pressure_reads_the_newest_delivery_at_most_every_quarter_second(
        ) -> None:
    clock = Clock()
    wall = datetime(2026, 11, 29, 12, 0, 0, tzinfo=UTC)
    newest: list[datetime | None] = [None]
    reads = 0

    async def read() -> datetime | None:
        nonlocal reads
        reads += 1
        return newest[0]
    pressure = StoredPressure(read, window=1.0, every=0.25, clock=clock, now=lambda: wall)
    await pressure.refresh()
    assert not pressure.busy()  # nothing stored yet
    newest[0] = wall - timedelta(seconds=0.4)
    await pressure.refresh()
    assert reads == 1 and not pressure.busy()  # asked again too soon: not read
    clock.now += 0.3
    await pressure.refresh()
    assert reads == 2 and pressure.busy()  # a delivery 0.4 s ago
    assert pressure.pause_after(0.01) == pytest.approx(0.09)
    clock.now += 0.61  # the same newest delivery is now over a second old
    assert not pressure.busy()
    newest[0] = wall - timedelta(seconds=5)
    clock.now += 0.3
    await pressure.refresh()
    assert not pressure.busy()


async def test_a_standalone_worker_yields_while_receivers_store_deliveries(
        service: Service) -> None:
    # The worker sees no receiver: it learns of the storm from the newest stored delivery.
    await _jobs(service, 300)
    settings = service.settings.model_copy(update={"codat_breaker_seconds": 0.0,
                                                   "outbox_backoff_base_seconds": 30.0,
                                                   "worker_concurrency": 1})
    pressure = StoredPressure(lambda: service.db.read(store.newest_delivery_at))
    assert await service.db.read(store.newest_delivery_at) is None
    worker = build_worker(settings, service.db, service.app.state.codat,
                          service.app.state.metrics, pressure=pressure)
    stop = asyncio.Event()

    async def storm() -> None:
        while not stop.is_set():
            body = connection_body("connection.created", company_id=new_id(),
                                   connection_id=new_id(), status="PendingAuth",
                                   generated=at(0))
            answer = await service.client.post("/webhooks/codat", content=body,
                                               headers=sign(body))
            assert answer.status_code == 200
            await asyncio.sleep(0.05)
    receivers = asyncio.create_task(storm())
    await asyncio.sleep(0.2)
    task = asyncio.create_task(worker.run(stop))
    await asyncio.sleep(1.0)
    stop.set()
    await asyncio.gather(task, receivers)
    newest = await service.db.read(store.newest_delivery_at)
    assert newest is not None and (utcnow() - newest).total_seconds() < 5
    yielding = await _attempts(service)
    assert 0 < yielding <= 51, yielding  # at most one job per 20 ms while the storm lasts


async def _jobs(service: Service, count: int) -> None:
    company = "5f3b8a4e-1111-4222-8333-944445555666"
    commands = [Command(JobKind.RECONCILE_CONNECTION, f"reconcile:conn-{n}:test", company,
                        f"0b7d1c2e-0000-4000-8000-{n:012d}") for n in range(count)]

    async def enqueue(tx: Any) -> None:
        await store.enqueue(tx, commands=commands, now=utcnow())
    await service.db.write(enqueue)


async def _run_worker(service: Service, settings: Any, *, seconds: float) -> None:
    """Run the worker ``settings`` describe for ``seconds``, then stop it."""
    worker = build_worker(settings, service.db, service.app.state.codat,
                          service.app.state.metrics)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    await asyncio.sleep(seconds)
    stop.set()
    await task


async def _attempts(service: Service) -> int:
    jobs = await service.db.read(lambda tx: outbox.list_jobs(tx, status=None, after="",
                                                             limit=500))
    return sum(int(j["attempts"]) for j in jobs)


@pytest.mark.parametrize(("breaker_seconds", "most"), [(5.0, 3), (0.0, 40)])
async def test_against_an_unreachable_codat_the_breaker_stops_the_retry_storm(
        service: Service, breaker_seconds: float, most: int,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # 100 jobs due against a Codat that refuses connections, for one second. With the
    # breaker, three attempts and then nothing (no claim, no write); without it, every job.
    await _jobs(service, 100)
    settings = service.settings.model_copy(update={
        "codat_breaker_seconds": breaker_seconds, "outbox_backoff_base_seconds": 30.0,
        "worker_concurrency": 1,  # (a batch of concurrent jobs all fail before it opens)
        "worker_poll_seconds": 0.05})
    writes = 0
    write = service.db.write

    async def counted(work: Any, **options: Any) -> Any:
        nonlocal writes
        writes += 1
        return await write(work, **options)
    monkeypatch.setattr(service.db, "write", counted)  # counted, and done by the database
    await _run_worker(service, settings, seconds=1.0)
    attempts = await _attempts(service)
    if breaker_seconds:
        assert attempts == most
        assert writes == 2 * most  # a claim and a reschedule each; then not even a claim
        assert service.app.state.metrics.codat_circuit_open._value.get() == 1
    else:
        assert attempts >= most


async def test_a_worker_running_jobs_at_once_probes_a_dead_codat_with_one_job(
        service: Service) -> None:
    # Four jobs at a time: the first batch fails whole and opens the breaker; then each wait
    # (0.25 s, then 0.5 s) ends with ONE job asking Codat whether it is back, not four.
    await _jobs(service, 100)
    settings = service.settings.model_copy(update={
        "codat_breaker_seconds": 0.25, "outbox_backoff_base_seconds": 30.0,
        "worker_concurrency": 4, "worker_poll_seconds": 0.02})
    await _run_worker(service, settings, seconds=1.2)
    attempts = await _attempts(service)
    assert 5 <= attempts <= 7, attempts  # a batch of four, then a probe per wait (before: 12)


async def test_jobs_that_need_not_ask_codat_do_not_close_the_breaker(service: Service) -> None:
    # Reconciles (they ask Codat, which refuses connections) alternate with confirms of
    # connections unlinked since (done without asking Codat). Those say nothing of Codat: the
    # breaker opens after three failures all the same.
    company = new_id()
    unlinked = [new_id() for _ in range(20)]
    for n, connection in enumerate(unlinked):
        for step, (kind, status) in enumerate((("connection.created", "PendingAuth"),
                                               ("connection.disconnected", "Unlinked"))):
            body = connection_body(kind, company_id=company, connection_id=connection,
                                   status=status, generated=at(10 * n + step))
            assert (await service.deliver(body)).status_code == 200
    commands = []
    for n, connection in enumerate(unlinked):
        commands += [Command(JobKind.RECONCILE_CONNECTION, f"reconcile:gone-{n}:test", company,
                             new_id()),
                     Command(JobKind.CONFIRM_CONNECTION, f"confirm:{connection}:test", company,
                             connection)]
    for n, command in enumerate(commands):
        async def enqueue(tx: Any, command: Command = command, n: int = n) -> None:
            await store.enqueue(tx, commands=[command],
                                now=utcnow() - timedelta(seconds=100 - n))
        await service.db.write(enqueue)
    settings = service.settings.model_copy(update={
        "codat_breaker_seconds": 5.0, "outbox_backoff_base_seconds": 30.0,
        "worker_concurrency": 1})
    await _run_worker(service, settings, seconds=1.0)
    jobs = await service.db.read(lambda tx: outbox.list_jobs(tx, status=None, after="",
                                                             limit=500))
    asked = sum(int(j["attempts"]) for j in jobs if j["kind"] == "reconcile_connection")
    skipped = [j for j in jobs if j["kind"] == "confirm_connection" and j["status"] == "done"]
    assert asked == 3, asked  # before: every reconcile, as each skipped confirm closed it
    assert len(skipped) == 2  # the two between the three failures; the rest wait
    assert service.app.state.metrics.codat_circuit_open._value.get() == 1


async def test_an_embedded_worker_yields_to_deliveries(service: Service) -> None:
    # While deliveries flow, each job is followed by a pause of at least 20 ms (nine times the
    # job's length when that is longer): in one second, at most 50 jobs (one at a time here;
    # a batch of concurrent jobs is paced the same). The same worker with nothing arriving runs
    # them back to back.
    await _jobs(service, 300)
    settings = service.settings.model_copy(update={"codat_breaker_seconds": 0.0,
                                                   "outbox_backoff_base_seconds": 30.0,
                                                   "worker_concurrency": 1})

    async def one_second(pressure: Pressure, flowing: bool) -> int:
        before = await _attempts(service)
        worker = build_worker(settings, service.db, service.app.state.codat,
                              service.app.state.metrics, pressure=pressure)
        stop = asyncio.Event()

        async def deliveries_flowing() -> None:
            while flowing and not stop.is_set():
                pressure.delivered()
                await asyncio.sleep(0.01)
        feeder = asyncio.create_task(deliveries_flowing())
        task = asyncio.create_task(worker.run(stop))
        await asyncio.sleep(1.0)
        stop.set()
        await asyncio.gather(task, feeder)
        return await _attempts(service) - before

    started = time.monotonic()
    yielding = await one_second(Pressure(), flowing=True)
    assert 0 < yielding <= 51, yielding  # it moved, but slowly
    assert time.monotonic() - started < 3  # and stopped promptly
    free = await one_second(Pressure(), flowing=False)
    assert free > 2 * yielding, (free, yielding)


async def test_only_authentic_deliveries_make_an_embedded_worker_yield(service: Service) -> None:
    # A flood of refused requests (anyone can send them) must not hold follow-up work back.
    pressure = service.app.state.receiver.pressure
    body = connection_body("connection.created", company_id=new_id(), connection_id=new_id(),
                           status="PendingAuth", generated=at(0))
    forged = {**sign(body), "svix-signature": "v1," + "A" * 43 + "="}
    for _ in range(5):
        answer = await service.client.post("/webhooks/codat", content=body, headers=forged)
        assert answer.status_code == 401
    assert not pressure.busy()
    answer = await service.client.post("/webhooks/codat", content=body, headers=sign(body))
    assert answer.status_code == 200
    assert pressure.busy()


def test_calls_in_flight_when_the_breaker_opens_neither_extend_nor_double_its_wait() -> None:
    # WORKER_CONCURRENCY calls fail together when Codat goes down: the one that opens the
    # breaker sets the wait; the others were sent before it opened and say nothing new.
    clock = Clock()
    breaker = Breaker(threshold=3, cooldown=1.0, ceiling=60.0, clock=clock)
    for _ in range(8):
        breaker.failed()
    assert breaker.open
    clock.now += 1.01
    assert not breaker.open and breaker.probing  # 1 s, not 32 s
    breaker.failed()  # the probe: Codat is still down
    clock.now += 1.9
    assert breaker.open
    clock.now += 0.2
    assert breaker.probing  # 2 s: the wait doubled once, for the probe
