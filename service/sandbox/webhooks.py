"""Signed webhook deliveries with retries (CONTRACT §6.1-6.2), every attempt recorded.

Each message is serialized once; every attempt is signed again (svix) with the current
timestamp and keeps the message id, so a receiver can drop duplicates on ``webhook-id``.
A 2xx within ``delivery_timeout`` is success; anything else is retried after the next wait of
``retry_schedule`` until the schedule runs out.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

import httpx
from svix.webhooks import Webhook

from schemas.order import new_message_id
from service.sandbox.clock import iso, utcnow
from service.sandbox.config import SandboxConfig

ORDERS = ("fifo", "reverse", "shuffle")


class DeliveryState(StrEnum):
    """Where a message stands."""

    HELD = "held"  # waiting for /_sandbox/webhooks/resume (or for the app to start)
    SCHEDULED = "scheduled"  # being sent, or waiting for its next retry
    DELIVERED = "delivered"
    FAILED = "failed"  # every attempt of the schedule failed
    SKIPPED = "skipped"  # no webhook_url configured: recorded, never sent


class DeliveryRefused(Exception):
    """A message cannot be (re)sent now; the text says why."""


@dataclass(frozen=True, slots=True)
class Attempt:
    """One POST of a message: why it was made, and what came back (status or error)."""

    trigger: str  # first | retry | duplicate | resend
    at: datetime
    status_code: int | None
    error: str | None
    duration_ms: float

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300

    def describe(self) -> dict[str, Any]:
        return {"trigger": self.trigger, "at": iso(self.at), "statusCode": self.status_code,
                "error": self.error, "durationMs": round(self.duration_ms, 1), "ok": self.ok}


@dataclass
class Message:
    """One event to deliver: its id (``msg_...``), exact body text and attempts so far."""

    id: str
    event_type: str
    body: str
    created: datetime
    state: DeliveryState = DeliveryState.SCHEDULED
    attempts: list[Attempt] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        return {"id": self.id, "eventType": self.event_type, "body": json.loads(self.body),
                "createdAt": iso(self.created), "state": self.state.value,
                "attempts": [attempt.describe() for attempt in self.attempts]}


def _ordered(messages: list[Message], order: str) -> list[Message]:
    if order == "reverse":
        return messages[::-1]
    if order == "shuffle":
        return random.sample(messages, len(messages))
    return list(messages)


class Dispatcher:
    """Owns the messages, the HTTP client and the delivery tasks."""

    def __init__(self, config: SandboxConfig) -> None:
        self._config = config
        self._signer = Webhook(config.webhook_secret)
        self._client: httpx.AsyncClient | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.messages: dict[str, Message] = {}
        self.held: list[Message] = []
        self.paused = False

    async def start(self) -> None:
        """Open the client; messages published before the start go out now (unless paused)."""
        # The asyncio timeout below is the real limit; httpx's own is only a backstop.
        self._client = httpx.AsyncClient(timeout=self._config.delivery_timeout + 1,
                                         trust_env=False)
        if not self.paused:
            self.resume("fifo", 0)

    async def stop(self) -> None:
        await self._cancel_tasks()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def reset(self) -> None:
        """Forget every message and stop every pending delivery."""
        await self._cancel_tasks()
        self.messages.clear()
        self.held.clear()
        self.paused = False

    def publish(self, body: dict[str, Any]) -> Message:
        """Record an event body and deliver it (or hold it while paused)."""
        created = utcnow()  # Svix's id carries its message's creation time (a KsuidMs)
        message = Message(new_message_id(created), str(body["eventType"]),
                          json.dumps(body, separators=(",", ":")), created)
        self.messages[message.id] = message
        if self._config.webhook_url is None:
            message.state = DeliveryState.SKIPPED
        elif self.paused or self._client is None:
            message.state = DeliveryState.HELD
            self.held.append(message)
        else:
            self._spawn(self._deliver(message))
        return message

    def pause(self) -> None:
        self.paused = True

    def resume(self, order: str, duplicates: int) -> list[Message]:
        """Send the held messages one after another in ``order``, then ``duplicates`` rounds
        of copies (same message ids) in the same order. Answers without waiting."""
        self.paused = False
        if self._client is None:  # not started yet: start() sends them
            return []
        batch = _ordered(self.held, order)
        self.held = []
        for message in batch:
            message.state = DeliveryState.SCHEDULED
        if batch:
            self._spawn(self._flush(batch, duplicates))
        return batch

    def resend(self, message_id: str) -> Message:
        """Send an already-sent message once more (a duplicate, as Codat's Portal does)."""
        message = self.messages.get(message_id)
        if message is None:
            raise KeyError(message_id)
        if message.state in (DeliveryState.HELD, DeliveryState.SKIPPED) or self._client is None:
            raise DeliveryRefused(f"message {message_id} is {message.state.value}: not sent yet")
        self._spawn(self._attempt(message, "resend"))
        return message

    def _spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _cancel_tasks(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _deliver(self, message: Message, start: int = 0) -> None:
        schedule = self._config.retry_schedule
        for index in range(start, len(schedule)):
            if schedule[index] > 0:
                await asyncio.sleep(schedule[index])
            if await self._attempt(message, "first" if index == 0 else "retry"):
                message.state = DeliveryState.DELIVERED
                return
        message.state = DeliveryState.FAILED

    async def _flush(self, batch: list[Message], duplicates: int) -> None:
        # One at a time, so the receiver sees exactly the order asked for.
        for message in batch:
            if await self._attempt(message, "first"):
                message.state = DeliveryState.DELIVERED
            else:
                self._spawn(self._deliver(message, start=1))
        for _ in range(duplicates):
            for message in batch:
                await self._attempt(message, "duplicate")

    async def _attempt(self, message: Message, trigger: str) -> bool:
        assert self._client is not None and self._config.webhook_url is not None
        sent = utcnow()
        headers = {
            "webhook-id": message.id,
            "webhook-timestamp": str(int(sent.timestamp())),
            "webhook-signature": self._signer.sign(message.id, sent, message.body),
            "content-type": "application/json",
        }
        status: int | None = None
        error: str | None = None
        started = time.monotonic()
        try:
            async with asyncio.timeout(self._config.delivery_timeout):
                response = await self._client.post(self._config.webhook_url,
                                                   content=message.body.encode(),
                                                   headers=headers)
            status = response.status_code
        except TimeoutError:
            error = f"no answer within {self._config.delivery_timeout:g}s"
        except Exception as exc:  # the receiver's failure, whatever it is, is a failed attempt
            error = f"{type(exc).__name__}: {exc}"
        attempt = Attempt(trigger, sent, status, error, (time.monotonic() - started) * 1000)
        message.attempts.append(attempt)
        return attempt.ok
