"""Token scopes and the on-call session: a read-only token cannot onboard or unlink; the login
is a POST; the cookie is a signed, expiring session that never carries the token, grants only
the page, and is ``Secure`` when the deployment says it is behind TLS."""

from __future__ import annotations

from collections.abc import AsyncIterator
from http.cookies import SimpleCookie
from typing import Any

import httpx
import pytest
from starlette.requests import Request
from starlette.routing import Route

from service.app import create_app
from service.auth import Scope, TokenAuth
from service.sessions import COOKIE, SESSION_SECONDS, Sessions
from tests.conftest import make_settings
from tests.factories import TOKEN, new_id

READ_TOKEN = "read-only-token-0123456789"


def _codat(request: httpx.Request) -> httpx.Response:
    return httpx.Response(503, json={"error": "down"})


@pytest.fixture
async def make_client(database_url: str) -> AsyncIterator[Any]:
    started: list[tuple[Any, httpx.AsyncClient]] = []

    async def make(base_url: str = "http://test", **overrides: Any) -> httpx.AsyncClient:
        settings = make_settings(database_url, service_read_tokens=READ_TOKEN, **overrides)
        app = create_app(settings, codat_transport=httpx.MockTransport(_codat))
        lifespan = app.router.lifespan_context(app)
        await lifespan.__aenter__()
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base_url)
        client.app = app  # type: ignore[attr-defined]
        started.append((lifespan, client))
        return client

    yield make
    for lifespan, client in reversed(started):
        await client.aclose()
        await lifespan.__aexit__(None, None, None)


def _fill(path: str) -> str:
    return path.replace("{company_id}", new_id()).replace("{connection_id}", new_id()) \
        .replace("{message_id}", "msg_1")


def _routes(client: httpx.AsyncClient, method: str) -> list[str]:
    return [r.path for r in client.app.routes  # type: ignore[attr-defined]
            if isinstance(r, Route) and r.path.startswith("/v1/") and method in (r.methods or ())]


async def test_a_read_token_reads_and_is_403_on_every_write(make_client: Any) -> None:
    client = await make_client()
    read = {"authorization": f"Bearer {READ_TOKEN}"}
    writes = _routes(client, "POST")
    assert len(writes) == 3
    for path in writes:
        response = await client.post(_fill(path), json={"name": "x", "platformKey": "qhyg"},
                                     headers=read)
        assert response.status_code == 403, (path, response.text)
        assert "SERVICE_API_TOKENS" in response.json()["error"]
    for path in _routes(client, "GET"):
        response = await client.get(_fill(path), headers=read)
        assert response.status_code in (200, 404), (path, response.text)
    full = await client.post("/v1/companies", json={"name": "x"},
                             headers={"authorization": f"Bearer {TOKEN}"})
    assert full.status_code not in (401, 403)  # goes on to Codat (down here)


def test_a_token_in_both_settings_is_refused_at_start_up() -> None:
    with pytest.raises(Exception, match="SERVICE_READ_TOKENS"):
        make_settings("sqlite:///x.db", service_read_tokens=f"{READ_TOKEN} {TOKEN}")


def _cookie(response: httpx.Response) -> SimpleCookie:
    jar: SimpleCookie = SimpleCookie()
    jar.load(response.headers["set-cookie"])
    return jar


@pytest.mark.parametrize("token", [TOKEN, READ_TOKEN])
async def test_the_session_cookie_never_carries_the_token(make_client: Any, token: str) -> None:
    client = await make_client()
    response = await client.post("/oncall/login", data={"token": token})
    assert response.status_code == 303
    value = _cookie(response)[COOKIE].value
    assert token not in value and token.encode().hex() not in value
    version, expires, _name, mac = value.split(".")
    assert version == "v1" and len(mac) == 64 and expires.isdigit()
    client.cookies.clear()
    cookie = {"cookie": f"{COOKIE}={value}"}
    assert (await client.get("/oncall", headers=cookie)).status_code == 200
    # The session is for the page only: the API still wants a bearer token.
    assert (await client.get("/v1/connections", headers=cookie)).status_code == 401


async def test_a_tampered_or_foreign_session_is_refused(make_client: Any) -> None:
    client = await make_client()
    value = _cookie(await client.post("/oncall/login", data={"token": TOKEN}))[COOKIE].value
    version, expires, name, mac = value.split(".")
    forged = [f"{version}.{int(expires) + 3600}.{name}.{mac}",  # a longer life
              f"{version}.{expires}.{name}.{'0' * 64}", f"{version}.{expires}.{name}",
              f"v2.{expires}.{name}.{mac}", TOKEN, ""]
    client.cookies.clear()
    for cookie in forged:
        response = await client.get("/oncall", headers={"cookie": f"{COOKIE}={cookie}"})
        assert response.status_code == 401, cookie
    # Once its token is gone from the settings, the session is gone too (rotation).
    rotated = await make_client(service_api_tokens="another-token-0123456789")
    response = await rotated.get("/oncall", headers={"cookie": f"{COOKIE}={value}"})
    assert response.status_code == 401
    assert _cookie(response)[COOKIE]["max-age"] == "0"


def test_a_session_expires() -> None:
    now = [1_000_000.0]
    sessions = Sessions(TokenAuth(frozenset({TOKEN})), path="/oncall", behind_tls=False,
                        clock=lambda: now[0])
    value = sessions.issue(TOKEN)
    assert value is not None and sessions.issue("wrong") is None

    def request() -> Request:
        return Request({"type": "http", "method": "GET", "path": "/oncall",
                        "headers": [(b"cookie", f"{COOKIE}={value}".encode())]})

    assert sessions.scope_of(request()) is Scope.READ  # a session only ever grants reading
    now[0] += SESSION_SECONDS - 1
    assert sessions.scope_of(request()) is Scope.READ
    now[0] += 2
    assert sessions.scope_of(request()) is None


async def test_a_token_in_the_address_is_refused_and_sets_nothing(make_client: Any) -> None:
    client = await make_client()
    response = await client.get("/oncall", params={"token": TOKEN})
    assert response.status_code == 400
    assert "set-cookie" not in response.headers
    assert 'method="post"' in response.text


@pytest.mark.parametrize(("behind_tls", "base_url", "secure"), [
    (False, "http://test", False), (True, "http://test", True), (False, "https://test", True)])
async def test_the_cookie_is_secure_when_the_deployment_says_tls(
        make_client: Any, behind_tls: bool, base_url: str, secure: bool) -> None:
    client = await make_client(base_url, service_behind_tls=behind_tls)
    response = await client.post("/oncall/login", data={"token": TOKEN})
    assert response.status_code == 303
    raw = response.headers["set-cookie"].lower()
    assert ("; secure" in raw) is secure, raw
    assert "httponly" in raw and "samesite=strict" in raw and "path=/oncall" in raw
    logout = await client.post("/oncall/logout")
    assert logout.status_code == 303
    assert _cookie(logout)[COOKIE]["max-age"] == "0"
