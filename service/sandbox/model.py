"""The in-memory Codat objects: companies, their connections and their data status."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from service.sandbox.platforms import Platform

# The data types Bill Pay asks Codat to "fetch on first link" (CONTRACT §5.1).
BILL_PAY_DATA_TYPES = ("bankAccounts", "bills", "billPayments", "chartOfAccounts", "company",
                       "paymentMethods", "suppliers")


class ConnectionStatus(StrEnum):
    """Codat's ``dataConnectionStatus`` enum, spelled exactly as the API does."""

    PENDING_AUTH = "PendingAuth"
    LINKED = "Linked"
    UNLINKED = "Unlinked"
    DEAUTHORIZED = "Deauthorized"


def new_id() -> str:
    return str(uuid.uuid4())


@dataclass
class Connection:
    """A company's data connection to one accounting platform."""

    id: str
    company_id: str
    platform: Platform
    created: datetime
    status: ConnectionStatus = ConnectionStatus.PENDING_AUTH
    last_sync: datetime | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    has_read: bool = False  # True once the first read after linking finished


@dataclass
class DataStatus:
    """The state of one data type in Codat's cache for a company."""

    data_type: str
    current_status: str
    latest_sync_id: str
    last_successful_sync: datetime | None = None
    latest_successful_sync_id: str | None = None


@dataclass
class Company:
    """A Codat company: the SMB, its connections (in creation order) and its data status."""

    id: str
    name: str
    created: datetime
    description: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    last_sync: datetime | None = None
    connections: dict[str, Connection] = field(default_factory=dict)
    data_status: dict[str, DataStatus] = field(default_factory=dict)

    def linked_connections(self) -> list[Connection]:
        return [c for c in self.connections.values() if c.status is ConnectionStatus.LINKED]
