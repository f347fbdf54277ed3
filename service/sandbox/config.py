"""The sandbox's settings: one frozen value, built by whoever starts the sandbox."""

from __future__ import annotations

import base64
from dataclasses import dataclass


@dataclass(frozen=True)
class SandboxConfig:
    """How the local Codat behaves.

    Parameters:
        api_key: the raw Codat API key the sandbox accepts (a ready-made ``Basic ...``
            header value works too, as the Codat Portal shows both).
        webhook_secret: the ``whsec_...`` secret every delivery is signed with.
        webhook_url: where deliveries go; ``None`` records messages without sending them.
        public_url: the base URL the sandbox is reachable at; ``linkUrl`` and ``redirect``
            are built from it.
        retry_schedule: the wait before each delivery attempt. Codat's is 0, 5 s, 5 min,
            30 min, 2 h, 5 h, 10 h, 10 h; this one is shortened so tests and demos finish.
        delivery_timeout: an attempt slower than this counts as failed (Codat: 15 s).
        read_delay: how long the simulated first read takes after authorization.
    """

    api_key: str
    webhook_secret: str
    webhook_url: str | None
    public_url: str
    retry_schedule: tuple[float, ...] = (0, 0.5, 1.0, 2.0, 5.0)
    delivery_timeout: float = 15.0
    read_delay: float = 0.2

    @property
    def authorization(self) -> str:
        """The exact ``Authorization`` header value Codat expects for this key (no colon)."""
        if self.api_key.startswith("Basic "):
            return self.api_key
        return "Basic " + base64.b64encode(self.api_key.encode("ascii")).decode("ascii")

    @property
    def base_url(self) -> str:
        """``public_url`` without a trailing slash."""
        return self.public_url.rstrip("/")
