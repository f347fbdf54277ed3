"""Errors at the service's edges. Each family belongs to one boundary.

ConfigError              a setting is missing or malformed (start-up stops)
ReceiverError            a delivery is refused before anything is stored
  ├─ PayloadTooLarge     413
  ├─ MissingHeaders      400
  ├─ ClientGone          400 (the client left before its body arrived; no one hears it)
  └─ InvalidSignature    401
DatabaseUnavailable      the database cannot be written now (503 with Retry-After)
Contended                another transaction got there first; nothing written, run it again
Retryable                a follow-up job's call failed and is worth trying later (Codat's, a
                         push's); the worker backs off, never sooner than ``retry_after``
"""

from __future__ import annotations


class ConfigError(Exception):
    """A setting is missing or malformed; the message names the variable."""


class ReceiverError(Exception):
    """A delivery refused before anything was stored."""

    status_code = 400


class PayloadTooLarge(ReceiverError):
    """The body is larger than WEBHOOK_MAX_BODY_BYTES."""

    status_code = 413


class ClientGone(ReceiverError):
    """The client disconnected (or was cut off for being too slow) before its body arrived."""

    status_code = 400


class MissingHeaders(ReceiverError):
    """The svix-*/webhook-* id, timestamp or signature header is missing."""

    status_code = 400


class InvalidSignature(ReceiverError):
    """Verification failed, whatever the reason; ``reason`` is a short label for metrics."""

    status_code = 401

    def __init__(self, reason: str) -> None:
        super().__init__(f"signature verification failed: {reason}")
        self.reason = reason


class DatabaseUnavailable(Exception):
    """The database cannot be reached or written now; the caller should retry later."""


class Contended(Exception):
    """Another transaction got there first (a deadlock, a serialization failure, a lost race):
    nothing was written, and running the work again under row locks settles it."""


class Retryable(Exception):
    """A follow-up job's call failed in a way worth retrying later."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PushFailed(Retryable):
    """A subscriber did not take a pushed change (an answer other than 2xx, or none)."""
