"""Every on-call page in a real headless Chromium, on a database of realistic size: the
benchmark's data set (deploy/bench/workload.py) at 20,000 deliveries and 2,000 connections,
plus failures, conflicts, dead jobs and an hour of fresh traffic made through the service.
It checks what a person would (names, links between pages, the search finding each kind of
id, the charts drawn with data, no script and no CSP complaint) and saves a screenshot of
every page under ``test-artifacts/oncall/`` (or ``$TEST_ARTIFACTS/oncall/``).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from service.localserver import running
from tests.conftest import Service, make_settings
from tests.factories import SECRET, TOKEN, at, connection_body, new_id, sign
from tests.test_oncall_page import CHROMIUM_ARGS, Seeded, chromium, oncall_app, seed  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS", ROOT / "test-artifacts")) / "oncall"
sys.path.insert(0, str(ROOT / "deploy" / "bench"))
import workload  # noqa: E402

pytestmark = pytest.mark.slow
DELIVERIES, CONNECTIONS = 20_000, 2_000
SIZES = {"desktop": {"width": 1440, "height": 900}, "laptop": {"width": 1280, "height": 800},
         "phone": {"width": 390, "height": 844}}


def load(path: Path) -> dict[str, int]:
    """The benchmark's large data set, at a smaller scale, written straight into ``path``."""
    rows = workload.LargeRows(DELIVERIES, CONNECTIONS, SECRET, seed=11)
    conn = sqlite3.connect(path, isolation_level=None)

    def lite(value: Any) -> Any:  # how codat-hooks keeps datetimes in SQLite
        return value.strftime("%Y-%m-%d %H:%M:%S.%f") if isinstance(value, datetime) else value
    conn.execute("BEGIN")
    for table, chunk in rows.build():
        columns = workload.COLUMNS[table]
        conn.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
                         f"({', '.join('?' * len(columns))})",
                         [tuple(lite(v) for v in r) for r in chunk])
    conn.execute("COMMIT")
    conn.close()
    return rows.by_status


async def fresh_traffic(service: Service) -> str:
    """An hour's worth of fresh deliveries for a few named companies; one company's id."""
    first = ""
    for n in range(40):
        company, connection = new_id(), new_id()
        first = first or company
        for second, (kind, status) in enumerate([("connection.created", "PendingAuth"),
                                                 ("connection.connected", "Linked")]):
            body = orjson.loads(connection_body(
                kind, company_id=company, connection_id=connection, status=status,
                generated=at(1000 + n * 10 + second)))
            body["payload"]["referenceCompany"]["name"] = f"Harbour Foods {n}"
            response = await service.deliver(orjson.dumps(body))
            assert response.status_code == 200
    body = b'{"id": "refused"}'
    for _ in range(5):  # a rotated secret's first refusals
        await service.client.post("/webhooks/codat", content=body,
                                  headers={**sign(body), "svix-signature": "v1,bad"})
    return first


@pytest.fixture
def big_sqlite(sqlite_template: Path, tmp_path: Path) -> str:
    path = tmp_path / "oncall-big.db"
    shutil.copy(sqlite_template, path)
    load(path)
    return f"sqlite:///{path}"


async def test_every_page_in_a_real_browser(chromium: Path,  # noqa: F811
                                            big_sqlite: str) -> None:
    playwright = pytest.importorskip("playwright.async_api")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    settings = make_settings(big_sqlite)
    app = oncall_app(settings)
    async with asyncio.timeout(120), running(app) as base, \
            httpx.AsyncClient(base_url=base, timeout=10) as client:
        service = Service(app, client, settings)
        seeded = await seed(service)
        await fresh_traffic(service)
        async with playwright.async_playwright() as driver:
            browser = await driver.chromium.launch(executable_path=str(chromium),
                                                   args=CHROMIUM_ARGS, timeout=20_000)
            try:
                await _walk(browser, base, seeded, an_event(big_sqlite))
                for size in ("laptop", "phone"):
                    await _home_at(browser, base, size)
            finally:
                await browser.close()
    shots = sorted(p.name for p in ARTIFACTS.glob("*.png"))
    assert len(shots) >= 12, shots


class Visit:
    """One logged-in browser tab that records console errors (a CSP refusal is one)."""

    def __init__(self, page: Any, base: str) -> None:
        self.page, self.base, self.errors = page, base, []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)

    async def go(self, path: str) -> Any:
        response = await self.page.goto(self.base + path)
        assert response.status == 200, (path, response.status)
        return response

    async def log_in(self) -> None:
        """The login form, as a person fills it in (it needs no script)."""
        assert (await self.page.goto(f"{self.base}/oncall")).status == 401
        await self.page.locator("input[name=token]").fill(TOKEN)
        async with self.page.expect_navigation():
            await self.page.locator("button").click()
        assert self.page.url == f"{self.base}/oncall"
        # Chromium reports the login page's 401 as a failed load; nothing else may fail.
        assert all("401" in e for e in self.errors), self.errors
        self.errors.clear()

    async def shot(self, name: str) -> None:
        path = ARTIFACTS / f"{name}.png"
        await self.page.screenshot(path=str(path), full_page=True)
        data = path.read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 10_000, name
        assert not self.errors, self.errors
        assert await self.page.locator("script").count() == 0

    async def search(self, text: str) -> None:
        await self.page.locator("input[name=q]").fill(text)
        await self.page.locator("header button").click()
        await self.page.wait_for_load_state()


