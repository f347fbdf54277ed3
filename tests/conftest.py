"""Shared fixtures: real databases (SQLite always, PostgreSQL when reachable) and the app.

PostgreSQL: ``TEST_POSTGRES_URL`` (default ``postgresql://postgres@127.0.0.1:5432/postgres``)
names a server where the tests may create a database of their own; without one, every
PostgreSQL case is skipped with the reason.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from service.app import create_app
from service.db import Database, sql
from service.migrate import upgrade
from service.settings import Settings, load_settings
from tests.factories import SECRET, SECRET_2, TOKEN, sign

ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
TABLES = ("companies", "connections", "connection_history", "deliveries", "delivery_conflicts",
          "outbox", "data_type_status", "write_results", "rate_limit", "api_idempotency",
          "changes", "feed_state", "subscriber_cursors")
_OUR_VARIABLES = ("CODAT_WEBHOOK_SECRETS", "DATABASE_URL", "SERVICE_API_TOKENS",
                  "WEBHOOK_TOLERANCE_SECONDS", "WEBHOOK_MAX_BODY_BYTES", "CODAT_API_KEY",
                  "CODAT_BASE_URL", "BILL_PAY_MODE")


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No setting leaks in from the machine, and no stray .env file is read."""
    for name in _OUR_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


async def _admin(query: str) -> None:
    conn = await asyncpg.connect(ADMIN_URL, timeout=3)
    try:
        await conn.execute(query)
    finally:
        await conn.close()


def _with_database(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A migrated database of this test session's own on the PostgreSQL server."""
    name = f"codat_hooks_test_{os.getpid()}"
    try:
        asyncio.run(_admin(f"DROP DATABASE IF EXISTS {name}"))
        asyncio.run(_admin(f"CREATE DATABASE {name}"))
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        pytest.skip(f"no PostgreSQL reachable at {ADMIN_URL}: {exc}")
    url = _with_database(ADMIN_URL, name)
    upgrade(url)
    yield url
    asyncio.run(_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


def truncate_postgres(url: str) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY")
        finally:
            await conn.close()
    asyncio.run(run())


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file, copied for each test (migrating each time would be slow)."""
    path = tmp_path_factory.mktemp("template") / "template.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty database: SQLite, and PostgreSQL where one is reachable."""
    if request.param == "sqlite":
        path = tmp_path / "codat-hooks.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite:///{path}"
    url: str = request.getfixturevalue("postgres_url")
    truncate_postgres(url)
    return url


def make_settings(database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "codat_webhook_secrets": f"{SECRET}, {SECRET_2}",
        "service_api_tokens": TOKEN,
        "database_url": database_url,
        "sqlite_busy_timeout_ms": 500,
        "codat_api_key": "test-codat-key",
        "codat_base_url": "http://127.0.0.1:9",  # nothing listens: a test that calls Codat
        "worker_enabled": False,                  # says where Codat is; tests run the worker
    }
    values.update(overrides)
    return load_settings(**values)


_COUNT = {table: sql(f"SELECT COUNT(*) FROM {table}") for table in TABLES}


@dataclass
class Service:
    """An app under test, its HTTP client and its database."""

    app: Any
    client: httpx.AsyncClient
    settings: Settings

    @property
    def db(self) -> Database:
        db: Database = self.app.state.db
        return db

    async def deliver(self, body: bytes, **sign_options: Any) -> httpx.Response:
        headers = sign(body, **sign_options)
        return await self.client.post("/webhooks/codat", content=body, headers=headers)

    async def get(self, path: str, **params: Any) -> httpx.Response:
        return await self.client.get(path, params=params,
                                     headers={"authorization": f"Bearer {TOKEN}"})

    async def count(self, table: str) -> int:
        return int(await self.db.read(lambda tx: tx.fetchval(_COUNT[table])))

    async def counts(self) -> dict[str, int]:
        return {table: await self.count(table) for table in TABLES}

    async def rows(self, query: str, *args: Any) -> list[dict[str, Any]]:
        statement = sql(query)
        return [dict(r) for r in await self.db.read(lambda tx: tx.fetch(statement, *args))]


async def start_service(settings: Settings) -> tuple[Any, Any, httpx.AsyncClient]:
    app = create_app(settings)
    lifespan = app.router.lifespan_context(app)
    await lifespan.__aenter__()
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")
    return app, lifespan, client


@asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[Service]:
    """The app for ``settings``, started, with a client talking to it in process."""
    app, lifespan, client = await start_service(settings)
    try:
        yield Service(app, client, settings)
    finally:
        await client.aclose()
        await lifespan.__aexit__(None, None, None)


@pytest.fixture
async def service(database_url: str) -> AsyncIterator[Service]:
    async with serving(make_settings(database_url)) as running:
        yield running


async def install_failure(db: Database, *connection_ids: str) -> None:
    """Make our own processing fail for these connections, with a real database trigger (no
    mock of our code): inserting their history row raises."""
    ids = ", ".join(f"'{c}'" for c in connection_ids)
    await _refuse(db, "inject_failure", "INSERT", "connection_history",
                  when=f"NEW.connection_id IN ({ids})", message="injected failure")


async def remove_failure(db: Database) -> None:
    await _allow(db, "inject_failure", "connection_history")


async def refuse_job_update(db: Database, *, when: str, message: str) -> None:
    """Make an update of an outbox job fail where ``when`` holds of the NEW row, with a real
    database trigger."""
    await _refuse(db, "refuse_job", "UPDATE", "outbox", when=when, message=message)


async def refuse_job_completion(db: Database) -> None:
    """Make marking any outbox job done fail."""
    await refuse_job_update(db, when="NEW.status = 'done'", message="injected failure to finish")


async def allow_job_completion(db: Database) -> None:
    """Remove what :func:`refuse_job_update` (or :func:`refuse_job_completion`) installed."""
    await _allow(db, "refuse_job", "outbox")


async def _refuse(db: Database, name: str, operation: str, table: str, *, when: str,
                  message: str) -> None:
    """A trigger ``name``: ``operation`` on ``table`` raises ``message`` where ``when`` holds
    of the NEW row."""
    if db.dialect == "sqlite":
        statements = [f"""CREATE TRIGGER {name} BEFORE {operation} ON {table} WHEN {when}
                          BEGIN SELECT RAISE(ABORT, '{message}'); END"""]
    else:
        statements = [  # a trigger outlives TRUNCATE: replace one a failed test left behind
            f"DROP TRIGGER IF EXISTS {name} ON {table}",
            f"""CREATE OR REPLACE FUNCTION {name}() RETURNS trigger AS $$
                BEGIN IF {when} THEN RAISE EXCEPTION '{message}'; END IF; RETURN NEW; END $$
                LANGUAGE plpgsql""",
            f"""CREATE TRIGGER {name} BEFORE {operation} ON {table}
                FOR EACH ROW EXECUTE FUNCTION {name}()"""]
    await _ddl(db, statements)


async def _allow(db: Database, name: str, table: str) -> None:
    if db.dialect == "sqlite":
        await _ddl(db, [f"DROP TRIGGER IF EXISTS {name}"])
    else:
        await _ddl(db, [f"DROP TRIGGER IF EXISTS {name} ON {table}",
                        f"DROP FUNCTION IF EXISTS {name}()"])


async def _ddl(db: Database, statements: list[str]) -> None:
    async def work(tx: Any) -> None:
        for statement in statements:
            await tx.execute(sql(statement))
    await db.write(work)
