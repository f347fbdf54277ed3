"""/metrics in Prometheus format: what on-call graphs and alerts on."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.app import build_worker, create_app
from service.recent import MinuteCounts
from tests.conftest import Service, make_settings, start_service
from tests.factories import SECRET_2, at, connection_body, iso, new_id, sign


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(metrics: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
          **labels: str) -> float:
    return metrics.get((name, frozenset(labels.items())), 0.0)


async def test_metrics_count_deliveries_refusals_secrets_and_transitions(
        service: Service) -> None:
    company, connection = new_id(), new_id()
    created = connection_body("connection.created", company_id=company,
                              connection_id=connection, status="PendingAuth", generated=at(0))
    headers = sign(created)
    await service.client.post("/webhooks/codat", content=created, headers=headers)
    await service.client.post("/webhooks/codat", content=created, headers=headers)  # duplicate
    await service.deliver(connection_body("connection.connected", company_id=company,
                                          connection_id=connection, status="Linked",
                                          generated=at(1)), secret=SECRET_2)
    await service.client.post("/webhooks/codat", content=b"{}", headers={"svix-id": "x"})
    await service.client.post("/webhooks/codat", content=created,
                              headers={**sign(created), "svix-signature": "v1,garbage"})

    response = await service.client.get("/metrics")  # no token: scraped by Prometheus
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    m = samples(response.text)
    assert value(m, "codat_hooks_deliveries_total", outcome="processed",
                 disposition="stored") == 2
    assert value(m, "codat_hooks_deliveries_total", outcome="processed",
                 disposition="duplicate") == 1
    assert value(m, "codat_hooks_deliveries_rejected_total", reason="MissingHeaders") == 1
    assert value(m, "codat_hooks_deliveries_rejected_total", reason="malformed_signature") == 1
    first, second = (s.id for s in service.settings.webhook_secrets)
    assert value(m, "codat_hooks_verified_by_secret_total", secret_id=first) == 2
    assert value(m, "codat_hooks_verified_by_secret_total", secret_id=second) == 1
    assert value(m, "codat_hooks_transitions_total", from_state="none",
                 to_state="PendingAuth", result="applied", source="webhook") == 1
    assert value(m, "codat_hooks_transitions_total", from_state="PendingAuth",
                 to_state="Linked", result="applied", source="webhook") == 1
    # Outbox: the confirm job is pending and due.
    assert value(m, "codat_hooks_outbox_jobs", status="pending") == 1
    assert value(m, "codat_hooks_outbox_oldest_due_age_seconds") >= 0
    # Latency by route template, not by raw path.
    assert value(m, "codat_hooks_request_seconds_count", route="/webhooks/codat",
                 status="2xx") == 3
    assert value(m, "codat_hooks_request_seconds_count", route="/webhooks/codat",
                 status="4xx") == 2
    await service.get(f"/v1/connections/{connection}")
    m = samples((await service.client.get("/metrics")).text)
    assert value(m, "codat_hooks_request_seconds_count", route="/v1/connections/{connection_id}",
                 status="2xx") == 1


async def test_metrics_count_codat_calls_and_the_remaining_quota(database_url: str) -> None:
    def codat(request: httpx.Request) -> httpx.Response:
        connection = {"id": request.url.path.rsplit("/", 1)[-1], "status": "Deauthorized",
                      "integrationKey": "qhyg", "platformName": "QuickBooks Online"}
        return httpx.Response(200, json=connection, headers={"X-Rate-Limit-Remaining": "977"})

    settings = make_settings(database_url)
    app = create_app(settings, codat_transport=httpx.MockTransport(codat))
    lifespan = app.router.lifespan_context(app)
    await lifespan.__aenter__()
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")
    try:
        body = connection_body("connection.disconnected", company_id=new_id(),
                               connection_id=new_id(), status="Deauthorized", generated=at(0))
        await client.post("/webhooks/codat", content=body, headers=sign(body))  # -> reconcile
        worker = build_worker(settings, app.state.db, app.state.codat, app.state.metrics)
        assert await worker.run_once() == 1
        m = samples((await client.get("/metrics")).text)
        assert value(m, "codat_hooks_codat_calls_total", endpoint="get-connection",
                     status="200") == 1
        assert value(m, "codat_hooks_codat_quota_remaining") == 977
        assert value(m, "codat_hooks_job_runs_total", kind="reconcile_connection",
                     result="done") == 1
        assert value(m, "codat_hooks_outbox_jobs", status="done") == 1
    finally:
        await client.aclose()
        await lifespan.__aexit__(None, None, None)


async def test_unmatched_paths_share_one_label(database_url: str) -> None:
    _app, lifespan, client = await start_service(make_settings(database_url))
    try:
        for n in range(5):
            await client.get(f"/no/such/path/{n}")
        m = samples((await client.get("/metrics")).text)
        assert value(m, "codat_hooks_request_seconds_count", route="unmatched",
                     status="4xx") == 5
        assert not any("/no/such" in dict(labels).get("route", "") for _, labels in m)
    finally:
        await client.aclose()
        await lifespan.__aexit__(None, None, None)


def rate_limit_reached(seconds: float) -> bytes:
    expiry = datetime.now(UTC) + timedelta(seconds=seconds)
    return orjson.dumps({
        "id": new_id(), "eventType": "client.rateLimit.reached",
        "generatedDate": iso(datetime.now(UTC)),
        "payload": {"dailyQuota": 1000, "quotaRemaining": 0, "expiryDate": iso(expiry)}})


async def test_ready_gauge_and_codats_pause_are_read_at_each_scrape(service: Service) -> None:
    m = samples((await service.client.get("/metrics")).text)
    assert value(m, "codat_hooks_ready") == 1
    assert value(m, "codat_hooks_codat_paused_seconds") == 0
    assert (await service.deliver(rate_limit_reached(600))).status_code == 200
    m = samples((await service.client.get("/metrics")).text)
    assert 590 < value(m, "codat_hooks_codat_paused_seconds") <= 600


async def test_ready_gauge_is_0_while_migrations_are_behind(tmp_path: Path) -> None:
    # A database no migration has touched: /readyz says 503, and the gauge says 0.
    _app, lifespan, client = await start_service(make_settings(
        f"sqlite:///{tmp_path / 'fresh.db'}"))
    try:
        assert (await client.get("/readyz")).status_code == 503
        m = samples((await client.get("/metrics")).text)
        assert ("codat_hooks_ready", frozenset()) in m
        assert value(m, "codat_hooks_ready") == 0
    finally:
        await client.aclose()
        await lifespan.__aexit__(None, None, None)


async def test_the_worker_heartbeat_is_a_timestamp_while_it_runs_and_gone_after(
        service: Service) -> None:
    worker = build_worker(service.settings, service.db, service.app.state.codat,
                          service.app.state.metrics, worker_id="w-heartbeat")
    stop = asyncio.Event()
    m = samples((await service.client.get("/metrics")).text)
    assert not any(name == "codat_hooks_worker_heartbeat_timestamp_seconds" for name, _ in m)
    task = asyncio.create_task(worker.run(stop))
    try:
        await asyncio.sleep(0.1)
        before = time.time()
        await asyncio.sleep(service.settings.worker_poll_seconds + 0.2)  # another round
        m = samples((await service.client.get("/metrics")).text)
        beat = value(m, "codat_hooks_worker_heartbeat_timestamp_seconds",
                     worker_id="w-heartbeat")
        assert before <= beat <= time.time()
    finally:
        stop.set()
        await task
    m = samples((await service.client.get("/metrics")).text)
    assert not any(name == "codat_hooks_worker_heartbeat_timestamp_seconds" for name, _ in m)


async def test_refusals_are_counted_per_minute_for_the_page(service: Service) -> None:
    body = b'{"id": "x"}'
    for _ in range(3):
        await service.client.post("/webhooks/codat", content=body,
                                  headers={**sign(body), "svix-signature": "v1,garbage"})
    await service.client.post("/webhooks/codat", content=body, headers={"svix-id": "x"})
    recent = service.app.state.metrics.recent_refusals
    now = time.time()
    per_minute = recent.per_minute(since=now - 120, until=now)
    totals: dict[str, int] = {}
    for counts in per_minute.values():
        for reason, n in counts.items():
            totals[reason] = totals.get(reason, 0) + n
    assert totals == {"malformed_signature": 3, "MissingHeaders": 1}
    assert recent.per_minute(since=now - 7200, until=now - 3600) == {}


def test_minute_counts_forget_what_is_older_than_their_window() -> None:
    counts = MinuteCounts(minutes=10)
    counts.add("a", at=0)
    counts.add("a", at=30)
    counts.add("b", at=65)
    assert counts.per_minute(since=0, until=120) == {0: {"a": 2}, 1: {"b": 1}}
    counts.add("c", at=60 * 11)  # minute 11: minutes 0 and 1 are out of the window
    assert counts.per_minute(since=0, until=60 * 12) == {11: {"c": 1}}


async def test_the_webhook_route_answered_directly_still_answers_a_bug_with_500_and_counts_it(
        service: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    # POST /webhooks/codat skips the router (service/timing.py); an exception the receiver
    # does not answer itself still meets the server-error middleware, and the latency metric.
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug in the parser")
    monkeypatch.setattr("service.receiver.examine", broken)
    body = connection_body("connection.created", company_id=new_id(), connection_id=new_id(),
                           status="PendingAuth", generated=at(0))
    transport = httpx.ASGITransport(app=service.app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        answer = await client.post("/webhooks/codat", content=body, headers=sign(body))
        assert answer.status_code == 500
        # Another method on the same path goes through the router, as any other route.
        wrong = await client.get("/webhooks/codat")
        assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"
    m = samples((await service.client.get("/metrics")).text)
    assert value(m, "codat_hooks_request_seconds_count", route="/webhooks/codat",
                 status="5xx") == 1
    assert await service.count("deliveries") == 0  # nothing acknowledged, nothing stored
