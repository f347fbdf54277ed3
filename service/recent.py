"""Counts per minute by label over the last day, kept in memory by one process.

For what the database does not keep: deliveries refused before storage (bad signature, missing
headers, too large) are counted in Prometheus's counters and here, so the on-call page can draw
them over time without Prometheus. One process's view only: each replica keeps its own.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict

MINUTES = 24 * 60


class MinuteCounts:
    """``add(label)`` now; ``series(since)`` per minute. Memory is bounded by ``MINUTES``
    minutes times the labels seen (a handful: the refusal reasons)."""

    def __init__(self, *, minutes: int = MINUTES) -> None:
        self._minutes = minutes
        self._counts: dict[int, dict[str, int]] = {}
        self._lock = threading.Lock()
        self.started = time.time()

    def add(self, label: str, *, at: float | None = None, amount: int = 1) -> None:
        minute = int((time.time() if at is None else at) // 60)
        with self._lock:
            bucket = self._counts.get(minute)
            if bucket is None:
                bucket = self._counts[minute] = defaultdict(int)
                oldest = minute - self._minutes
                for old in [m for m in self._counts if m <= oldest]:
                    del self._counts[old]
            bucket[label] += amount

    def per_minute(self, *, since: float, until: float) -> dict[int, dict[str, int]]:
        """{minute number (Unix seconds // 60): {label: count}} for minutes in the range."""
        first, last = int(since // 60), int(until // 60)
        with self._lock:
            return {m: dict(c) for m, c in self._counts.items() if first <= m <= last}
