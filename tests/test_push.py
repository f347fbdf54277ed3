"""Push (service/push.py): every change POSTed to each subscriber, signed the Standard Webhooks
way, in order per connection, retried, dead after the limit and retryable, off the delivery
path; against a real subscriber on a loopback port, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
import orjson
import pytest
from standardwebhooks.webhooks import Webhook as StandardWebhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from svix.webhooks import Webhook as SvixWebhook

from service import outbox
from service.app import build_worker
from service.db import utcnow
from service.errors import ConfigError
from service.localserver import running
from service.settings import load_settings
from service.worker import Worker
from tests.conftest import make_settings, start_service
from tests.factories import TOKEN, at, connection_body, new_id, sign

SUB_SECRET = "whsec_" + base64.b64encode(b"the subscriber's own secret here").decode()
LIFE = [("connection.created", "PendingAuth"), ("connection.connected", "Linked"),
        ("connection.disconnected", "Deauthorized")]


@dataclass
class Subscriber:
    """A real HTTP endpoint that verifies what it is pushed, and fails when told to."""

    url: str = ""
    attempts: list[dict[str, Any]] = field(default_factory=list)  # every request, in order
    taken: list[dict[str, Any]] = field(default_factory=list)  # the changes it answered 2xx
    fail: int = 0  # answer 503 to this many requests first
    always: int | None = None  # answer this status to every request
    hang: asyncio.Event | None = None  # hold each request until this is set

    async def receive(self, request: Request) -> Response:
        body = await request.body()
        headers = dict(request.headers)
        StandardWebhook(SUB_SECRET).verify(body, headers)  # raises on a bad signature
        SvixWebhook(SUB_SECRET).verify(body, headers)
        change = orjson.loads(body)
        assert headers["webhook-id"] == f"chg_{change['id']}"
        self.attempts.append(change)
        if self.hang is not None:
            await self.hang.wait()
        if self.always is not None:
            return Response(status_code=self.always)
        if self.fail > 0:
            self.fail -= 1
            return Response(status_code=503, headers={"Retry-After": "0"})
        self.taken.append(change)
        return Response(status_code=204)


@pytest.fixture
async def subscriber() -> AsyncIterator[Subscriber]:
    sub = Subscriber()
    app = Starlette(routes=[Route("/changes", sub.receive, methods=["POST"])])
    async with running(app) as url:
        sub.url = f"{url}/changes"
        yield sub


@dataclass
class Pushing:
    client: httpx.AsyncClient
    worker: Worker
    app: Any

    async def deliver(self, company: str, connection: str, steps: list[tuple[str, str]] = LIFE,
                      start: int = 0) -> None:
        for offset, (kind, status) in enumerate(steps):
            body = connection_body(kind, company_id=company, connection_id=connection,
                                   status=status, generated=at(start + offset))
            response = await self.client.post("/webhooks/codat", content=body,
                                              headers=sign(body))
            assert response.status_code == 200, response.text

    async def drain(self, until: Any = None, rounds: int = 400) -> None:
        """Run the worker until nothing is due (and ``until()`` holds, if given)."""
        idle = 0
        for _ in range(rounds):
            ran = await self.worker.run_once()
            idle = 0 if ran else idle + 1
            if idle >= 3 and (until is None or until()):
                return
            if not ran:
                await asyncio.sleep(0.02)
        raise AssertionError("the outbox never settled")

    async def feed(self) -> list[dict[str, Any]]:
        response = await self.client.get("/v1/events", headers={"authorization":
                                                                 f"Bearer {TOKEN}"})
        results: list[dict[str, Any]] = response.json()["results"]
        return results

    async def jobs(self) -> list[dict[str, Any]]:
        jobs: list[dict[str, Any]] = await self.app.state.db.read(lambda tx: outbox.list_jobs(
            tx, status=None, after="", limit=500))
        return sorted(jobs, key=lambda j: (j["createdAt"], j["id"]))


@pytest.fixture
async def pushing(database_url: str, subscriber: Subscriber,
                  request: pytest.FixtureRequest) -> AsyncIterator[Pushing]:
    overrides = dict(getattr(request, "param", {}))  # shared by the sqlite and postgres runs
    subscription = {"name": "billing", "url": subscriber.url, "secret": SUB_SECRET,
                    **overrides.pop("subscription", {})}
    settings = make_settings(database_url, feed_subscriptions=orjson.dumps([subscription])
                             .decode(), outbox_backoff_base_seconds=0.01,
                             outbox_backoff_max_seconds=0.05, **overrides)
    app, lifespan, client = await start_service(settings)
    push_client = httpx.AsyncClient(timeout=5, trust_env=False)
    worker = build_worker(settings, app.state.db, app.state.codat, app.state.metrics,
                          push_client=push_client)
    try:
        await worker.run_once()  # the subscriber starts here: only what changes next is pushed
        yield Pushing(client, worker, app)
    finally:
        await push_client.aclose()
        await client.aclose()
        await lifespan.__aexit__(None, None, None)


def by_connection(changes: list[dict[str, Any]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for change in changes:
        out.setdefault(change["connectionId"] or change["companyId"], []).append(change["id"])
    return out


async def test_every_change_is_pushed_signed_and_as_the_feed_says_it(
        pushing: Pushing, subscriber: Subscriber) -> None:
    company = new_id()
    for n in range(2):
        await pushing.deliver(company, new_id(), start=n * 10)
    await pushing.drain(lambda: len(subscriber.taken) >= 6)
    feed = await pushing.feed()
    # Each change once, as GET /v1/events says it; a connection's in order (pushes about
    # different connections may overlap: the worker runs several jobs at once).
    assert sorted(subscriber.taken, key=lambda c: int(c["id"])) == feed
    assert by_connection(subscriber.taken) == by_connection(feed)
    pushes = [j for j in await pushing.jobs() if j["kind"] == "push_change"]
    assert len(pushes) == 6 and {j["status"] for j in pushes} == {"done"}


@pytest.mark.parametrize("pushing", [{"outbox_max_attempts": 20}], indirect=True)
async def test_a_subscriber_that_is_down_gets_each_connections_changes_in_order(
        pushing: Pushing, subscriber: Subscriber) -> None:
    subscriber.fail = 7  # down for a while (503 with Retry-After: 0)
    company, first, second = new_id(), new_id(), new_id()
    await pushing.deliver(company, first)
    await pushing.deliver(company, second, start=10)
    await pushing.drain(lambda: len(subscriber.taken) >= 6)
    feed = await pushing.feed()
    assert sorted(c["id"] for c in subscriber.taken) == sorted(c["id"] for c in feed)
    assert by_connection(subscriber.taken) == by_connection(feed)
    # Never a connection's later change before its earlier one was taken: attempts go in order.
    for connection, ids in by_connection(subscriber.attempts).items():
        assert ids == sorted(ids, key=int), connection
    assert len(subscriber.attempts) == 6 + 7


@pytest.mark.parametrize("pushing", [{"outbox_max_attempts": 2}], indirect=True)
async def test_a_push_dies_after_its_attempts_and_can_be_retried(
        pushing: Pushing, subscriber: Subscriber) -> None:
    subscriber.always = 500
    company, connection = new_id(), new_id()
    await pushing.deliver(company, connection, steps=LIFE[:2])
    await pushing.drain()
    pushes = [j for j in await pushing.jobs() if j["kind"] == "push_change"]
    assert [(j["status"], j["attempts"]) for j in pushes] == [("dead", 2), ("dead", 2)]
    assert "answered 500" in pushes[0]["lastError"]
    runs = {s.labels["result"]: s.value for m in pushing.app.state.metrics.job_runs.collect()
            for s in m.samples if s.name.endswith("_total")
            and s.labels["kind"] == "push_change"}
    assert runs == {"retry": 2.0, "dead": 2.0}

    subscriber.always = None  # fixed: on-call retries the dead pushes
    for job in pushes:
        revived = await pushing.app.state.db.write(lambda tx, j=job["id"]: outbox.retry(
            tx, job_id=j, now=utcnow()))
        assert revived == [job["id"]]
    await pushing.drain(lambda: len(subscriber.taken) >= 2)
    assert [c["data"]["to"] for c in subscriber.taken] == ["PendingAuth", "Linked"]


@pytest.mark.parametrize("pushing", [{"subscription": {"types": ["company.deleted"]}}],
                         indirect=True)
async def test_a_subscriber_gets_only_the_types_it_asked_for(
        pushing: Pushing, subscriber: Subscriber) -> None:
    company = new_id()
    await pushing.deliver(company, new_id())
    body = orjson.dumps({"id": new_id(), "eventType": "company.deleted",
                         "generatedDate": "2026-11-01T12:00:30Z",
                         "payload": {"id": company, "name": "Toft stores", "redirect": "x"}})
    response = await pushing.client.post("/webhooks/codat", content=body, headers=sign(body))
    assert response.status_code == 200
    await pushing.drain(lambda: len(subscriber.taken) >= 1)
    assert [c["type"] for c in subscriber.taken] == ["company.deleted"]


async def test_pushes_go_on_while_codat_calls_wait_for_its_rate_limit(
        pushing: Pushing, subscriber: Subscriber) -> None:
    pause = orjson.dumps({"id": new_id(), "eventType": "client.rateLimit.reached",
                          "generatedDate": "2026-11-01T12:00:00Z",
                          "payload": {"dailyQuota": 1000, "quotaRemaining": 0,
                                      "expiryDate": (utcnow() + timedelta(hours=1)).isoformat()}})
    response = await pushing.client.post("/webhooks/codat", content=pause, headers=sign(pause))
    assert response.status_code == 200
    await pushing.deliver(new_id(), new_id(), steps=LIFE[:2])
    await pushing.drain(lambda: len(subscriber.taken) >= 2)
    jobs = await pushing.jobs()
    assert {j["status"] for j in jobs if j["kind"] == "push_change"} == {"done"}
    assert {j["status"] for j in jobs if j["kind"] != "push_change"} == {"pending"}  # waiting


async def test_a_hanging_subscriber_costs_the_receiver_nothing(database_url: str,
                                                               subscriber: Subscriber) -> None:
    subscriber.hang = asyncio.Event()
    subscription = [{"name": "slow", "url": subscriber.url, "secret": SUB_SECRET}]
    settings = make_settings(database_url, worker_enabled=True, worker_poll_seconds=0.01,
                             feed_subscriptions=orjson.dumps(subscription).decode())
    _, lifespan, client = await start_service(settings)
    try:
        await asyncio.sleep(0.2)  # the embedded worker has started its subscriber
        company = new_id()
        for n in range(6):
            body = connection_body("connection.created", company_id=company,
                                   connection_id=new_id(), status="PendingAuth",
                                   generated=at(n))
            response = await asyncio.wait_for(client.post(
                "/webhooks/codat", content=body, headers=sign(body)), 5)
            assert response.status_code == 200
        for _ in range(100):  # the worker is stuck in its first pushes meanwhile
            if subscriber.attempts:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
        # At most one per job it runs at once, and none ever answered.
        assert 1 <= len(subscriber.attempts) <= settings.worker_concurrency
        assert not subscriber.taken
    finally:
        subscriber.hang.set()
        await client.aclose()
        await lifespan.__aexit__(None, None, None)


@pytest.mark.parametrize(("raw", "says"), [
    ("not json", "JSON array"),
    ('{"name": "a"}', "JSON array"),
    ('[{"name": "a", "url": "https://x"}]', "needs name, url, secret"),
    ('[{"name": "A!", "url": "https://x", "secret": "' + SUB_SECRET + '"}]', "name must be"),
    ('[{"name": "a", "url": "http://billing.internal/x", "secret": "' + SUB_SECRET + '"}]',
     "https"),
    ('[{"name": "a", "url": "https://x", "secret": "nope"}]', "whsec_"),
    ('[{"name": "a", "url": "https://x", "secret": "' + SUB_SECRET + '", "types": ["x"]}]',
     "types must be"),
    ('[{"name": "a", "url": "https://x", "secret": "' + SUB_SECRET + '"}, '
     '{"name": "a", "url": "https://y", "secret": "' + SUB_SECRET + '"}]', "unique"),
])
def test_bad_subscriptions_stop_start_up_naming_the_setting(raw: str, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(feed_subscriptions=raw, database_url="sqlite:///x.db")
    assert "FEED_SUBSCRIPTIONS" in str(caught.value) and says in str(caught.value)
    assert SUB_SECRET.removeprefix("whsec_") not in str(caught.value)
