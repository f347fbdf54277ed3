"""The accounting platforms the sandbox offers, keyed by Codat platform key (CONTRACT §3)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from schemas.platforms import PLATFORM_NAMES

_NAMESPACE = uuid.UUID("6f1c7f43-3d0e-4c55-9a55-2f6b1f0e7c11")


@dataclass(frozen=True, slots=True)
class Platform:
    """One integration: its key, display name and the stable ids Codat gives it."""

    key: str
    name: str
    offline: bool = False
    source_type: str = "Accounting"

    @property
    def integration_id(self) -> str:
        return str(uuid.uuid5(_NAMESPACE, f"integration:{self.key}"))

    @property
    def source_id(self) -> str:
        return str(uuid.uuid5(_NAMESPACE, f"source:{self.key}"))


# The names are the contract's table (schemas/platforms.py); QuickBooks Desktop runs through
# Codat's offline connector.
PLATFORMS: dict[str, Platform] = {
    key: Platform(key, name, offline=key == "pqsw") for key, name in PLATFORM_NAMES.items()
}


def integration_body(platform: Platform) -> dict[str, Any]:
    """The ``Integration`` object of ``GET /integrations``."""
    return {
        "key": platform.key,
        "logoUrl": f"https://static.codat.io/public/officialLogos/Full/{platform.key}.png",
        "name": platform.name,
        "enabled": True,
        "sourceId": platform.source_id,
        "sourceType": platform.source_type,
        "integrationId": platform.integration_id,
        "isOfflineConnector": platform.offline,
        "isBeta": False,
        "dataProvidedBy": "Codat",
    }
