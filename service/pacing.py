"""How the worker paces itself: deliveries come first, and a failing Codat is not hammered.

- :class:`Pressure`: the receiver notes each delivery; while deliveries are flowing, a worker in
  the same process keeps its share of the time small (it sleeps, after each batch of jobs, a
  multiple of what the batch took), so a storm is ingested first, while follow-up work still
  moves.
- :class:`StoredPressure`: a standalone worker (``codat-hooks worker``) sees no receiver; it
  reads when the newest delivery was stored (one index lookup, at most every quarter second)
  and yields the same way, so its jobs' database work does not crowd out a storm's.
- :class:`Breaker`: after a few Codat calls in a row that say Codat is unreachable or failing
  (a transport error, a timeout, a 5xx), Codat's jobs wait a while (doubling, up to 60 times
  the first wait) and then one tries again; a success closes it. While it is open the worker
  claims no Codat job at all, so a retry storm against a dead Codat costs the database nothing.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import datetime


class Pressure:
    """When the last delivery was received (by this process)."""

    def __init__(self, *, window: float = 0.25, clock: Callable[[], float] = time.monotonic,
                 ) -> None:
        self._last = float("-inf")
        self._window = window
        self._clock = clock

    def delivered(self) -> None:
        self._last = self._clock()

    async def refresh(self) -> None:
        """Learn of deliveries this process did not see itself (here: nothing to learn, the
        receiver says :meth:`delivered`)."""

    def busy(self) -> bool:
        """A delivery came in within the window."""
        return self._clock() - self._last < self._window

    def pause_after(self, job_seconds: float, *, share: float = 0.1,
                    floor: float = 0.02, ceiling: float = 1.0) -> float:
        """How long the worker waits before its next job: while deliveries flow, long enough
        that jobs take at most ``share`` of the time (but never more than ``ceiling``, so
        follow-up work always moves); otherwise nothing."""
        if not self.busy():
            return 0.0
        return min(ceiling, max(floor, job_seconds * (1 - share) / share))


class StoredPressure(Pressure):
    """Deliveries are flowing when the newest stored one was received within ``window``
    (receivers' clocks and ours may differ by a little: the window is a second)."""

    def __init__(self, newest: Callable[[], Awaitable[datetime | None]], *,
                 window: float = 1.0, every: float = 0.25,
                 clock: Callable[[], float] = time.monotonic,
                 now: Callable[[], datetime] | None = None) -> None:
        super().__init__(window=window, clock=clock)
        self._newest = newest
        self._every = every
        self._checked = float("-inf")
        self._now = now

    async def refresh(self) -> None:
        if self._clock() - self._checked < self._every:
            return
        self._checked = self._clock()
        newest = await self._newest()
        if newest is None:
            return
        now = self._now() if self._now is not None else datetime.now(newest.tzinfo)
        age = (now - newest).total_seconds()
        if age < self._window:
            self._last = self._clock() - max(0.0, age)


class Breaker:
    """A circuit breaker for Codat calls (see the module docstring)."""

    def __init__(self, *, threshold: int = 3, cooldown: float = 1.0, ceiling: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._threshold = threshold
        self._first_cooldown = self._cooldown = cooldown
        self._ceiling = ceiling
        self._clock = clock
        self._failures = 0
        self._open_until = float("-inf")

    @property
    def open(self) -> bool:
        return self._clock() < self._open_until

    @property
    def probing(self) -> bool:
        """It has opened and its wait is over: the next Codat job tells whether Codat is back
        (one job, not a batch of them)."""
        return self._failures >= self._threshold and not self.open

    def failed(self) -> None:
        """A call that says Codat is down or failing. While the breaker is open, a failure is
        one of the calls that were in flight when it opened (the worker makes none while it
        is open): it says nothing new, and neither extends the wait nor doubles the next."""
        if self.open:
            return
        self._failures += 1
        if self._failures >= self._threshold:
            self._open_until = self._clock() + self._cooldown
            self._cooldown = min(self._ceiling, self._cooldown * 2)

    def succeeded(self) -> None:
        """Codat answered (even a 4xx: it is up)."""
        self._failures = 0
        self._cooldown = self._first_cooldown
        self._open_until = float("-inf")
