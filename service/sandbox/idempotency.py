"""Codat's ``Idempotency-Key`` cache (CONTRACT §1): first answer kept 90 minutes and replayed.

Same key, same request: the cached answer, without a second effect. Same key, another request:
422. Same key while the first is still running: 409. A 429 is never cached, so the key is free
again for the retry.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

TTL_SECONDS = 90 * 60


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    """The status, body and content type of the first answer for a key."""

    status: int
    body: bytes
    media_type: str | None


@dataclass(slots=True)
class _Entry:
    fingerprint: str
    expires: float
    answer: CachedAnswer | None = None  # None while the first request is in progress


class Lookup(Enum):
    """What a key means for a new request."""

    NEW = "new"
    REPLAY = "replay"
    IN_PROGRESS = "in_progress"
    MISMATCH = "mismatch"


def fingerprint(method: str, path: str, body: bytes) -> str:
    """What makes two requests "the same" for one key: method, path and exact body."""
    digest = hashlib.sha256(body).hexdigest()
    return f"{method} {path} {digest}"


class IdempotencyCache:
    """Keys to answers; the clock is injectable so expiry can be tested."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._entries: dict[str, _Entry] = {}
        self._now = clock

    def begin(self, key: str, print_: str) -> tuple[Lookup, CachedAnswer | None]:
        """Classify ``key`` for a request; a NEW key is marked in progress at once."""
        entry = self._entries.get(key)
        if entry is not None and entry.expires <= self._now():
            del self._entries[key]
            entry = None
        if entry is None:
            self._entries[key] = _Entry(print_, self._now() + TTL_SECONDS)
            return Lookup.NEW, None
        if entry.answer is None:
            return Lookup.IN_PROGRESS, None
        if entry.fingerprint != print_:
            return Lookup.MISMATCH, None
        return Lookup.REPLAY, entry.answer

    def finish(self, key: str, answer: CachedAnswer) -> None:
        """Keep ``answer`` for the key, except a 429, which releases the key."""
        if answer.status == 429:
            self.release(key)
            return
        entry = self._entries.get(key)
        if entry is not None:
            entry.answer = answer

    def release(self, key: str) -> None:
        """Forget a key whose first request ended without an answer to keep."""
        self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()
