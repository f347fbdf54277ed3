"""The ASGI application: ``create_app(settings)`` wires the routes to what they need.

Run it with ``codat-hooks serve`` or ``uvicorn --factory service.app:create_app``. Settings are
read here (or passed in), never at import.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import httpx
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from schemas.platforms import BillPayMode
from service import outbox
from service.api import QueryApi, json_response
from service.auth import TokenAuth
from service.codat import CodatClient
from service.db import Database, Tx, open_database, sql, utcnow
from service.feed import Feed
from service.feed_api import FeedApi
from service.followups import FollowUps
from service.logs import get_logger
from service.metrics import Metrics
from service.migrate import current_revision, head_revision
from service.onboarding import OnboardingApi
from service.oncall_html import PATH as ONCALL_PATH
from service.oncall_page import oncall_routes
from service.openapi import openapi_document
from service.outbox import RetryPolicy
from service.pacing import Breaker, Pressure
from service.push import Pusher
from service.receiver import Receiver
from service.refusals import RefusalLog
from service.sessions import Sessions
from service.settings import Settings, load_settings
from service.timing import RequestTiming
from service.untrusted import clip
from service.verify import Verifier
from service.worker import Worker

log = get_logger("app")
_PING = sql("SELECT 1")


async def _ping(tx: Tx) -> Any:
    return await tx.fetchval(_PING)


class Health:
    """/healthz (the process answers) and /readyz (database reachable, migrations current).

    Anyone can call /readyz: whatever goes wrong with the database, the answer says only that it
    is unavailable; what the driver said goes to the log (at a bounded rate)."""

    def __init__(self, db: Database, failures: RefusalLog) -> None:
        self._db = db
        self._head = head_revision()
        self._failures = failures

    async def healthz(self, request: Request) -> Response:
        return json_response({"status": "ok"})

    async def check(self) -> dict[str, Any]:
        """What /readyz answers: ``{"ready": bool, ...}`` with the reason when not ready."""
        try:
            await self._db.read(_ping)
            current = await self._db.read(current_revision)
        except Exception as exc:  # every failure: a refused login, a timeout, a driver error
            self._failures.log(log, "not ready: database unreachable", {
                "error": clip(f"{type(exc).__name__}: {exc}", 500)}, level=logging.WARNING)
            return {"ready": False, "reason": "database unreachable"}
        if current != self._head:
            return {"ready": False, "reason": "migrations are behind", "current": current,
                    "head": self._head}
        return {"ready": True, "migration": current}

    async def readyz(self, request: Request) -> Response:
        answer = await self.check()
        return json_response(answer, 200 if answer["ready"] else 503)


def codat_client(settings: Settings, metrics: Metrics | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> CodatClient:
    """The Codat client the settings describe, reporting each call to ``metrics``."""
    def on_response(endpoint: str, status: int, headers: httpx.Headers | None) -> None:
        if metrics is None:
            return
        metrics.codat_calls.labels(endpoint, str(status)).inc()
        remaining = headers.get("x-rate-limit-remaining") if headers else None
        if remaining and remaining.isdigit():
            metrics.codat_quota_remaining.set(int(remaining))
    return CodatClient(api_key=settings.codat_api_key_value, base_url=settings.codat_base_url,
                       timeout=settings.codat_timeout_seconds, transport=transport,
                       on_response=on_response)


def build_worker(settings: Settings, db: Database, client: CodatClient,
                 metrics: Metrics | None = None, worker_id: str | None = None,
                 push_client: httpx.AsyncClient | None = None,
                 pressure: Pressure | None = None) -> Worker:
    """The worker the settings describe; pushes go through ``push_client`` (the caller's to
    close)."""
    subscriptions = settings.subscriptions
    pusher = (Pusher(subscriptions, push_client)
              if subscriptions and push_client is not None else None)
    followups = FollowUps(db=db, client=client, mode=BillPayMode(settings.bill_pay_mode),
                          pusher=pusher)
    return Worker(db=db, followups=followups, metrics=metrics, worker_id=worker_id,
                  subscriptions=subscriptions if pusher is not None else (),
                  pressure=pressure,
                  # A cooldown of 0 never opens: CODAT_BREAKER_SECONDS=0 turns the breaker off.
                  breaker=Breaker(cooldown=settings.codat_breaker_seconds,
                                  ceiling=60 * settings.codat_breaker_seconds),
                  policy=RetryPolicy(settings.outbox_backoff_base_seconds,
                                     settings.outbox_backoff_max_seconds,
                                     settings.outbox_max_attempts),
                  lease_seconds=settings.outbox_lease_seconds,
                  poll_seconds=settings.worker_poll_seconds,
                  concurrency=settings.worker_concurrency)


def push_http_client() -> httpx.AsyncClient:
    """The client pushes go out with: explicit timeouts, no proxies from the environment."""
    return httpx.AsyncClient(timeout=httpx.Timeout(10.0, connect=5.0), trust_env=False,
                             follow_redirects=False)


async def refresh_gauges(db: Database, metrics: Metrics, health: Health) -> None:
    """Set the gauges read from the database, before a scrape: readiness first (it holds
    whatever the database says), then the outbox and Codat's pause."""
    metrics.ready.set(1 if (await health.check())["ready"] else 0)
    now = utcnow()

    async def read(tx: Tx) -> tuple[dict[str, int], datetime | None, datetime | None]:
        by_status, oldest_due = await outbox.counts(tx, now=now)
        return by_status, oldest_due, await outbox.paused_until(tx)
    with contextlib.suppress(Exception):  # whatever the database says: the last values stay
        by_status, oldest_due, paused = await db.read(read)
        for status, count in by_status.items():
            metrics.outbox_jobs.labels(status).set(count)
        metrics.outbox_oldest_due_age.set(0 if oldest_due is None
                                          else (now - oldest_due).total_seconds())
        metrics.codat_paused.set(0 if paused is None
                                 else max(0.0, (paused - now).total_seconds()))


