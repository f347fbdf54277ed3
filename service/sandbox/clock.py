"""Time as Codat writes it: aware UTC datetimes, ISO-8601 strings ending in ``Z``."""

from __future__ import annotations

import threading
from collections import deque
from datetime import UTC, datetime, timedelta

from schemas.order import instant_of

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    """``2024-08-08T17:10:34.015Z``: UTC with millisecond precision, as in Codat's examples."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def next_midnight(moment: datetime) -> datetime:
    """The next 00:00 UTC, when Codat resets the daily request quota."""
    day = moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return day + timedelta(days=1)


class _EventClock:
    """Codat writes ``generatedDate`` with 7 fractional digits (100 ns). A clock reads the same
    microsecond twice in a row easily: the sandbox then counts up in the seventh digit, so that
    its events, stamped as they happen, never tie and keep the order they happened in."""

    def __init__(self, remember: int = 4096) -> None:
        self._used: set[int] = set()
        self._recent: deque[int] = deque()
        self._remember = remember
        self._lock = threading.Lock()

    def stamp(self, moment: datetime) -> str:
        ticks = (moment - _EPOCH) // timedelta(microseconds=1) * 10
        with self._lock:
            while ticks in self._used:
                ticks += 1
            self._used.add(ticks)
            self._recent.append(ticks)
            if len(self._recent) > self._remember:
                self._used.discard(self._recent.popleft())
        return instant_of(_EPOCH + timedelta(microseconds=ticks // 10), ticks % 10)


generated_date = _EventClock().stamp
