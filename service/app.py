"""The ASGI application: ``create_app(settings)`` wires the routes to what they need.

Run it with ``codat-hooks serve`` or ``uvicorn --factory service.app:create_app``. Settings are
read here (or passed in), never at import.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.api import QueryApi, TokenAuth, json_response
from service.db import Database, Tx, open_database, sql
from service.errors import DatabaseUnavailable
from service.logs import get_logger
from service.metrics import Metrics
from service.migrate import current_revision, head_revision
from service.openapi import openapi_document
from service.receiver import Receiver
from service.settings import Settings, load_settings
from service.verify import Verifier

log = get_logger("app")
_PING = sql("SELECT 1")


async def _ping(tx: Tx) -> Any:
    return await tx.fetchval(_PING)


class Health:
    """/healthz (the process answers) and /readyz (database reachable, migrations current)."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._head = head_revision()

    async def healthz(self, request: Request) -> Response:
        return json_response({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        try:
            await self._db.read(_ping)
            current = await self._db.read(current_revision)
        except DatabaseUnavailable as exc:
            return json_response({"ready": False, "reason": f"database unreachable: {exc}"}, 503)
        if current != self._head:
            return json_response({"ready": False, "reason": "migrations are behind",
                                  "current": current, "head": self._head}, 503)
        return json_response({"ready": True, "migration": current})


def create_app(settings: Settings | None = None, *, db: Database | None = None) -> Starlette:
    """Build the app; raises ConfigError (naming the variable) for bad settings."""
    settings = settings or load_settings()
    verifier = Verifier(settings.webhook_secrets,
                        tolerance_seconds=settings.webhook_tolerance_seconds)
    database = db or open_database(settings.database_url, pool_size=settings.db_pool_size,
                                   sqlite_synchronous=settings.sqlite_synchronous,
                                   sqlite_busy_timeout_ms=settings.sqlite_busy_timeout_ms)
    metrics = Metrics()
    receiver = Receiver(db=database, verifier=verifier, metrics=metrics,
                        max_body_bytes=settings.webhook_max_body_bytes,
                        retry_after_seconds=settings.db_retry_after_seconds)
    auth = TokenAuth(settings.api_tokens)
    if not settings.api_tokens:
        log.warning("SERVICE_API_TOKENS is empty: every query API call will be refused")
    health = Health(database)

    async def metrics_endpoint(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def openapi_endpoint(request: Request) -> Response:
        return json_response(openapi_document())

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await database.start()
        try:
            yield
        finally:
            await database.close()

    routes = [
        Route("/webhooks/codat", receiver.__call__, methods=["POST"]),
        Route("/healthz", health.healthz, methods=["GET"]),
        Route("/readyz", health.readyz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route("/openapi.json", openapi_endpoint, methods=["GET"]),
        *QueryApi(database).routes(auth),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.settings = settings
    app.state.db = database
    app.state.metrics = metrics
    return app
