"""GET /oncall: auth (bearer, or the login form's session cookie), what the page lists,
escaping, and the page in a real headless Chromium on a loopback port. The session cookie
itself, scopes and ``Secure``: tests/test_oncall_auth.py."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.app import build_worker, create_app
from service.db import utcnow
from service.ingest import examine, new_delivery, record_failure
from service.localserver import running
from service.sessions import COOKIE
from service.settings import Settings
from tests.conftest import Service, make_settings
from tests.debian import installed_or_skip
from tests.factories import TOKEN, at, connection_body, new_id

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
CODAT_ERROR = "<script>alert('codat')</script> not allowed"


def _codat_refuses(request: httpx.Request) -> httpx.Response:
    # Every follow-up call is refused for good (403): its job dies on the first attempt.
    return httpx.Response(403, json={"error": CODAT_ERROR})


def oncall_app(settings: Settings) -> Any:
    """The service's app (the on-call page is one of its routes), with Codat refusing."""
    return create_app(settings, codat_transport=httpx.MockTransport(_codat_refuses))


@pytest.fixture
async def oncall(database_url: str) -> AsyncIterator[Service]:
    """Like the ``service`` fixture (SQLite and PostgreSQL), with /oncall routed."""
    settings = make_settings(database_url)
    app = oncall_app(settings)
    lifespan = app.router.lifespan_context(app)
    await lifespan.__aenter__()
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")
    try:
        yield Service(app, client, settings)
    finally:
        await client.aclose()
        await lifespan.__aexit__(None, None, None)


@dataclass(frozen=True)
class Seeded:
    deauthorized: str  # a connection now Deauthorized
    rejected: str  # a connection with a rejected transition
    unparseable: str  # message ids
    failed: str
    conflict: str
    dead_jobs: list[str]


async def seed(service: Service) -> Seeded:
    """One of everything the page is for, made through the service's own code paths."""
    company, deauthorized, rejected = new_id(), new_id(), new_id()
    for second, (kind, status) in enumerate([("connection.created", "PendingAuth"),
                                             ("connection.connected", "Linked"),
                                             ("connection.disconnected", "Deauthorized")]):
        response = await service.deliver(connection_body(
            kind, company_id=company, connection_id=deauthorized, status=status,
            generated=at(second)))
        assert response.status_code == 200, response.text
    # Linked, then a PendingAuth word dated after it (clocks disagree): never applied, rejected,
    # and a reconcile queued.
    for second, (kind, status) in ((10, ("connection.connected", "Linked")),
                                   (11, ("connection.created", "PendingAuth"))):
        await service.deliver(connection_body(kind, company_id=company, connection_id=rejected,
                                              status=status, generated=at(second)))
    unparseable = f"msg_unparseable_{uuid.uuid4().hex}"
    response = await service.deliver(b'<script>alert("body")</script>', msg_id=unparseable)
    assert response.json()["outcome"] == "unparseable"
    conflict = f"msg_conflict_{uuid.uuid4().hex}"
    assert (await service.deliver(b'{"first": 1}', msg_id=conflict)).status_code == 200
    assert (await service.deliver(b'{"second": "<b>"}', msg_id=conflict)).status_code == 409
    failed = await _failed_delivery(service)
    worker = build_worker(service.settings, service.db, service.app.state.codat)
    # Two confirms and two reconciles: each that asks Codat dies on its first attempt; the
    # deauthorized connection's confirm is done without asking (it is no longer Linked).
    for _ in range(10):
        if not await worker.run_once():
            break
    dead = await service.rows("SELECT id FROM outbox WHERE status = 'dead' ORDER BY id")
    assert len(dead) == 3
    return Seeded(deauthorized, rejected, unparseable, failed, conflict, [r["id"] for r in dead])


async def _failed_delivery(service: Service) -> str:
    # What the receiver keeps when processing raised: the row is written by the same function.
    message_id = f"msg_failed_{uuid.uuid4().hex}"
    body = b'{"id": "e-failed", "eventType": "connection.created"}'
    delivery = new_delivery(message_id=message_id, timestamp=int(utcnow().timestamp()),
                            body=body, secret_id="whsec:test", headers={})
    error = "RuntimeError: <script>alert('failed')</script>"
    examined = examine(body, message_id=message_id, timestamp=delivery.timestamp)
    await service.db.write(lambda tx: record_failure(tx, delivery, examined, error))
    return message_id


