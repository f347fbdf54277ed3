"""The end-to-end harness of test_onboarding.py and test_worker.py (no tests here).

Like ``service/demo.py``: the sandbox (a local Codat) and the service, each served by uvicorn on
its own loopback port inside the test's event loop, sharing the API key and the webhook secret.
The sandbox's webhooks reach the service over real HTTP, the service calls the sandbox over real
HTTP, and the tests drive both through httpx clients: the query/onboarding API with the bearer
token, the sandbox's ``/_sandbox`` controls, the Link page as the SMB's browser. Every wait polls
against a deadline.
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import re
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import uvicorn

from service.app import create_app
from service.db import Database, sql
from service.localserver import listening_socket, url_of
from service.sandbox import SandboxConfig, create_sandbox_app
from service.sandbox.state import Sandbox
from service.settings import Settings
from tests.conftest import TABLES, make_settings
from tests.factories import SECRET, TOKEN, sign

API_KEY = "test-codat-key"  # make_settings' CODAT_API_KEY: the key the sandbox accepts
CODAT_AUTH = {"Authorization": "Basic " + base64.b64encode(API_KEY.encode()).decode()}
BILL_PAY_TYPES = ("bankAccounts", "bills", "billPayments", "chartOfAccounts", "company",
                  "paymentMethods", "suppliers")
# Fast enough for tests, slow enough to be real: a worker polls every 50 ms, backs off from
# 50 ms, and a stop waits at most a second for a job stuck on a slow Codat call.
SERVICE_DEFAULTS: dict[str, Any] = {
    "worker_enabled": True, "worker_poll_seconds": 0.05, "outbox_backoff_base_seconds": 0.05,
    "worker_stop_grace_seconds": 1.0, "codat_timeout_seconds": 5.0,
    "codat_breaker_seconds": 0.01,
}
SANDBOX_DEFAULTS: dict[str, Any] = {
    "retry_schedule": (0, 0.2, 0.5, 1.0), "delivery_timeout": 5.0, "read_delay": 0.05,
}


async def eventually(check: Callable[[], Any], *, timeout: float = 5.0, what: str = "",
                     interval: float = 0.02) -> Any:
    """Poll ``check`` (sync or async) until it returns something truthy; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what or check}")
        await asyncio.sleep(interval)


def parse_time(value: str) -> datetime:
    """An ISO-8601 time from the API or the sandbox's call log, as an aware datetime."""
    moment = datetime.fromisoformat(value)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def codat_event(event_type: str, payload: dict[str, Any], *,
                generated: datetime | None = None) -> bytes:
    """A current-format Codat webhook body."""
    moment = generated or datetime.now(UTC)
    return orjson.dumps({
        "id": str(uuid.uuid4()), "eventType": event_type,
        "generatedDate": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "payload": payload})


