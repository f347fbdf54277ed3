"""The log of every request a Codat endpoint received, for tests to assert on."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from service.sandbox.clock import iso


@dataclass
class Call:
    """One request: what came in, what went out, and whether it took effect.

    ``effect`` is True only when the endpoint itself ran and answered 2xx: a replay from the
    idempotency cache, an injected fault or a refusal (401, 409, 422, ...) has no effect.
    """

    method: str
    path: str
    query: dict[str, str]
    idempotency_key: str | None
    at: datetime
    status: int | None = None
    effect: bool = False
    replayed: bool = False
    fault: bool = False

    def describe(self) -> dict[str, Any]:
        return {"method": self.method, "path": self.path, "query": self.query,
                "idempotencyKey": self.idempotency_key, "status": self.status,
                "at": iso(self.at), "effect": self.effect, "replayed": self.replayed,
                "fault": self.fault}


@dataclass
class CallLog:
    """Every call, in arrival order."""

    calls: list[Call] = field(default_factory=list)

    def open(self, call: Call) -> Call:
        self.calls.append(call)
        return call

    def count_since(self, moment: datetime) -> int:
        return sum(1 for call in self.calls if call.at >= moment)

    def describe(self) -> dict[str, Any]:
        """``calls`` plus ``byIdempotencyKey``: per key, how many calls took effect."""
        effects: Counter[str] = Counter()
        for call in self.calls:
            if call.idempotency_key is not None:
                effects[call.idempotency_key] += int(call.effect)
        return {"calls": [call.describe() for call in self.calls],
                "byIdempotencyKey": dict(effects)}

    def clear(self) -> None:
        self.calls.clear()
