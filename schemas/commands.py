"""Decisions the handlers make, and the follow-up commands they ask the outbox to run."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from schemas.state import MoveResult, Source, State


class JobKind(StrEnum):
    """Follow-up work run by the outbox worker."""

    CONFIRM_CONNECTION = "confirm_connection"  # fetch a newly Linked connection, prepare Bill Pay
    RECONCILE_CONNECTION = "reconcile_connection"  # fetch a connection and apply what Codat says
    REFRESH_READINESS = "refresh_readiness"  # recompute Bill Pay readiness after a read


@dataclass(frozen=True, slots=True)
class Command:
    """One outbox job to enqueue; ``dedupe_key`` makes the same cause enqueue it once."""

    kind: JobKind
    dedupe_key: str
    company_id: str | None
    connection_id: str | None
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ConnectionSnapshot:
    """The stored state of a connection, as the handlers see it."""

    id: str
    company_id: str
    exists: bool  # False when this event is the first we hear of the connection
    state: State | None
    last_event_at: datetime | None


@dataclass(frozen=True, slots=True)
class Move:
    """What one event (or API call, or reconcile) does to one connection."""

    result: MoveResult
    source: Source
    from_state: State | None
    to_state: State  # the state asked for; the connection's new state only when applied
    commands: tuple[Command, ...] = ()
    reason: str | None = None

    @property
    def applied(self) -> bool:
        return self.result is MoveResult.APPLIED
