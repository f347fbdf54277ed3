"""Migrations on fresh, empty databases: SQLite (a new file) and PostgreSQL (a scratch database).

``service.migrate.upgrade`` runs PostgreSQL migrations with ``asyncio.run``, so it is called
from a plain test or from a worker thread, never on the test's event loop.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, create_engine, pool
from sqlalchemy.ext.asyncio import create_async_engine
from sqlmodel import SQLModel

import schemas.oncall_indexes
import schemas.tables  # noqa: F401  (registers the tables on SQLModel.metadata)
from service.db import Database, sql, utcnow, with_database
from service.migrate import current_revision, head_revision, sqlalchemy_url, upgrade
from tests.conftest import ADMIN_URL, TABLES, _with_database, make_settings, start_service


async def _admin(query: str) -> None:
    conn = await asyncpg.connect(ADMIN_URL, timeout=3)
    try:
        await conn.execute(query)
    finally:
        await conn.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database that no migration has touched."""
    if request.param == "sqlite":
        path = tmp_path / "fresh.db"
        assert not path.exists()
        yield f"sqlite:///{path}"
        return
    name = f"codat_hooks_migrations_{uuid.uuid4().hex[:12]}"
    try:
        asyncio.run(_admin(f"CREATE DATABASE {name}"))
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        pytest.skip(f"no PostgreSQL reachable at {ADMIN_URL}: {exc}")
    try:
        yield _with_database(ADMIN_URL, name)
    finally:
        asyncio.run(_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


def _revision(url: str) -> str | None:
    async def read(db: Database) -> str | None:
        return await db.read(current_revision)
    return asyncio.run(with_database(url, read))


_INSERT_COMPANY = sql("""
INSERT INTO companies (id, name, deleted, bill_pay_ready, created_at, updated_at)
VALUES ($1, $2, FALSE, FALSE, $3, $3)""")
_COMPANY_NAME = sql("SELECT name FROM companies WHERE id = $1")


def _write_company(url: str, company_id: str) -> None:
    async def run(db: Database) -> None:
        await db.write(lambda tx: tx.execute(_INSERT_COMPANY, company_id, "Toft stores",
                                             utcnow()))
    asyncio.run(with_database(url, run))


def _company_name(url: str, company_id: str) -> Any:
    async def run(db: Database) -> Any:
        return await db.read(lambda tx: tx.fetchval(_COMPANY_NAME, company_id))
    return asyncio.run(with_database(url, run))


def test_there_is_a_head_revision() -> None:
    head = head_revision()
    assert head


def test_upgrade_brings_a_fresh_database_to_head(fresh_url: str) -> None:
    assert _revision(fresh_url) is None
    upgrade(fresh_url)
    assert _revision(fresh_url) == head_revision()


def test_upgrade_creates_every_table_the_service_uses(fresh_url: str) -> None:
    upgrade(fresh_url)
    count = {table: sql(f"SELECT COUNT(*) FROM {table}") for table in TABLES}

    async def counts(db: Database) -> dict[str, int]:
        return {t: int(await db.read(lambda tx, q=q: tx.fetchval(q))) for t, q in count.items()}
    assert asyncio.run(with_database(fresh_url, counts)) == dict.fromkeys(TABLES, 0)


def test_upgrading_twice_is_harmless(fresh_url: str) -> None:
    upgrade(fresh_url)
    company_id = str(uuid.uuid4())
    _write_company(fresh_url, company_id)
    upgrade(fresh_url)  # already at head: nothing to do, nothing lost
    upgrade(fresh_url, "head")
    assert _revision(fresh_url) == head_revision()
    assert _company_name(fresh_url, company_id) == "Toft stores"


def _differences(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True,
                                                           "compare_server_default": True})
    return list(compare_metadata(context, SQLModel.metadata))


def _compare(url: str) -> list[Any]:
    if url.startswith("sqlite"):
        engine = create_engine(url, poolclass=pool.NullPool)
        try:
            with engine.connect() as connection:
                return _differences(connection)
        finally:
            engine.dispose()

    async def run() -> list[Any]:
        engine = create_async_engine(sqlalchemy_url(url), poolclass=pool.NullPool)
        try:
            async with engine.connect() as connection:
                return await connection.run_sync(_differences)
        finally:
            await engine.dispose()
    return asyncio.run(run())


def test_the_migrated_schema_matches_the_models(fresh_url: str) -> None:
    upgrade(fresh_url)
    assert _compare(fresh_url) == []


def test_the_comparison_sees_an_unmigrated_database(fresh_url: str) -> None:
    # The same comparison on an empty database finds every table missing: it can fail.
    added = {diff[1].name for diff in _compare(fresh_url) if diff[0] == "add_table"}
    assert added >= set(TABLES)
    assert {t.name for t in SQLModel.metadata.sorted_tables} == added


def test_the_models_define_every_table_the_service_uses() -> None:
    assert set(TABLES) <= set(SQLModel.metadata.tables)


async def test_readyz_says_migrations_are_behind_until_upgraded(fresh_url: str) -> None:
    _, lifespan, client = await start_service(make_settings(fresh_url))
    try:
        behind = await client.get("/readyz")
        assert behind.status_code == 503
        assert behind.json() == {"ready": False, "reason": "migrations are behind",
                                 "current": None, "head": head_revision()}
        await asyncio.to_thread(upgrade, fresh_url)
        ready = await client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json() == {"ready": True, "migration": head_revision()}
        assert (await client.get("/healthz")).status_code == 200
    finally:
        await client.aclose()
        await lifespan.__aexit__(None, None, None)