async def metrics_response(db: Database, metrics: Metrics, health: Health) -> Response:
    """/metrics: the gauges refreshed, then every metric in Prometheus's text format."""
    await refresh_gauges(db, metrics, health)
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


def create_app(settings: Settings | None = None, *, db: Database | None = None,
               codat_transport: httpx.AsyncBaseTransport | None = None) -> Starlette:
    """Build the app; raises ConfigError (naming the variable) for bad settings."""
    settings = settings or load_settings()
    verifier = Verifier(settings.webhook_secrets,
                        tolerance_seconds=settings.webhook_tolerance_seconds)
    database = db or open_database(settings.database_url, pool_size=settings.db_pool_size,
                                   sqlite_synchronous=settings.sqlite_synchronous,
                                   sqlite_busy_timeout_ms=settings.sqlite_busy_timeout_ms,
                                   write_partitions=settings.db_write_partitions)
    metrics = Metrics()
    client = codat_client(settings, metrics, codat_transport)
    refusals = RefusalLog(metrics)
    receiver = Receiver(db=database, verifier=verifier, metrics=metrics, refusals=refusals,
                        max_body_bytes=settings.webhook_max_body_bytes,
                        retry_after_seconds=settings.db_retry_after_seconds)
    auth = TokenAuth(settings.api_tokens, settings.read_tokens)
    if not auth.configured:
        log.warning("SERVICE_API_TOKENS and SERVICE_READ_TOKENS are empty: every query API "
                    "call will be refused")
    sessions = Sessions(auth, path=ONCALL_PATH, behind_tls=settings.service_behind_tls)
    health = Health(database, RefusalLog(metrics, kind="readiness"))

    async def metrics_endpoint(request: Request) -> Response:
        return await metrics_response(database, metrics, health)

    async def openapi_endpoint(request: Request) -> Response:
        return json_response(openapi_document())

    feed = Feed(database)
    push_client = push_http_client()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await database.start()
        await feed.notifier.start(database)
        stop = asyncio.Event()
        worker = build_worker(settings, database, client, metrics, push_client=push_client,
                              pressure=receiver.pressure)
        task = asyncio.create_task(worker.run(stop)) if settings.worker_enabled else None
        try:
            yield
        finally:
            stop.set()
            if task is not None:
                await _drain_worker(task, worker, settings.worker_stop_grace_seconds)
            await client.aclose()
            await push_client.aclose()
            await feed.notifier.close()
            await database.close()

    routes = [
        Route("/webhooks/codat", receiver.__call__, methods=["POST"]),
        Route("/healthz", health.healthz, methods=["GET"]),
        Route("/readyz", health.readyz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route("/openapi.json", openapi_endpoint, methods=["GET"]),
        *QueryApi(database).routes(auth),
        *FeedApi(feed).routes(auth),
        *OnboardingApi(db=database, client=client,
                       mode=BillPayMode(settings.bill_pay_mode)).routes(auth),
        *oncall_routes(database, auth, sessions, metrics.recent_refusals),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    middleware=[Middleware(RequestTiming, metrics=metrics, direct={
                        ("POST", "/webhooks/codat"): receiver.__call__})],
                    exception_handlers={ClientDisconnect: _client_gone})
    app.state.settings = settings
    app.state.refusals = refusals
    app.state.receiver = receiver
    app.state.db = database
    app.state.metrics = metrics
    app.state.codat = client
    app.state.feed = feed
    return app


async def _client_gone(request: Request, exc: Exception) -> Response:
    """The client left (or was cut off for being too slow) before its body arrived: there is
    no one to answer, and nothing to log as an error."""
    return Response(status_code=400)


async def _drain_worker(task: asyncio.Task[None], worker: Worker, grace: float) -> None:
    """Let the running job finish; past the grace period, cancel it (it gives the job back)."""
    try:
        await asyncio.wait_for(asyncio.shield(task), grace)
    except TimeoutError:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
