"""``codat-hooks demo``: the whole onboarding flow against the sandbox, on loopback, in seconds.

Starts the sandbox (a local Codat) and the service side by side, then acts as the fintech's
internal service and as the SMB: create a company, create a QuickBooks Online connection, open
the linkUrl and authorize, watch the webhook turn the connection Linked and the follow-ups make
the company ready for Bill Pay, query the state, unlink, and show the history.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import secrets
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import httpx

from service.app import create_app
from service.localserver import listening_socket, running, url_of
from service.migrate import upgrade
from service.sandbox import SandboxConfig, create_sandbox_app
from service.settings import load_settings


class DemoFailed(Exception):
    """A step did not reach the state it waits for."""


@dataclass
class Demo:
    api: httpx.AsyncClient
    web: httpx.AsyncClient  # the SMB's browser
    started: float

    def step(self, text: str) -> None:
        click.echo(click.style(f"\n[{time.perf_counter() - self.started:5.2f}s] ", dim=True)
                   + click.style(text, bold=True))

    def show(self, label: str, value: object) -> None:
        click.echo(f"    {label:<22} {value}")

    async def call(self, method: str, path: str, **kw: Any) -> Any:
        response = await self.api.request(method, path, **kw)
        if response.status_code >= 400:
            raise DemoFailed(f"{method} {path} answered {response.status_code}: {response.text}")
        return response.json()

    async def until(self, what: str, check: Callable[[], Awaitable[Any]],
                    timeout: float = 20.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = await check()
            if result:
                return result
            await asyncio.sleep(0.05)
        raise DemoFailed(f"timed out waiting for {what}")


async def run_demo(*, database_url: str | None = None, platform_key: str = "qhyg") -> None:
    """Run the demo; raises DemoFailed if a step does not happen."""
    workdir = Path(tempfile.mkdtemp(prefix="codat-hooks-demo-"))
    database_url = database_url or f"sqlite:///{workdir / 'demo.db'}"
    secret = "whsec_" + base64.b64encode(os.urandom(24)).decode()
    api_key, token = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    sandbox_sock, service_sock = listening_socket(), listening_socket()
    sandbox_url, service_url = url_of(sandbox_sock), url_of(service_sock)

    await asyncio.to_thread(upgrade, database_url)  # alembic runs its own loop on PostgreSQL
    settings = load_settings(
        codat_webhook_secrets=secret, service_api_tokens=token, database_url=database_url,
        codat_api_key=api_key, codat_base_url=sandbox_url, worker_poll_seconds=0.05,
        outbox_backoff_base_seconds=0.2, log_level="WARNING")
    sandbox = create_sandbox_app(SandboxConfig(
        api_key=api_key, webhook_secret=secret, webhook_url=f"{service_url}/webhooks/codat",
        public_url=sandbox_url))
    async with (running(sandbox, sock=sandbox_sock),
                running(create_app(settings), sock=service_sock),
                httpx.AsyncClient(base_url=service_url, timeout=10,
                                  headers={"Authorization": f"Bearer {token}"}) as api,
                httpx.AsyncClient(timeout=10, follow_redirects=True) as web):
        demo = Demo(api, web, time.perf_counter())
        click.echo(f"codat-hooks demo: service {service_url}, sandbox Codat {sandbox_url}, "
                   f"database {database_url}")
        await _flow(demo, platform_key)


async def _flow(demo: Demo, platform_key: str) -> None:
    demo.step("1. Create a Codat company for the SMB customer")
    company = await demo.call("POST", "/v1/companies",
                              json={"name": "Toft stores", "tags": {"customerId": "cust-42"}},
                              headers={"Idempotency-Key": "demo-company"})
    company_id = company["id"]
    demo.show("company id", company_id)

    demo.step(f"2. Create its {platform_key} connection and hand back the linkUrl")
    connection = await demo.call("POST", f"/v1/companies/{company_id}/connections",
                                 json={"platformKey": platform_key})
    connection_id, link_url = connection["id"], connection["linkUrl"]
    demo.show("connection id", connection_id)
    demo.show("status", connection["status"])
    demo.show("linkUrl", link_url)

    demo.step("3. The SMB opens the linkUrl and authorizes")
    page = await demo.web.get(link_url)
    title = re.search(r"<title>(.*?)</title>", page.text, re.S)
    demo.show("Link page", title.group(1).strip() if title else f"HTTP {page.status_code}")
    action = re.search(r'action="([^"]*authorize[^"]*)"', page.text)
    if page.status_code != 200 or action is None:
        raise DemoFailed("the Link page has no authorize form")
    authorized = await demo.web.post(str(page.url.join(action.group(1))))
    demo.show("authorization", f"HTTP {authorized.status_code}")

    demo.step("4. Codat's webhook arrives and the connection turns Linked")

    async def linked() -> Any:
        state = await demo.call("GET", f"/v1/connections/{connection_id}")
        return state if state["status"] == "Linked" else None
    state = await demo.until("the connection to turn Linked", linked)
    demo.show("status", state["status"])
    demo.show("last event at", state["lastEventAt"])

    demo.step("5. Follow-ups run and the company becomes ready for Bill Pay")

    async def ready() -> Any:
        info = await demo.call("GET", f"/v1/companies/{company_id}")
        return info if info["billPayReady"] else None
    info = await demo.until("the company to become ready for Bill Pay", ready)
    jobs = await demo.call("GET", "/v1/outbox")
    for job in jobs["results"]:
        demo.show(f"job {job['kind']}", f"{job['status']} after {job['attempts']} attempt(s)")
    demo.show("billPayReady", info["billPayReady"])
    demo.show("data types read", ", ".join(f"{d['dataType']}={d['status']}"
                                           for d in info["dataTypes"]))

    demo.step("6. An internal service queries the state")
    listing = await demo.call("GET", "/v1/connections",
                              params={"companyId": company_id, "status": "Linked"})
    for item in listing["results"]:
        demo.show(item["id"], f"{item['platformName']} {item['status']}")

    demo.step("7. Unlink on request")
    unlinked = await demo.call(
        "POST", f"/v1/companies/{company_id}/connections/{connection_id}/unlink",
        json={"reason": "customer closed their account"})
    demo.show("status", unlinked["status"])

    async def disconnected_seen() -> Any:
        rows = (await demo.call("GET", f"/v1/connections/{connection_id}/history"))["results"]
        return rows if any(r["eventType"] == "connection.disconnected" for r in rows) else None
    history = await demo.until("Codat's connection.disconnected webhook", disconnected_seen)

    demo.step("8. The connection's history")
    for row in history:
        demo.show(f"{row['source']} {row['result']}",
                  f"{row['fromState'] or '-'} -> {row['toState']}  "
                  f"({row['eventType'] or 'api'})")

    demo.step("9. What the change feed told internal services about this customer")
    changes = await demo.call("GET", "/v1/events", params={"companyId": company_id,
                                                           "limit": 100})
    for change in changes["results"]:
        demo.show(f"#{change['id']} {change['type']}", _said(change["data"]))
    if not any(c["type"] == "company.bill_pay_ready_changed" and c["data"]["ready"]
               for c in changes["results"]):
        raise DemoFailed("the feed never said the company became ready for Bill Pay")

    click.echo(click.style(
        f"\nDone: company {company_id} was onboarded ({platform_key}), became ready for Bill "
        f"Pay, and was unlinked; {len(history)} history rows, {len(changes['results'])} "
        "changes in the feed.", fg="green", bold=True))


def _said(data: dict[str, Any]) -> str:
    if "ready" in data:
        return "ready for Bill Pay" if data["ready"] else "not ready: " + "; ".join(
            data["whyNot"])
    cause = data.get("cause") or {}
    return (f"{data.get('from') or 'new'} -> {data.get('to', 'Deleted')} "
            f"({cause.get('source')} {cause.get('eventType')})")