@dataclass
class Flow:
    """A running sandbox and service, and clients for both."""

    settings: Settings
    app: Any
    sandbox_app: Any
    api: httpx.AsyncClient  # the service, with the bearer token
    sb: httpx.AsyncClient  # the sandbox: Codat's API, /_sandbox controls, the Link page
    service_url: str
    sandbox_url: str

    @property
    def db(self) -> Database:
        db: Database = self.app.state.db
        return db

    @property
    def sandbox(self) -> Sandbox:
        sandbox: Sandbox = self.sandbox_app.state.sandbox
        return sandbox

    # --- the service ---------------------------------------------------------------------

    async def ok(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self.api.request(method, path, **kwargs)
        assert response.is_success, f"{method} {path}: {response.status_code} {response.text}"
        return response.json()

    async def create_company(self, name: str = "Toft stores", **fields: Any) -> str:
        company = await self.ok("POST", "/v1/companies", json={"name": name, **fields})
        return str(company["id"])

    async def create_connection(self, company_id: str, platform_key: str = "qhyg") -> Any:
        return await self.ok("POST", f"/v1/companies/{company_id}/connections",
                             json={"platformKey": platform_key})

    async def company(self, company_id: str) -> Any:
        return await self.ok("GET", f"/v1/companies/{company_id}")

    async def connection(self, connection_id: str) -> Any:
        return await self.ok("GET", f"/v1/connections/{connection_id}")

    async def history(self, connection_id: str) -> list[dict[str, Any]]:
        page = await self.ok("GET", f"/v1/connections/{connection_id}/history",
                             params={"limit": 500})
        return list(page["results"])

    async def jobs(self, status: str | None = None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": 500}
        if status:
            params["status"] = status
        return list((await self.ok("GET", "/v1/outbox", params=params))["results"])

    async def job(self, job_id: str) -> dict[str, Any]:
        return next(j for j in await self.jobs() if j["id"] == job_id)

    async def settled(self, kinds: set[str] | None = None, timeout: float = 5.0,
                      ) -> list[dict[str, Any]]:
        """Every job, once jobs of each of ``kinds`` exist and none is pending or running."""
        async def quiet() -> list[dict[str, Any]] | None:
            jobs = await self.jobs()
            if not jobs or not {j["kind"] for j in jobs} >= (kinds or set()):
                return None
            return jobs if all(j["status"] in ("done", "dead") for j in jobs) else None
        result: list[dict[str, Any]] = await eventually(quiet, timeout=timeout,
                                                        what="the outbox to settle")
        return result

    async def deliver(self, body: bytes) -> httpx.Response:
        """A webhook signed as Codat signs it, straight to the service."""
        return await self.api.post("/webhooks/codat", content=body, headers=sign(body))

    async def rows(self, query: str, *args: Any) -> list[dict[str, Any]]:
        statement = sql(query)
        return [dict(r) for r in await self.db.read(lambda tx: tx.fetch(statement, *args))]

    async def counts(self) -> dict[str, int]:
        counts = {}
        for table in TABLES:
            counts[table] = int((await self.rows(f"SELECT COUNT(*) AS n FROM {table}"))[0]["n"])
        return counts

    # --- the sandbox ---------------------------------------------------------------------

    async def codat(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Codat's API, called directly with the shared key (to look at Codat's side)."""
        headers = {**CODAT_AUTH, **kwargs.pop("headers", {})}
        return await self.sb.request(method, path, headers=headers, **kwargs)

    async def control(self, path: str, body: Any = None) -> Any:
        response = await self.sb.post(f"/_sandbox{path}", json=body)
        assert response.is_success, f"/_sandbox{path}: {response.status_code} {response.text}"
        return response.json()

    async def smb(self, action: str, company_id: str, connection_id: str) -> Any:
        return await self.control(f"/companies/{company_id}/connections/{connection_id}/{action}")

    async def fault(self, path: str, *, method: str | None = None, status: int | None = None,
                    retry_after: float | None = None, delay: float | None = None,
                    count: int = 1) -> None:
        await self.control("/faults", {"method": method, "path": path, "status": status,
                                       "retryAfter": retry_after, "delay": delay,
                                       "count": count})

    async def clear_faults(self) -> None:
        response = await self.sb.delete("/_sandbox/faults")
        assert response.status_code == 200

    async def call_log(self) -> dict[str, Any]:
        response = await self.sb.get("/_sandbox/calls")
        assert response.status_code == 200
        log: dict[str, Any] = response.json()
        return log

    async def calls(self, method: str | None = None, path: str | None = None,
                    ) -> list[dict[str, Any]]:
        """Codat calls the sandbox received, optionally of one method and a path regex."""
        return [c for c in (await self.call_log())["calls"]
                if (method is None or c["method"] == method)
                and (path is None or re.fullmatch(path, c["path"]))]

    async def messages(self) -> list[dict[str, Any]]:
        response = await self.sb.get("/_sandbox/webhooks")
        return list(response.json()["messages"])

    async def delivered(self, count: int | None = None, timeout: float = 5.0,
                        ) -> list[dict[str, Any]]:
        """The sandbox's messages once every one was delivered (and ``count`` exist)."""
        async def done() -> list[dict[str, Any]] | None:
            messages = await self.messages()
            if count is not None and len(messages) < count:
                return None
            return messages if all(m["state"] == "delivered" for m in messages) else None
        result: list[dict[str, Any]] = await eventually(done, timeout=timeout,
                                                        what="every webhook delivered")
        return result

    # --- the SMB, and whole steps --------------------------------------------------------

    async def authorize(self, link_url: str) -> httpx.Response:
        """Open the Link page as the SMB's browser would and press Authorize."""
        page = await self.sb.get(link_url)
        assert page.status_code == 200, page.text
        action = re.search(r'<form method="post" action="([^"]*/authorize)"', page.text)
        assert action is not None, page.text
        return await self.sb.post(str(page.url.join(action.group(1))),
                                  data={"choice": "authorize"})

    async def until_status(self, connection_id: str, status: str, timeout: float = 5.0) -> Any:
        async def reached() -> Any:
            response = await self.api.get(f"/v1/connections/{connection_id}")
            if response.status_code == 404:
                return None  # not heard of yet
            found = response.json()
            return found if found["status"] == status and not found["deleted"] else None
        return await eventually(reached, timeout=timeout,
                                what=f"connection {connection_id} {status}")

    async def onboard(self, name: str = "Toft stores") -> tuple[str, str]:
        """A company and its qhyg connection through the API, authorized on the Link page,
        Linked in our database (the follow-ups may still be running)."""
        company_id = await self.create_company(name)
        connection = await self.create_connection(company_id)
        authorized = await self.authorize(connection["linkUrl"])
        assert authorized.status_code == 200, authorized.text
        await self.until_status(connection["id"], "Linked")
        return company_id, str(connection["id"])


class _Served:
    """An app served by uvicorn on ``sock`` in this event loop, as service.localserver.running
    serves one (lifespan on, httptools), but stoppable together with another."""

    def __init__(self, app: Any, sock: socket.socket) -> None:
        self._sock = sock
        self._server = uvicorn.Server(uvicorn.Config(
            app, log_config=None, access_log=False, lifespan="on", http="httptools",
            timeout_graceful_shutdown=5))
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve(sockets=[self._sock]))
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises what stopped it (a failed lifespan)
                raise RuntimeError("the server stopped before it started")
            await asyncio.sleep(0.01)

    @staticmethod
    async def stop(*served: _Served) -> None:
        """Stop the servers at once (each still drains its requests and runs its lifespan)."""
        for one in served:
            one._server.should_exit = True
        await asyncio.gather(*(one._task for one in served if one._task is not None))
        for one in served:
            one._sock.close()


@asynccontextmanager
async def flow(database_url: str, *, sandbox: dict[str, Any] | None = None,
               **overrides: Any) -> AsyncIterator[Flow]:
    """Start the sandbox and the service (settings ``overrides``) on loopback ports."""
    sandbox_sock, service_sock = listening_socket(), listening_socket()
    sandbox_url, service_url = url_of(sandbox_sock), url_of(service_sock)
    settings = make_settings(database_url, **{**SERVICE_DEFAULTS, "codat_base_url": sandbox_url,
                                              **overrides})
    config = SandboxConfig(api_key=API_KEY, webhook_secret=SECRET,
                           webhook_url=f"{service_url}/webhooks/codat", public_url=sandbox_url,
                           **{**SANDBOX_DEFAULTS, **(sandbox or {})})
    sandbox_app = create_sandbox_app(config)
    app = create_app(settings)
    servers = [_Served(sandbox_app, sandbox_sock), _Served(app, service_sock)]
    started: list[_Served] = []
    try:
        for server in servers:
            await server.start()
            started.append(server)
        async with (httpx.AsyncClient(base_url=service_url, timeout=10, trust_env=False,
                                      headers={"Authorization": f"Bearer {TOKEN}"}) as api,
                    httpx.AsyncClient(base_url=sandbox_url, timeout=10, trust_env=False) as sb):
            yield Flow(settings, app, sandbox_app, api, sb, service_url, sandbox_url)
    finally:
        await _Served.stop(*started)
        sandbox_sock.close()
        service_sock.close()