def section(page: str, anchor: str) -> str:
    """The HTML of one section of the page: from its heading to the next one."""
    start = page.index(f'<h2 id="{anchor}"')
    end = page.find("<h2 ", start + 1)
    return page[start:] if end == -1 else page[start:end]


def set_cookie(response: httpx.Response) -> SimpleCookie:
    cookie: SimpleCookie = SimpleCookie()
    cookie.load(response.headers["set-cookie"])
    return cookie


# --- auth ----------------------------------------------------------------------------------------

async def test_without_a_token_it_is_401_with_a_login_page(oncall: Service) -> None:
    response = await oncall.client.get("/oncall")
    assert response.status_code == 401
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert '<form method="post"\naction="/oncall/login">' in response.text
    assert "SERVICE_READ_TOKENS" in response.text
    assert "set-cookie" not in response.headers


@pytest.mark.parametrize("how", ["bearer", "form", "cookie", "not ascii"])
async def test_a_wrong_token_is_401(oncall: Service, how: str) -> None:
    if how == "bearer":
        response = await oncall.client.get("/oncall", headers={"authorization": "Bearer nope"})
    elif how == "form":
        response = await oncall.client.post("/oncall/login", data={"token": TOKEN + "x"})
    elif how == "cookie":
        response = await oncall.client.get("/oncall", headers={"cookie": f"{COOKIE}=nope"})
    else:
        response = await oncall.client.post("/oncall/login", data={"token": TOKEN + "é"})
    assert response.status_code == 401
    assert "log in" in response.text
    if how == "cookie":  # a stale cookie is cleared
        assert set_cookie(response)[COOKIE]["max-age"] == "0"
    else:
        assert "set-cookie" not in response.headers


async def test_the_login_form_sets_a_session_cookie_and_redirects(oncall: Service) -> None:
    response = await oncall.client.post("/oncall/login", data={"token": TOKEN})
    assert response.status_code == 303
    assert response.headers["location"] == "/oncall"
    raw = response.headers["set-cookie"].lower()
    assert "httponly" in raw
    assert "samesite=strict" in raw
    assert "path=/oncall" in raw
    session = set_cookie(response)[COOKIE].value
    assert TOKEN not in session
    assert response.headers["cache-control"] == "no-store"

    oncall.client.cookies.clear()
    page = await oncall.client.get("/oncall", headers={"cookie": f"{COOKIE}={session}"})
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "codat-hooks on call" in page.text


async def test_the_redirect_and_cookie_work_like_a_browser(oncall: Service) -> None:
    response = await oncall.client.post("/oncall/login", data={"token": TOKEN},
                                        follow_redirects=True)
    assert [r.status_code for r in response.history] == [303]
    assert response.status_code == 200
    assert str(response.url) == "http://test/oncall"
    again = await oncall.client.get("/oncall")  # the jar sends the cookie
    assert again.status_code == 200


async def test_a_bearer_header_works_too_and_the_page_is_get_only(oncall: Service) -> None:
    response = await oncall.get("/oncall")
    assert response.status_code == 200
    assert "default-src 'none'" in response.headers["content-security-policy"]
    assert section(response.text, "dead").count("None.") == 1  # an empty database
    bearer = {"authorization": f"Bearer {TOKEN}"}
    assert (await oncall.client.post("/oncall", headers=bearer)).status_code == 405


# --- what the page shows -------------------------------------------------------------------------

async def test_the_page_lists_what_on_call_needs(oncall: Service) -> None:
    seeded = await seed(oncall)
    page = (await oncall.get("/oncall")).text

    summary = section(page, "summary")
    assert "Deauthorized<b>1</b>" in summary
    assert "Linked<b>1</b>" in summary
    assert "jobs dead<b>3</b>" in section(page, "jobs")
    assert "jobs done<b>1</b>" in section(page, "jobs")  # the confirm Codat was not asked

    not_linked = section(page, "connections")
    assert seeded.deauthorized in not_linked
    assert '<span class="b bad">Deauthorized</span>' in not_linked
    assert seeded.rejected not in not_linked  # Linked

    transitions = section(page, "transitions")
    assert transitions.index(seeded.rejected) < transitions.index(seeded.deauthorized)  # newest
    assert '<span class="b bad">rejected</span>' in transitions
    assert "Linked never becomes PendingAuth" in transitions

    deliveries = section(page, "deliveries")
    assert '<span class="b bad">unparseable</span>' in deliveries
    assert deliveries.index(seeded.failed) < deliveries.index(seeded.unparseable)  # newest first

    conflicts = section(page, "conflicts")
    assert seeded.conflict in conflicts
    assert "&quot;second&quot;: &quot;&lt;b&gt;&quot;" in conflicts

    dead = section(page, "dead")
    for job_id in seeded.dead_jobs:
        assert job_id in dead
    assert "Codat get-connection answered 403" in dead


