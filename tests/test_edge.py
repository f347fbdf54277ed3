"""Hostile input at the API's edge: ids that cannot be Codat's, text PostgreSQL cannot hold,
paths that would steer our Codat calls, crafted metric labels, the readiness probe's answer
and a Codat URL that is not https."""

from __future__ import annotations

import logging
import subprocess
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.routing import Route

from service.codat import CodatClient
from service.localserver import free_port
from service.settings import load_settings
from tests.conftest import Service, make_settings, start_service
from tests.factories import TOKEN, new_id
from tests.processes import codat_hooks_command, service_env

AUTH = {"authorization": f"Bearer {TOKEN}"}


class Recorder:
    """A Codat that records every call it gets (and answers 500)."""

    def __init__(self) -> None:
        self.calls: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls.append(request)
        return httpx.Response(500, json={"error": "recorded"})


@pytest.fixture
async def offline() -> Any:
    """The app on a PostgreSQL address where nothing listens, with a recording Codat: an answer
    other than 503 means no database I/O happened, an empty recording that Codat was not called."""
    from service.app import create_app

    recorder = Recorder()
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    app = create_app(make_settings(url), codat_transport=httpx.MockTransport(recorder))
    lifespan = app.router.lifespan_context(app)
    await lifespan.__aenter__()
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test",
                               headers=AUTH)
    try:
        yield client, recorder
    finally:
        await client.aclose()
        await lifespan.__aexit__(None, None, None)


NOT_IDS = ["not-a-uuid", "x%3Fa=b", "%2E%2E", "%00", "a%0Ab",
           "0f8fad5b-d9cb-469f-a165-70867728950", "0f8fad5b-d9cb-469f-a165-70867728950e0"]


@pytest.mark.parametrize("bad", NOT_IDS)
async def test_an_id_that_cannot_be_codats_is_404_before_any_io(offline: Any, bad: str) -> None:
    client, recorder = offline
    good = new_id()
    for method, path in [
            ("GET", f"/v1/companies/{bad}"), ("GET", f"/v1/companies/{bad}/connections"),
            ("GET", f"/v1/connections/{bad}"), ("GET", f"/v1/connections/{bad}/history"),
            ("POST", f"/v1/companies/{bad}/connections"),
            ("POST", f"/v1/companies/{bad}/connections/{good}/unlink"),
            ("POST", f"/v1/companies/{good}/connections/{bad}/unlink")]:
        response = await client.request(method, path, json={"platformKey": "qhyg"})
        assert response.status_code == 404, (method, path, response.text)
    assert recorder.calls == []
    # A real id goes on to the database, which is down here: 503, proving the 404 came first.
    assert (await client.get(f"/v1/companies/{good}")).status_code == 503


async def test_a_delivery_id_with_nul_or_over_255_characters_is_404(offline: Any) -> None:
    client, _ = offline
    for bad in ("%00", "msg_%00x", "m" * 256, "a%1Bb"):
        response = await client.get(f"/v1/deliveries/{bad}")
        assert response.status_code == 404, (bad, response.text)


@pytest.mark.parametrize("query", [{"platformKey": "\x00"}, {"companyId": "a\x00"},
                                   {"status": "Linked\x00"}, {"cursor": "\x00"},
                                   {"\x00": "1"}])
async def test_nul_in_a_query_parameter_is_422(service: Service, query: dict[str, str]) -> None:
    response = await service.client.get("/v1/connections", params=query, headers=AUTH)
    assert response.status_code == 422, response.text
    assert "cannot be stored" in response.json()["error"]


async def test_nul_in_a_path_is_404_on_every_database(service: Service) -> None:
    for path in ("/v1/companies/%00", "/v1/connections/%00/history", "/v1/deliveries/%00",
                 "/v1/companies/%00/connections"):
        response = await service.client.get(path, headers=AUTH)
        assert response.status_code == 404, (path, response.text)


@pytest.mark.parametrize("body", [
    {"name": "Toft\x00stores"}, {"name": "Toft", "description": "\x00"},
    {"name": "Toft", "tags": {"k\x00": "v"}}, {"name": "Toft", "tags": {"k": "v\x00"}}])
async def test_nul_in_an_onboarding_body_is_422_and_codat_is_not_called(
        offline: Any, body: dict[str, Any]) -> None:
    client, recorder = offline
    response = await client.post("/v1/companies", json=body)
    # The body is read after the rate-limit pause check, which reads the (absent) database.
    assert response.status_code in (422, 503), response.text
    assert recorder.calls == []


