"""``codat-hooks worker`` as a process: the worker loop, signals, and an optional status port
(/healthz while the loop is alive, /metrics for its jobs and Codat calls)."""

from __future__ import annotations

import asyncio
import os
import signal
import time

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service import store
from service.app import (
    Health,
    build_worker,
    codat_client,
    metrics_response,
    push_http_client,
)
from service.db import Database, open_database
from service.localserver import running
from service.metrics import Metrics
from service.pacing import StoredPressure
from service.refusals import RefusalLog
from service.settings import Settings
from service.worker import Worker


def status_app(worker: Worker, db: Database, metrics: Metrics, *, stale_after: float,
               ) -> Starlette:
    """/healthz: the loop went round recently (a job may take up to its lease); /metrics."""
    async def healthz(request: Request) -> Response:
        age = time.monotonic() - worker.heartbeat
        status = 200 if age < stale_after else 503
        return JSONResponse({"alive": status == 200, "loopAgeSeconds": round(age, 3),
                             "workerId": worker.worker_id}, status)

    health = Health(db, RefusalLog(metrics, kind="readiness"))

    async def metrics_endpoint(request: Request) -> Response:
        return await metrics_response(db, metrics, health)

    return Starlette(routes=[Route("/healthz", healthz), Route("/metrics", metrics_endpoint)])


async def run_worker(settings: Settings, *, worker_id: str | None, host: str,
                     port: int | None) -> None:
    """Run until SIGTERM/SIGINT: the running job finishes, then the worker stops."""
    if settings.worker_nice:
        os.nice(settings.worker_nice)  # follow-up work comes after the deliveries
    metrics = Metrics()
    client = codat_client(settings, metrics)
    db = open_database(settings.database_url, pool_size=2,
                       sqlite_synchronous=settings.sqlite_synchronous,
                       sqlite_busy_timeout_ms=settings.sqlite_busy_timeout_ms)
    await db.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    push_client = push_http_client()
    # No receiver in this process: it learns of a storm from the newest stored delivery.
    pressure = StoredPressure(lambda: db.read(store.newest_delivery_at))
    worker = build_worker(settings, db, client, metrics, worker_id=worker_id,
                          push_client=push_client, pressure=pressure)
    try:
        if port is None:
            await worker.run(stop)
        else:
            stale = settings.outbox_lease_seconds + 30
            async with running(status_app(worker, db, metrics, stale_after=stale), host=host,
                               port=port):
                await worker.run(stop)
    finally:
        await client.aclose()
        await push_client.aclose()
        await db.close()
