"""company.deleted racing the first word of one of its connections, on PostgreSQL (SQLite's one
writer runs them one after the other).

company.deleted deletes every connection of the company it can see; a connection it cannot see
yet is deleted when its word is applied, because that word finds the company deleted. Two
replicas at once could miss each other: the deletion listing the connections before the new one
committed, the new one reading the company before the deletion committed. Whichever commits
first, the connection must end deleted, as it does when they come one after the other."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from handlers import word_of_event
from schemas.events import (
    CompanyInfo,
    ConnectionEvent,
    ConnectionEventKind,
    ConnectionInfo,
    EventMeta,
)
from schemas.order import instant_of
from schemas.state import ConnectionStatus
from service import store
from service.db import _PgTx, utcnow
from service.ingest import examine, ingest, new_delivery
from tests.conftest import Service, make_settings, serving, truncate_postgres
from tests.factories import at, company_body, connection_body, new_id

pytestmark = pytest.mark.postgres


@pytest.fixture
def emptied(postgres_url: str) -> str:
    truncate_postgres(postgres_url)
    return postgres_url


@pytest.fixture
async def service(emptied: str) -> AsyncIterator[Service]:
    async with serving(make_settings(emptied)) as running:
        yield running


async def _states(service: Service, company: str) -> dict[str, bool]:
    return {r["id"]: bool(r["deleted"]) for r in await service.rows(
        "SELECT id, deleted FROM connections WHERE company_id = $1", company)}


async def _known_company(service: Service) -> tuple[str, str]:
    company, known = new_id(), new_id()
    answer = await service.deliver(connection_body(
        "connection.connected", company_id=company, connection_id=known, status="Linked",
        generated=at(0)))
    assert answer.status_code == 200
    return company, known


async def test_a_new_connections_word_that_arrives_while_the_deletion_commits_is_deleted(
        service: Service, postgres_url: str) -> None:
    company, known = await _known_company(service)
    late = new_id()
    body = company_body("company.deleted", company_id=company, generated=at(5))
    deletion = await asyncpg.connect(postgres_url)
    try:
        open_ = deletion.transaction()
        await open_.start()  # company.deleted, applied and not committed yet
        await ingest(_PgTx(deletion), new_delivery(
            message_id=f"msg_{new_id()}", timestamp=0, body=body, secret_id="s", headers={}),
            examine(body, message_id="m", timestamp=0))
        # Meanwhile the first word of a connection it could not see, older than the deletion,
        # comes in through the delivery path (the batch statement).
        arriving = asyncio.create_task(service.deliver(connection_body(
            "connection.connected", company_id=company, connection_id=late, status="Linked",
            generated=at(3))))
        await asyncio.sleep(0.5)
        await open_.commit()
        assert (await asyncio.wait_for(arriving, 10)).status_code == 200
    finally:
        await deletion.close()
    assert await _states(service, company) == {known: True, late: True}


async def test_a_deletion_that_arrives_while_a_new_connections_word_commits_deletes_it(
        service: Service, postgres_url: str) -> None:
    company, known = await _known_company(service)
    late = new_id()
    # Its word names the company and nothing more of it, and does not make the connection
    # Linked: applying it writes nothing of the company row (no refresh, no Linked count), so
    # only the deletion's own care can find the connection.
    event = ConnectionEvent(
        EventMeta(new_id(), "connection.created", at(3), instant_of(at(3))),
        ConnectionEventKind.CREATED, CompanyInfo(company, None),
        ConnectionInfo(late, ConnectionStatus.PENDING_AUTH, platform_key="qhyg"))
    word = word_of_event(event, delivery_id=None, evidence=None)
    applying = await asyncpg.connect(postgres_url)
    try:
        open_ = applying.transaction()
        await open_.start()  # the new connection's word, applied on the row path, not committed
        assert len(await store.apply_word(_PgTx(applying), word, now=utcnow())) == 1
        deleting = asyncio.create_task(service.deliver(company_body(
            "company.deleted", company_id=company, generated=at(5))))
        await asyncio.sleep(0.5)
        await open_.commit()
        assert (await asyncio.wait_for(deleting, 10)).status_code == 200
    finally:
        await applying.close()
    assert await _states(service, company) == {known: True, late: True}