async def test_everything_from_outside_is_escaped(oncall: Service) -> None:
    await seed(oncall)
    page = (await oncall.get("/oncall")).text
    assert "<script" not in page.lower()  # the page has no script of its own either
    assert '"<b>"' not in page  # the conflicting body
    assert "&lt;script&gt;alert(&quot;body&quot;)&lt;/script&gt;" in section(page, "deliveries")
    assert "&lt;script&gt;alert(&#x27;failed&#x27;)&lt;/script&gt;" in section(page, "deliveries")
    assert "&lt;script&gt;alert(&#x27;codat&#x27;)&lt;/script&gt;" in section(page, "dead")


# --- a real browser ------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's Chromium, installed with apt-get when missing and possible; else a clean skip."""
    pytest.importorskip(  # nothing to install a browser for without its driver
        "playwright.async_api", reason="playwright is in the dev extras: pip install -e .[dev]")
    return installed_or_skip(CHROMIUM, "chromium")


@pytest.fixture
def sqlite_url(sqlite_template: Path, tmp_path: Path) -> str:
    path = tmp_path / "oncall.db"
    shutil.copy(sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.mark.slow
async def test_the_page_in_a_real_browser(chromium: Path, sqlite_url: str,
                                          tmp_path: Path) -> None:
    playwright = pytest.importorskip(
        "playwright.async_api", reason="playwright is in the dev extras: pip install -e .[dev]")
    settings = make_settings(sqlite_url)
    app = oncall_app(settings)
    async with asyncio.timeout(60), running(app) as base, \
            httpx.AsyncClient(base_url=base, timeout=5) as client:
        seeded = await seed(Service(app, client, settings))
        async with playwright.async_playwright() as driver:
            browser = await driver.chromium.launch(executable_path=str(chromium),
                                                   args=CHROMIUM_ARGS, timeout=20_000)
            try:
                await _logged_in(browser, base, seeded, tmp_path / "oncall.png")
                await _logged_out(browser, base)
            finally:
                await browser.close()


async def _logged_in(browser: Any, base: str, seeded: Seeded, screenshot: Path) -> None:
    context = await browser.new_context(viewport={"width": 1440, "height": 900})
    page = await context.new_page()
    page.set_default_timeout(5_000)
    assert (await page.goto(f"{base}/oncall")).status == 401
    await page.locator("input[name=token]").fill(TOKEN)
    async with page.expect_navigation():
        await page.locator("button").click()
    assert page.url == f"{base}/oncall"
    not_linked = await page.locator("#connections + table").inner_text()
    assert seeded.deauthorized in not_linked
    assert "Deauthorized" in not_linked
    dead = await page.locator("#dead + table").inner_text()
    assert seeded.dead_jobs[0] in dead
    assert "<script>alert('codat')</script>" in dead  # shown as text, never run
    cookies = await context.cookies()
    assert [(c["name"], c["httpOnly"], c["sameSite"], c["path"]) for c in cookies] == \
        [(COOKIE, True, "Strict", "/oncall")]
    await page.screenshot(path=str(screenshot), full_page=True)
    data = screenshot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(data) > 10_000
    await context.close()


async def _logged_out(browser: Any, base: str) -> None:
    context = await browser.new_context()
    page = await context.new_page()
    page.set_default_timeout(5_000)
    response = await page.goto(f"{base}/oncall")
    assert response.status == 401
    assert "log in" in await page.locator("h1").inner_text()
    await page.locator("input[name=token]").fill(TOKEN)  # the login form needs no script
    await page.locator("button").click()
    await page.wait_for_url(f"{base}/oncall")
    assert await page.locator("#summary").inner_text() == "Connections by state"
    await context.close()