async def test_nul_in_an_onboarding_body_is_422(database_url: str) -> None:
    from service.app import create_app

    recorder = Recorder()
    app = create_app(make_settings(database_url), codat_transport=httpx.MockTransport(recorder))
    lifespan = app.router.lifespan_context(app)
    await lifespan.__aenter__()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://test", headers=AUTH) as api:
            for body in ({"name": "Toft\x00stores"}, {"name": "T", "tags": {"k": "\x00"}}):
                response = await api.post("/v1/companies", json=body)
                assert response.status_code == 422, response.text
                assert "cannot be stored" in response.json()["error"]
            reason = await api.post(f"/v1/companies/{new_id()}/connections/{new_id()}/unlink",
                                    json={"reason": "a\x00b"})
            assert reason.status_code == 422, reason.text
            key = await api.post("/v1/companies", json={"name": "T"},
                                 headers={"Idempotency-Key": "k" * 256})
            assert key.status_code == 422, key.text
            companies = await api.get("/v1/connections")
            assert companies.json()["results"] == []
        assert recorder.calls == []
    finally:
        await lifespan.__aexit__(None, None, None)


# --- what is sent to Codat ----------------------------------------------------------------------

async def test_every_path_segment_sent_to_codat_is_encoded() -> None:
    seen: list[bytes] = []

    def codat(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.raw_path)
        return httpx.Response(200, json={"id": "c", "status": "Linked", "name": "n"})

    client = CodatClient(api_key="k", base_url="https://codat.test",
                         transport=httpx.MockTransport(codat))
    try:
        await client.create_connection("x?a=b/../y#z", platform_key="qhyg", idempotency_key="i")
        await client.get_connection("a/b", "c d")
        await client.unlink_connection("%2e%2e", "..x", idempotency_key="i")
        for dots in ("..", ".", ""):
            with pytest.raises(ValueError, match="not a Codat id"):
                await client.get_company(dots)
    finally:
        await client.aclose()
    assert seen == [b"/companies/x%3Fa%3Db%2F..%2Fy%23z/connections",
                    b"/companies/a%2Fb/connections/c%20d",
                    b"/companies/%252e%252e/connections/..x"]


# --- metric labels ------------------------------------------------------------------------------

async def test_metric_route_labels_are_route_templates_whatever_the_path(
        service: Service) -> None:
    crafted = ["/v1/connections/v1/history", "/v1/companies/v1", "/v1/companies/companies",
               f"/v1/connections/{new_id()}/history", "/v1/deliveries/v1",
               "/v1/deliveries/deliveries", "/oncall", "/nothing/here"]
    for path in crafted:
        await service.client.get(path, headers=AUTH)
    text = (await service.client.get("/metrics")).text
    labels = {s.labels["route"] for family in text_string_to_metric_families(text)
              for s in family.samples if "route" in s.labels}
    templates = {r.path for r in service.app.routes if isinstance(r, Route)}
    assert labels <= templates | {"unmatched"}, labels - templates
    assert "/v1/connections/{connection_id}/history" in labels


# --- /readyz --------------------------------------------------------------------------------------

@pytest.mark.postgres
async def test_readyz_is_503_with_a_generic_reason_when_the_login_is_refused(
        postgres_url: str, caplog: pytest.LogCaptureFixture) -> None:
    role = f"nobody_{uuid.uuid4().hex[:8]}"
    url = postgres_url.replace("postgres@", f"{role}@", 1)
    _app, lifespan, client = await start_service(make_settings(url))
    try:
        with caplog.at_level(logging.INFO, logger="codat_hooks"):
            ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json() == {"ready": False, "reason": "database unreachable"}
        assert role not in ready.text
        assert any(role in str(getattr(r, "fields", {}).get("error")) for r in caplog.records)
        assert (await client.get("/healthz")).status_code == 200
    finally:
        await client.aclose()
        await lifespan.__aexit__(None, None, None)


# --- CODAT_BASE_URL -------------------------------------------------------------------------------

@pytest.mark.parametrize(("url", "ok"), [
    ("https://api.codat.io", True), ("http://127.0.0.1:8100", True),
    ("http://localhost:8100", True), ("http://[::1]:8100", True), ("http://127.8.9.10", True),
    ("http://api.codat.io", False),
    ("http://10.0.0.5:8100", False), ("http://localhost.evil.test", False), ("ftp://x", False),
    ("api.codat.io", False)])
def test_codat_base_url_is_https_unless_loopback(url: str, ok: bool) -> None:
    if ok:
        assert load_settings(codat_base_url=url, _env_file=None).codat_base_url == url
    else:
        with pytest.raises(Exception, match="CODAT_BASE_URL"):
            load_settings(codat_base_url=url, _env_file=None)


def test_serve_refuses_to_start_with_a_plain_http_codat(tmp_path: Path) -> None:
    env = service_env(codat_webhook_secrets="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                      codat_api_key="a-real-key", codat_base_url="http://api.codat.io",
                      database_url=f"sqlite:///{tmp_path}/x.db")
    done = subprocess.run([*codat_hooks_command(), "serve", "--port", str(free_port())],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode != 0
    assert "CODAT_BASE_URL" in done.stderr and "https" in done.stderr
    assert "a-real-key" not in done.stderr + done.stdout
