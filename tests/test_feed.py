"""The change feed (GET /v1/events, service/feed.py): every change once, in commit order for
each connection, long polls woken by any replica, retention with 410, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections import defaultdict
from datetime import timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from schemas.order import new_message_id
from service import feed, store
from service.db import Database, sql, utcnow
from tests.conftest import Service, make_settings, start_service, truncate_postgres
from tests.factories import TOKEN, at, company_body, connection_body, new_id, sign

AUTH = {"authorization": f"Bearer {TOKEN}"}
LIFE = [("connection.created", "PendingAuth"), ("connection.connected", "Linked"),
        ("connection.disconnected", "Deauthorized")]


async def events(client: httpx.AsyncClient, **params: Any) -> Any:
    response = await client.get("/v1/events", params=params, headers=AUTH)
    assert response.status_code == 200, response.text
    return response.json()


async def deliver(client: httpx.AsyncClient, body: bytes) -> None:
    response = await client.post("/webhooks/codat", content=body, headers=sign(body))
    assert response.status_code == 200, response.text


async def live(client: httpx.AsyncClient, company: str, connection: str, start: int = 0,
               steps: list[tuple[str, str]] = LIFE) -> None:
    for offset, (kind, status) in enumerate(steps):
        await deliver(client, connection_body(kind, company_id=company, connection_id=connection,
                                              status=status, generated=at(start + offset)))


async def test_every_change_in_order_and_the_cursor_continues(service: Service) -> None:
    company, connection = new_id(), new_id()
    await live(service.client, company, connection)
    page = await events(service.client)
    assert [(c["type"], c["data"]["from"], c["data"]["to"]) for c in page["results"]] == [
        ("connection.status_changed", None, "PendingAuth"),
        ("connection.status_changed", "PendingAuth", "Linked"),
        ("connection.status_changed", "Linked", "Deauthorized")]
    first = page["results"][0]
    assert (first["companyId"], first["connectionId"]) == (company, connection)
    assert first["data"]["cause"]["source"] == "webhook"
    assert first["data"]["cause"]["eventType"] == "connection.created"
    assert first["data"]["skipped"] is False
    assert first["at"].endswith("Z")
    assert (await events(service.client, after=page["next"]))["results"] == []

    # Readiness, as the worker decides it, and a company's deletion.
    await service.db.write(lambda tx: store.set_readiness(
        tx, company_id=company, ready=False, detail={"missing": ["bills"]}, now=utcnow()))
    await deliver(service.client, company_body("company.deleted", company_id=company,
                                               generated=at(10)))
    more = await events(service.client, after=page["next"])
    assert [(c["type"], c["data"]) for c in more["results"]][:1] == [
        ("company.deleted", {"eventId": more["results"][0]["data"]["eventId"]})]
    assert [c["type"] for c in more["results"]] == ["company.deleted", "connection.deleted"]
    assert more["results"][1]["data"]["from"] == "Deauthorized"
    ids = [int(c["id"]) for c in page["results"] + more["results"]]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


async def test_readiness_changes_are_said_once_each_way(service: Service) -> None:
    company, connection = new_id(), new_id()
    await live(service.client, company, connection, steps=LIFE[:2])
    start = (await events(service.client, after="now"))["next"]

    async def assess(ready: bool) -> None:
        await service.db.write(lambda tx: store.set_readiness(
            tx, company_id=company, ready=ready, detail={"missing": []}, now=utcnow()))
    await assess(True)
    await assess(True)  # no change: nothing said
    await deliver(service.client, connection_body(
        "connection.disconnected", company_id=company, connection_id=connection,
        status="Unlinked", generated=at(5)))
    said = [(c["type"], c["data"]) for c in (await events(service.client, after=start))["results"]]
    assert said == [
        ("company.bill_pay_ready_changed", {"ready": True, "whyNot": []}),
        ("connection.status_changed", {"from": "Linked", "to": "Unlinked", "skipped": False,
                                       "cause": said[1][1]["cause"]}),
        ("company.bill_pay_ready_changed", {"ready": False,
                                            "whyNot": ["no Linked connection"]})]


async def test_after_now_starts_at_the_present(service: Service) -> None:
    await live(service.client, new_id(), new_id())
    now = await events(service.client, after="now")
    assert now["results"] == []
    company, connection = new_id(), new_id()
    await live(service.client, company, connection, steps=LIFE[:1])
    assert [c["connectionId"] for c in (await events(service.client,
                                                     after=now["next"]))["results"]] == [connection]


async def test_filters_by_company_connection_and_type(service: Service) -> None:
    a, b = new_id(), new_id()
    a1, a2, b1 = new_id(), new_id(), new_id()
    await live(service.client, a, a1)
    await live(service.client, b, b1)
    await live(service.client, a, a2, steps=LIFE[:2])
    assert {c["connectionId"] for c in (await events(service.client,
                                                     companyId=a))["results"]} == {a1, a2}
    assert len((await events(service.client, connectionId=b1))["results"]) == 3
    linked = await events(service.client, type="connection.status_changed", companyId=a,
                          limit=2)
    assert len(linked["results"]) == 2
    rest = await events(service.client, type="connection.status_changed", companyId=a,
                        after=linked["next"])
    assert len(linked["results"]) + len(rest["results"]) == 5


async def test_a_filtered_read_scans_a_bounded_range_and_moves_on(service: Service) -> None:
    wanted = new_id()
    for _ in range(3):
        await live(service.client, new_id(), new_id(), steps=LIFE[:1])
    await live(service.client, wanted, new_id(), steps=LIFE[:1])
    filters = feed.Filters(company_id=wanted)
    horizon = await feed.Feed(service.db).now()
    pages = []
    after = None
    while True:
        page = await service.db.read(lambda tx, a=after: feed.read_page(  # type: ignore[misc]
            tx, after=a, horizon=horizon, limit=10, filters=filters, scan=2))
        pages.append(page)
        if page.results or page.next == horizon:
            break
        after = page.next
    assert [len(p.results) for p in pages] == [0, 1]  # two scanned, nothing kept; then found


@pytest.mark.parametrize("params", [
    {"after": "junk"}, {"after": "f1.!!"}, {"limit": "0"}, {"limit": "501"}, {"limit": "x"},
    {"limit": "2.5"}, {"wait": "31"}, {"wait": "-1"}, {"wait": "nan"}, {"type": "company.x"},
    {"since": "1"}])
async def test_bad_parameters_are_400_and_change_nothing(service: Service,
                                                         params: dict[str, str]) -> None:
    response = await service.client.get("/v1/events", params=params, headers=AUTH)
    assert response.status_code == 400, params
    assert response.json()["error"]


async def test_the_feed_needs_a_token(service: Service) -> None:
    assert (await service.client.get("/v1/events")).status_code == 401


async def test_a_long_poll_answers_as_soon_as_a_change_commits(service: Service) -> None:
    now = (await events(service.client, after="now"))["next"]
    started = time.monotonic()
    waiting = asyncio.create_task(events(service.client, after=now, wait="20"))
    await asyncio.sleep(0.3)
    assert not waiting.done()  # nothing new: it waits
    connection = new_id()
    await live(service.client, new_id(), connection, steps=LIFE[:1])
    page = await asyncio.wait_for(waiting, 10)
    assert [c["connectionId"] for c in page["results"]] == [connection]
    assert time.monotonic() - started < 10  # woken, not timed out (20 s)


async def test_a_long_poll_with_nothing_new_answers_empty_when_its_wait_is_over(
        service: Service) -> None:
    now = (await events(service.client, after="now"))["next"]
    page = await events(service.client, after=now, wait="0.5")
    assert page == {"results": [], "next": now}


async def test_a_cursor_under_what_is_kept_is_410(service: Service) -> None:
    await live(service.client, new_id(), new_id())
    old = (await events(service.client))["results"][0]
    before = feed.encode_cursor(int(old["id"]) - 1)
    horizon = await feed.Feed(service.db).now()
    pruned = await service.db.write(lambda tx: feed.prune(
        tx, before=utcnow() + timedelta(days=1), horizon=horizon, limit=2, now=utcnow()))
    assert pruned == 2
    gone = await service.client.get("/v1/events", params={"after": before}, headers=AUTH)
    assert gone.status_code == 410 and "pruned" in gone.json()["error"]
    kept = await events(service.client)  # from the floor
    assert [int(c["id"]) for c in kept["results"]] == [int(old["id"]) + 2]


async def test_prune_keeps_what_is_newer_than_its_cutoff(service: Service) -> None:
    await live(service.client, new_id(), new_id())
    horizon = await feed.Feed(service.db).now()
    pruned = await service.db.write(lambda tx: feed.prune(
        tx, before=utcnow() - timedelta(days=30), horizon=horizon, limit=100, now=utcnow()))
    assert pruned == 0
    assert len((await events(service.client))["results"]) == 3


# --- PostgreSQL: many writers, a gap, replicas -------------------------------------------------

@pytest.fixture
async def replicas(postgres_url: str) -> Any:
    await asyncio.to_thread(truncate_postgres, postgres_url)
    started = [await start_service(make_settings(postgres_url)) for _ in range(2)]
    try:
        yield started
    finally:
        for _, lifespan, client in started:
            await client.aclose()
            await lifespan.__aexit__(None, None, None)


@pytest.mark.postgres
async def test_a_change_on_one_replica_wakes_a_long_poll_on_another(replicas: Any) -> None:
    (_, _, first), (_, _, second) = replicas
    now = (await events(first, after="now"))["next"]
    waiting = asyncio.create_task(events(first, after=now, wait="20"))
    await asyncio.sleep(0.3)
    connection = new_id()
    started = time.monotonic()
    await live(second, new_id(), connection, steps=LIFE[:1])
    page = await asyncio.wait_for(waiting, 10)
    assert [c["connectionId"] for c in page["results"]] == [connection]
    assert time.monotonic() - started < 5


@pytest.mark.postgres
async def test_a_change_numbered_before_a_committed_one_is_never_skipped(
        postgres_url: str, replicas: Any) -> None:
    # The classic gap: a transaction holds a smaller id while a larger one commits. The feed
    # must not hand out the larger one (and move its cursor past the smaller) until the smaller
    # one's transaction ends.
    (app, _, client), _ = replicas
    holder = await asyncpg.connect(postgres_url)
    try:
        transaction = holder.transaction()
        await transaction.start()
        await holder.fetchval("SELECT pg_current_xact_id()")  # it has a transaction id
        held = await holder.fetchval(
            "INSERT INTO changes (type, at, company_id, connection_id, data) VALUES "
            "('company.deleted', now(), 'held', NULL, '{\"eventId\": \"held\"}') RETURNING id")
        connection = new_id()
        await live(client, new_id(), connection, steps=LIFE[:1])  # a larger id, committed
        visible = await app.state.db.read(lambda tx: tx.fetchval(sql(
            "SELECT MAX(id) FROM changes")))
        assert visible > held
        page = await events(client)
        assert page["results"] == []  # nothing past the open transaction's id
        await transaction.commit()
        page = await events(client, after=page["next"])
        assert [int(c["id"]) for c in page["results"]] == [held, visible]
        assert page["results"][1]["connectionId"] == connection
    finally:
        await holder.close()


@pytest.mark.postgres
async def test_consumers_following_many_writers_see_every_change_once_in_order(
        postgres_url: str, replicas: Any) -> None:
    # Two receivers ingest shuffled lifecycles at once, a worker-like writer flips readiness
    # meanwhile, and three consumers follow the feed through both replicas' API. Each consumer
    # sees every change exactly once, and a connection's changes in the order they committed
    # (each one's "from" is the previous one's "to", as its history recorded them).
    (app, _, first), (_, _, second) = replicas
    rnd = random.Random(7)
    companies = [new_id() for _ in range(6)]
    plan = []
    for n in range(24):
        company, connection = companies[n % 6], new_id()
        steps = [*LIFE, ("connection.reconnected", "Linked"),
                 ("connection.disconnected", "Unlinked")]
        for offset, (kind, status) in enumerate(steps):
            plan.append(connection_body(kind, company_id=company, connection_id=connection,
                                        status=status, generated=at(n * 10 + offset)))
    rnd.shuffle(plan)
    halves = [plan[0::2], plan[1::2]]
    done = asyncio.Event()

    async def receive(client: httpx.AsyncClient, bodies: list[bytes]) -> None:
        for start in range(0, len(bodies), 6):
            await asyncio.gather(*(deliver(client, b) for b in bodies[start:start + 6]))

    async def flip(db: Database) -> None:
        for n in range(30):
            company = companies[n % 6]
            await db.write(lambda tx, c=company, r=bool(n % 2): store.set_readiness(
                tx, company_id=c, ready=r, detail={"missing": []}, now=utcnow()))
            await asyncio.sleep(0.005)

    async def follow(client: httpx.AsyncClient) -> list[dict[str, Any]]:
        seen: list[dict[str, Any]] = []
        cursor = None
        while True:
            params = {"limit": "50", "wait": "0.3"}
            if cursor:
                params["after"] = cursor
            page = await events(client, **params)
            seen += page["results"]
            cursor = page["next"]
            if done.is_set() and not page["results"]:
                return seen

    consumers = [asyncio.create_task(follow(c)) for c in (first, second, first)]
    await asyncio.gather(receive(first, halves[0]), receive(second, halves[1]),
                         flip(app.state.db))
    done.set()
    followed = await asyncio.gather(*consumers)

    everything = await app.state.db.read(lambda tx: tx.fetch(sql(
        "SELECT id FROM changes ORDER BY id")))
    all_ids = [str(r["id"]) for r in everything]
    history = await app.state.db.read(lambda tx: tx.fetch(sql(
        "SELECT connection_id, from_state, to_state FROM connection_history "
        "WHERE result = 'applied' AND from_state IS DISTINCT FROM to_state ORDER BY id")))
    by_history: dict[str, list[tuple[Any, Any]]] = defaultdict(list)
    for h in history:
        by_history[h["connection_id"]].append((h["from_state"], h["to_state"]))
    for seen in followed:
        assert [c["id"] for c in seen] == all_ids  # every change, once, in id order
        chains: dict[str, list[tuple[Any, Any]]] = defaultdict(list)
        for change in seen:
            if change["type"] == "connection.status_changed":
                chains[change["connectionId"]].append((change["data"]["from"],
                                                       change["data"]["to"]))
        assert chains == by_history
        for chain in chains.values():
            assert all(a[1] == b[0] for a, b in itertools.pairwise(chain))  # in commit order
    assert len(all_ids) > 50


@pytest.mark.postgres
async def test_the_sqlite_and_postgresql_feeds_say_the_same(postgres_url: str,
                                                            tmp_path: Any,
                                                            sqlite_template: Any) -> None:
    # The batch statement and the row path word their changes alike.
    await asyncio.to_thread(truncate_postgres, postgres_url)
    lite = tmp_path / "feed.db"
    lite.write_bytes(sqlite_template.read_bytes())
    company, connection = new_id(), new_id()
    bodies = [(new_message_id(), connection_body(kind, company_id=company,
                                                  connection_id=connection, status=status,
                                                  generated=at(n)))
              for n, (kind, status) in enumerate(LIFE)]
    said = []
    for url in (f"sqlite:///{lite}", postgres_url):
        _, lifespan, client = await start_service(make_settings(url))
        try:
            for message_id, body in bodies:
                response = await client.post("/webhooks/codat", content=body,
                                             headers=sign(body, msg_id=message_id))
                assert response.status_code == 200
            said.append([(c["type"], c["data"]) for c in (await events(client))["results"]])
        finally:
            await client.aclose()
            await lifespan.__aexit__(None, None, None)
    assert said[0] == said[1] and len(said[0]) == 3


def test_cursors_round_trip_and_refuse_what_the_feed_did_not_make() -> None:
    for position in (0, 1, 987654321):
        assert feed.decode_cursor(feed.encode_cursor(position)) == position
    for junk in ("", "f1.", "f1.LTE", "x" * 50, "f2.MQ"):
        with pytest.raises(feed.BadCursor):
            feed.decode_cursor(junk)

