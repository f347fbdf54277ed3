"""The whole sandbox as one object: companies, idempotency cache, call log, fault rules,
webhook dispatcher and background reads. ``app.state.sandbox`` holds it for tests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from service.sandbox.calls import CallLog
from service.sandbox.config import SandboxConfig
from service.sandbox.errors import company_not_found, connection_not_found
from service.sandbox.faults import FaultBook
from service.sandbox.idempotency import IdempotencyCache
from service.sandbox.model import Company, Connection
from service.sandbox.webhooks import Dispatcher


class Sandbox:
    """In-memory Codat. Lookups raise Codat's 404s, so endpoints can use them directly."""

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self.companies: dict[str, Company] = {}
        self.idempotency = IdempotencyCache()
        self.calls = CallLog()
        self.faults = FaultBook()
        self.webhooks = Dispatcher(config)
        self._tasks: set[asyncio.Task[None]] = set()

    def company(self, company_id: str) -> Company:
        company = self.companies.get(company_id)
        if company is None:
            raise company_not_found(company_id)
        return company

    def connection(self, company_id: str, connection_id: str) -> tuple[Company, Connection]:
        company = self.company(company_id)
        connection = company.connections.get(connection_id)
        if connection is None:
            raise connection_not_found(connection_id)
        return company, connection

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run background work (a simulated read) that reset and shutdown will cancel."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def start(self) -> None:
        await self.webhooks.start()

    async def stop(self) -> None:
        await self._cancel_tasks()
        await self.webhooks.stop()

    async def reset(self) -> None:
        """Forget everything: objects, keys, calls, faults, messages, pending work."""
        await self._cancel_tasks()
        await self.webhooks.reset()
        self.companies.clear()
        self.idempotency.clear()
        self.calls.clear()
        self.faults.clear()

    async def _cancel_tasks(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
