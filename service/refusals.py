"""Refusals (a bad signature, a request head too large, a client too slow) are logged at a
bounded rate: anyone on the internet can cause them, so one log line each would let anyone fill
the logs. Every refusal is counted in the metrics; the lines not written are counted too
(``codat_hooks_log_lines_suppressed``), so a flood shows as a number, not as a flood of lines.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from service.metrics import Metrics

RATE_PER_SECOND = 10.0
BURST = 50


class RefusalLog:
    """A token bucket in front of log lines anyone can cause: one per app, shared by the
    receiver and the HTTP protocol (and one for the readiness probe's failures)."""

    def __init__(self, metrics: Metrics | None = None, *, kind: str = "refusal",
                 rate: float = RATE_PER_SECOND, burst: int = BURST,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._metrics = metrics
        self._kind = kind
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._clock = clock
        self._last = clock()

    def _take(self) -> bool:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def log(self, logger: logging.Logger, message: str, fields: dict[str, object], *,
            level: int = logging.INFO) -> bool:
        """Write the line if the rate allows (True), else count it as suppressed (False)."""
        if self._take():
            logger.log(level, message, extra={"fields": fields})
            return True
        if self._metrics is not None:
            self._metrics.log_suppressed.labels(self._kind).inc()
        return False

    def connection_refused(self, reason: str, status: int | None,
                           client: tuple[str, int] | None) -> None:
        """A refusal by the HTTP protocol (limits, timeouts, the connection cap)."""
        if self._metrics is not None:
            self._metrics.http_refused.labels(reason).inc()
        self.log(_HTTP_LOG, "request refused", {
            "reason": reason, "status": status,
            "client": f"{client[0]}:{client[1]}" if client else None})


_HTTP_LOG = logging.getLogger("codat_hooks.http")
