"""Webhook signature verification: the only module that imports svix.

Bytes and headers in; the id of the secret that verified them out, or :class:`InvalidSignature`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass

from svix.webhooks import Webhook

from service.errors import InvalidSignature, MissingHeaders
from service.settings import WebhookSecret

_WELL_FORMED_V1 = re.compile(r"^v1,[A-Za-z0-9+/]{43}=$")  # base64 of a 32-byte HMAC-SHA256


@dataclass(frozen=True, slots=True)
class SignedHeaders:
    message_id: str
    timestamp: str
    signature: str


def signed_headers(headers: Mapping[str, str]) -> SignedHeaders:
    """The svix-* headers, or their webhook-* twins (svix-* wins when both are present)."""
    values = []
    for name in ("id", "timestamp", "signature"):
        value = headers.get(f"svix-{name}") or headers.get(f"webhook-{name}")
        if not value:
            raise MissingHeaders(f"missing svix-{name} (or webhook-{name}) header")
        values.append(value)
    return SignedHeaders(*values)


class Verifier:
    """Verifies deliveries against every configured secret (secret rotation)."""

    def __init__(self, secrets: tuple[WebhookSecret, ...], *, tolerance_seconds: int) -> None:
        self._webhooks = [(secret.id, Webhook(secret.value)) for secret in secrets]
        self._tolerance = tolerance_seconds

    def verify(self, body: bytes, signed: SignedHeaders, *, now: float | None = None) -> str:
        """Return the id of the secret that signed ``body``; raise InvalidSignature otherwise.

        ``now`` moves our own tolerance check (for tests); svix checks its five-minute window
        against the real clock as well, so a stale timestamp never verifies.
        """
        # svix accepts fractional timestamps and has a fixed window; ours are stricter and set.
        if not (signed.timestamp.isascii() and signed.timestamp.isdigit()
                and len(signed.timestamp) <= 12):
            raise InvalidSignature("malformed_timestamp")
        age = (time.time() if now is None else now) - int(signed.timestamp)
        if age > self._tolerance:
            raise InvalidSignature("timestamp_too_old")
        if age < -self._tolerance:
            raise InvalidSignature("timestamp_too_new")
        # svix gives up at the first token it cannot read, which would hide a good token after
        # it; hand it only the well-formed v1 tokens (other versions are ignored, as it does).
        tokens = [t for t in signed.signature.split(" ") if _WELL_FORMED_V1.match(t)]
        if not tokens:
            raise InvalidSignature("malformed_signature")
        headers = {"webhook-id": signed.message_id, "webhook-timestamp": signed.timestamp,
                   "webhook-signature": " ".join(tokens)}
        for secret_id, webhook in self._webhooks:
            try:
                # Its return value is ignored on purpose: we parse the exact bytes ourselves.
                webhook.verify(body, headers)
            except Exception:  # any failure inside svix is a failed verification, never a 500
                continue
            return secret_id
        raise InvalidSignature("no_matching_signature")
