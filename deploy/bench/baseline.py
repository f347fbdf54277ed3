"""The bare baseline the ingest benchmark compares codat-hooks with.

One route, ``POST /webhooks/codat``, written the plain way: read the body, verify it with
``svix.webhooks.Webhook(secret).verify(body, headers)`` (401 on failure), then ONE durable
insert of the delivery (message id primary key, ``ON CONFLICT DO NOTHING``, the body bytes) and,
when the message id is new, ONE upsert of the connection (id, status, updated_at), with
hand-written driver calls, and answer 200 once committed. Nothing else: no parsing into models,
no state machine, no history, no outbox, no metrics, no logging.

- SQLite: ``sqlite3`` in WAL mode with ``synchronous`` FULL (codat-hooks' default), one
  transaction and one commit per request, called directly in the async handler (it blocks the
  event loop while it runs and fsyncs: that is the bare way).
- PostgreSQL: an asyncpg pool of the same size as codat-hooks' (``DB_POOL_SIZE``, default 8),
  one transaction holding the two statements; ``synchronous_commit`` is the server's.

Configured like codat-hooks, from the environment: ``CODAT_WEBHOOK_SECRETS`` (the first secret
is used), ``DATABASE_URL`` (``sqlite:///PATH`` or ``postgresql://...``), ``SQLITE_SYNCHRONOUS``
(default FULL), ``DB_POOL_SIZE`` (default 8). Served by uvicorn with httptools and uvloop in one
process::

    .venv/bin/python deploy/bench/baseline.py --port 8001

The answer body says whether the message id was new (``{"disposition":"stored"}``) or seen
before (``{"disposition":"duplicate"}``), as codat-hooks' does, so the benchmark can count the
deliveries acknowledged as stored.
"""

from __future__ import annotations

import argparse
import os
import re
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from svix.webhooks import Webhook

STORED = b'{"disposition":"stored"}'
DUPLICATE = b'{"disposition":"duplicate"}'
REFUSED = b'{"error":"invalid signature"}'

SQLITE_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS deliveries (message_id TEXT PRIMARY KEY, body BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS connections (id TEXT PRIMARY KEY, status TEXT NOT NULL, "
    "updated_at TEXT NOT NULL)",
)
SQLITE_INSERT = ("INSERT INTO deliveries (message_id, body) VALUES (?, ?) "
                 "ON CONFLICT (message_id) DO NOTHING RETURNING message_id")
SQLITE_UPSERT = ("INSERT INTO connections (id, status, updated_at) VALUES (?, ?, ?) "
                 "ON CONFLICT (id) DO UPDATE SET status = excluded.status, "
                 "updated_at = excluded.updated_at")

PG_SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (message_id text PRIMARY KEY, body bytea NOT NULL);
CREATE TABLE IF NOT EXISTS connections (id text PRIMARY KEY, status text NOT NULL,
    updated_at timestamptz NOT NULL);
"""
PG_INSERT = ("INSERT INTO deliveries (message_id, body) VALUES ($1, $2) "
             "ON CONFLICT (message_id) DO NOTHING RETURNING message_id")
PG_UPSERT = ("INSERT INTO connections (id, status, updated_at) VALUES ($1, $2, $3) "
             "ON CONFLICT (id) DO UPDATE SET status = excluded.status, "
             "updated_at = excluded.updated_at")


def _message_id(request: Request) -> str:
    return request.headers.get("svix-id") or request.headers.get("webhook-id") or ""


def _connection(body: bytes) -> tuple[str, str]:
    connection = orjson.loads(body)["payload"]["connection"]
    return connection["id"], connection["status"]


def sqlite_app(path: str, webhook: Webhook, synchronous: str) -> Starlette:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA busy_timeout=10000")
    for statement in SQLITE_SCHEMA:
        conn.execute(statement)

    async def receive(request: Request) -> Response:
        body = await request.body()
        try:
            webhook.verify(body, request.headers)  # type: ignore[arg-type]
        except Exception:
            return Response(REFUSED, 401, media_type="application/json")
        connection_id, status = _connection(body)
        now = datetime.now(UTC).isoformat()
        conn.execute("BEGIN IMMEDIATE")
        try:
            fresh = conn.execute(SQLITE_INSERT, (_message_id(request), body)).fetchall()
            if fresh:
                conn.execute(SQLITE_UPSERT, (connection_id, status, now))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return Response(STORED if fresh else DUPLICATE, 200, media_type="application/json")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            conn.close()

    return Starlette(routes=[Route("/webhooks/codat", receive, methods=["POST"])],
                     lifespan=lifespan)


async def _keep_session(conn: asyncpg.Connection) -> None:
    """asyncpg has already rolled back an open transaction; there is nothing else to reset."""


def postgres_app(dsn: str, webhook: Webhook, pool_size: int) -> Starlette:
    state: dict[str, Any] = {}

    async def receive(request: Request) -> Response:
        body = await request.body()
        try:
            webhook.verify(body, request.headers)  # type: ignore[arg-type]
        except Exception:
            return Response(REFUSED, 401, media_type="application/json")
        connection_id, status = _connection(body)
        pool: asyncpg.Pool = state["pool"]
        async with pool.acquire() as conn, conn.transaction():
            fresh = await conn.fetchval(PG_INSERT, _message_id(request), body)
            if fresh is not None:
                await conn.execute(PG_UPSERT, connection_id, status, datetime.now(UTC))
        return Response(STORED if fresh is not None else DUPLICATE, 200,
                        media_type="application/json")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(PG_SCHEMA)
        finally:
            await conn.close()
        # The same pool codat-hooks opens (service/db.py): lazily filled, DB_POOL_SIZE at most,
        # and no reset round trip when a connection goes back (nothing here changes the session).
        state["pool"] = await asyncpg.create_pool(dsn, min_size=0, max_size=pool_size,
                                                  command_timeout=30, timeout=5.0,
                                                  reset=_keep_session)
        try:
            yield
        finally:
            await state["pool"].close()

    return Starlette(routes=[Route("/webhooks/codat", receive, methods=["POST"])],
                     lifespan=lifespan)


def create_app() -> Starlette:
    secrets = [s for s in re.split(r"[\s,]+", os.environ.get("CODAT_WEBHOOK_SECRETS", "")) if s]
    if not secrets:
        raise SystemExit("CODAT_WEBHOOK_SECRETS is required")
    webhook = Webhook(secrets[0])
    url = os.environ.get("DATABASE_URL", "sqlite:///./baseline.db")
    if url.startswith("sqlite"):
        path = url.split("://", 1)[1]
        path = path[1:] if path.startswith("/") else path
        synchronous = os.environ.get("SQLITE_SYNCHRONOUS", "FULL").upper()
        if synchronous not in ("FULL", "NORMAL"):
            raise SystemExit("SQLITE_SYNCHRONOUS must be FULL or NORMAL")
        return sqlite_app(path, webhook, synchronous)
    dsn = "postgresql://" + url.split("://", 1)[1]
    return postgres_app(dsn, webhook, int(os.environ.get("DB_POOL_SIZE", "8")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    uvicorn.run(create_app(), host=args.host, port=args.port, loop="uvloop", http="httptools",
                log_level="warning", access_log=False, lifespan="on")


if __name__ == "__main__":
    main()
