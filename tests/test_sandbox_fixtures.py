"""Shared pieces of the sandbox tests (no tests here): a real webhook receiver served by
uvicorn on 127.0.0.1, a running sandbox driven over ASGI, and a polling helper.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from svix.webhooks import Webhook

from service.sandbox import SandboxConfig, create_sandbox_app
from service.sandbox.state import Sandbox
from tests.flow import eventually

API_KEY = "sandbox-test-key-7fQ2mZ0aLr9XcV3bN8dK1sT6"
AUTH = {"Authorization": "Basic " + base64.b64encode(API_KEY.encode()).decode()}
SECRET = "whsec_" + base64.b64encode(b"sandbox-test-secret-of-32-bytes!").decode()
PUBLIC_URL = "http://127.0.0.1:8100"
FAST_RETRIES = (0, 0.05, 0.1, 0.2)
BILL_PAY_TYPES = {"bankAccounts", "bills", "billPayments", "chartOfAccounts", "company",
                  "paymentMethods", "suppliers"}


@dataclass
class Delivery:
    """One POST the receiver got, with the svix verdict and the answer it gave."""

    headers: dict[str, str]
    body: bytes
    verified: bool
    status: int

    @property
    def message_id(self) -> str:
        return self.headers["webhook-id"]

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def event_type(self) -> str:
        return str(self.json["eventType"])


@dataclass
class Receiver:
    """Records deliveries and checks each with ``svix.webhooks.Webhook(secret).verify``.

    ``fail_next`` answers the next N deliveries 500; ``slow_next`` delays the next N answers
    by ``slow_seconds``.
    """

    secret: str = SECRET
    deliveries: list[Delivery] = field(default_factory=list)
    fail_next: int = 0
    slow_next: int = 0
    slow_seconds: float = 0.0
    url: str = ""

    async def endpoint(self, request: Request) -> Response:
        body = await request.body()
        headers = {name.lower(): value for name, value in request.headers.items()}
        try:
            Webhook(self.secret).verify(body, headers)
            verified = True
        except Exception:
            verified = False
        status = 204 if verified else 401
        if self.fail_next > 0:
            self.fail_next -= 1
            status = 500
        elif self.slow_next > 0:
            self.slow_next -= 1
            await asyncio.sleep(self.slow_seconds)
        self.deliveries.append(Delivery(headers, body, verified, status))
        return Response(status_code=status)

    @property
    def accepted(self) -> list[Delivery]:
        return [d for d in self.deliveries if 200 <= d.status < 300]

    def events(self) -> list[str]:
        return [d.event_type for d in self.accepted]

    def first(self, event_type: str) -> Delivery | None:
        return next((d for d in self.accepted if d.event_type == event_type), None)


@asynccontextmanager
async def serving(receiver: Receiver) -> AsyncIterator[Receiver]:
    """Serve ``receiver`` with uvicorn on a free loopback port, in this event loop."""
    app = Starlette(routes=[Route("/webhooks/codat", receiver.endpoint, methods=["POST"])])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                           lifespan="off", ws="none"))
    task = asyncio.create_task(server.serve())
    try:
        await eventually(lambda: server.started or task.done())
        port = server.servers[0].sockets[0].getsockname()[1]
        receiver.url = f"http://127.0.0.1:{port}/webhooks/codat"
        yield receiver
    finally:
        server.should_exit = True
        await task


@dataclass
class Harness:
    """A running sandbox and an ASGI client for it."""

    app: Starlette
    client: httpx.AsyncClient
    config: SandboxConfig

    @property
    def sandbox(self) -> Sandbox:
        sandbox: Sandbox = self.app.state.sandbox
        return sandbox

    async def codat(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {**AUTH, **kwargs.pop("headers", {})}
        return await self.client.request(method, path, headers=headers, **kwargs)

    async def create_company(self, name: str = "Toft stores", **fields: Any) -> dict[str, Any]:
        response = await self.codat("POST", "/companies", json={"name": name, **fields})
        assert response.status_code == 200, response.text
        return dict(response.json())

    async def create_connection(self, company_id: str, key: str = "qhyg") -> dict[str, Any]:
        response = await self.codat("POST", f"/companies/{company_id}/connections",
                                    json={"platformKey": key})
        assert response.status_code == 200, response.text
        return dict(response.json())

    async def control(self, path: str, body: Any = None) -> httpx.Response:
        return await self.client.post(f"/_sandbox{path}", json=body)

    async def smb(self, action: str, company_id: str, connection_id: str) -> httpx.Response:
        return await self.control(f"/companies/{company_id}/connections/{connection_id}/{action}")

    async def messages(self) -> list[dict[str, Any]]:
        response = await self.client.get("/_sandbox/webhooks")
        return list(response.json()["messages"])

    async def event_types(self) -> list[str]:
        return [m["eventType"] for m in await self.messages()]

    async def linked(self, name: str = "Toft stores") -> tuple[str, str]:
        """A company with a Linked connection whose initial read has finished."""
        company = await self.create_company(name)
        connection = await self.create_connection(company["id"])
        response = await self.smb("authorize", company["id"], connection["id"])
        assert response.status_code == 200, response.text
        await eventually(lambda: self.sandbox.companies[company["id"]]
                         .connections[connection["id"]].has_read)
        return company["id"], connection["id"]


def make_config(webhook_url: str | None, **overrides: Any) -> SandboxConfig:
    values: dict[str, Any] = {"retry_schedule": FAST_RETRIES, "delivery_timeout": 1.0,
                              "read_delay": 0.05}
    values.update(overrides)
    return SandboxConfig(api_key=API_KEY, webhook_secret=SECRET, webhook_url=webhook_url,
                         public_url=PUBLIC_URL, **values)


@asynccontextmanager
async def running(config: SandboxConfig) -> AsyncIterator[Harness]:
    """The sandbox app with its lifespan running, and a client over ASGI."""
    app = create_sandbox_app(config)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=PUBLIC_URL) as client:
            yield Harness(app, client, config)
