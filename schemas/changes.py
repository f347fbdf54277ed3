"""What the change feed says: the types of change, and the data each carries.

Internal services follow these (``GET /v1/events``, or pushed to them): a connection whose state
changed, a company that became ready for Bill Pay or stopped being, a deletion. Built here from
verdicts, so that every path that changes a state says it the same way; the PostgreSQL batch
statement (service/batch.py) builds the same JSON in SQL, and tests hold the two equal.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from schemas.commands import Verdict, Word
from schemas.state import State


class ChangeType(StrEnum):
    STATUS_CHANGED = "connection.status_changed"
    CONNECTION_DELETED = "connection.deleted"
    READY_CHANGED = "company.bill_pay_ready_changed"
    COMPANY_DELETED = "company.deleted"


NO_LINKED_CONNECTION = "no Linked connection"


def cause_of(word: Word) -> dict[str, Any]:
    cause = word.cause
    return {"source": word.source.value, "eventId": cause.id, "eventType": cause.type,
            "deliveryId": cause.delivery_id}


def move_change(word: Word, verdict: Verdict) -> tuple[ChangeType, dict[str, Any]] | None:
    """The change an applied word made, if it changed the connection's state."""
    if not verdict.changed:
        return None
    previous = verdict.from_state.value if verdict.from_state else None
    if verdict.to_state is State.DELETED:
        return ChangeType.CONNECTION_DELETED, {"from": previous, "cause": cause_of(word)}
    return ChangeType.STATUS_CHANGED, {"from": previous, "to": verdict.to_state.value,
                                       "skipped": verdict.skipped, "cause": cause_of(word)}


def readiness_change(ready: bool, why_not: list[str]) -> dict[str, Any]:
    return {"ready": ready, "whyNot": [] if ready else why_not}