def an_event(url: str) -> tuple[str, str]:
    """(event id, message id) of a stored delivery of the data set."""
    conn = sqlite3.connect(url.removeprefix("sqlite:///"))
    try:
        row = conn.execute("SELECT event_id, message_id FROM deliveries "
                           "WHERE event_type = 'connection.connected' LIMIT 1").fetchone()
    finally:
        conn.close()
    return str(row[0]), str(row[1])


async def _walk(browser: Any, base: str, seeded: Seeded, event: tuple[str, str]) -> None:
    context = await browser.new_context(viewport=SIZES["desktop"])
    page = await context.new_page()
    page.set_default_timeout(10_000)
    v = Visit(page, base)
    await v.log_in()

    # The home page: states, charts drawn with data, names beside ids.
    summary = await page.locator(".cards").first.inner_text()
    assert "Linked" in summary and "Deauthorized" in summary
    for label in ("deliveries per minute by outcome, last hour",
                  "deliveries per quarter hour by outcome, last 24 hours",
                  "refusals by reason, last 24 hours",
                  "transitions by target state, last 24 hours"):
        chart = page.locator(f'svg[aria-label="{label}"]')
        assert int(await chart.get_attribute("data-bars")) > 0, label
        box = await chart.bounding_box()
        assert box is not None and box["width"] > 300 and box["height"] > 80, label
    transitions = await page.locator("#transitions + table").inner_text()
    assert "Harbour Foods 39" in transitions
    await v.shot("01-home")

    # From a name in a list to the company's page, then to a delivery of its timeline.
    link = page.locator("#transitions + table a.name").first
    name = await link.inner_text()
    assert name.startswith("Harbour Foods ")
    await link.click()
    await page.wait_for_url(f"{base}/oncall/companies/*")
    assert await page.locator("h2#company").inner_text() == name
    timeline = await page.locator("#timeline + table").inner_text()
    assert "PendingAuth → Linked" in timeline and "confirm_connection" in timeline
    assert "codat-hooks reconcile --company" in await page.locator("#commands + pre").inner_text()
    await v.shot("02-company")
    await page.locator("#timeline + table td a").first.click()
    await page.wait_for_url(f"{base}/oncall/deliveries/*")
    assert '"eventType"' in await page.locator("#body + pre").inner_text()
    await v.shot("03-delivery")

    # The search, through its form, for each kind of id and a name's start.
    [dead_job] = seeded.dead_jobs[:1]
    for text, lands, name in (
            (event[0], f"/oncall/deliveries/{event[1]}", "04-search-event"),
            (seeded.deauthorized, "/oncall/companies/", "04-search-connection-toft"),
            (seeded.failed, f"/oncall/deliveries/{seeded.failed}", "05-search-message"),
            (dead_job, "/oncall/companies/", "06-search-job")):
        await v.search(text)
        assert page.url.startswith(base + lands), (text, page.url)
        if text == seeded.deauthorized:  # the seeded company's story: not ready, and why
            assert await page.locator("h2#company").inner_text() == "Toft stores"
            story = await page.locator("#timeline + table").inner_text()
            assert "Linked → Deauthorized" in story and "rejected" in story
            assert "not ready" in await page.locator("dl").first.inner_text()
            assert "readiness not checked yet" in await page.locator("ul.why").inner_text()
        await v.shot(name)
    await v.search("company 100001")
    results = await page.locator("#results + p + table").inner_text()
    assert "Company 1000010 Ltd" in results and "Company 1000019 Ltd" in results
    await v.shot("07-search-name")

    # The long lists, a page at a time.
    await v.go("/oncall/connections?state=Deauthorized")
    first = await page.locator("tbody").inner_text()
    await v.shot("08-list-deauthorized")
    await page.get_by_text("older »").click()
    await page.wait_for_load_state()
    assert await page.locator("tbody").inner_text() != first
    await v.shot("09-list-deauthorized-page-2")
    for path, name in (("/oncall/transitions", "10-list-transitions"),
                       ("/oncall/deliveries?outcome=failed", "11-list-failed"),
                       ("/oncall/jobs?status=dead", "12-list-dead-jobs"),
                       ("/oncall/conflicts", "13-list-conflicts")):
        await v.go(path)
        assert await page.locator("tbody tr").count() >= 1, path
        await v.shot(name)
    await context.close()


async def _home_at(browser: Any, base: str, size: str) -> None:
    context = await browser.new_context(viewport=SIZES[size])
    page = await context.new_page()
    v = Visit(page, base)
    await v.log_in()
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= SIZES[size]["width"] + 1, f"the page scrolls sideways at {size}"
    await v.shot(f"14-home-{size}")
    await context.close()
