"""Internal events: what a Codat webhook means, whichever body format it arrived in.

The parser in :mod:`schemas.webhook` maps both the current event types and the legacy
``DataConnectionStatusChanged`` rule body onto these.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from schemas.state import ConnectionStatus


class ConnectionEventKind(StrEnum):
    CREATED = "created"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    RECONNECTED = "reconnected"
    FAILED = "failed"
    DELETED = "deleted"


class CompanyEventKind(StrEnum):
    CREATED = "created"
    DELETED = "deleted"
    PRODUCT_ADDED = "product_added"
    PRODUCT_REMOVED = "product_removed"


@dataclass(frozen=True, slots=True)
class EventMeta:
    event_id: str
    event_type: str
    # Codat's generatedDate, to the microsecond; None for legacy bodies, which carry no time.
    generated_at: datetime | None
    # The same at full precision (7 fractional digits), as sortable UTC text (schemas.order).
    generated: str | None = None


@dataclass(frozen=True, slots=True)
class CompanyInfo:
    """What an event tells us about a company (any field may be unknown)."""

    id: str
    name: str | None = None
    description: str | None = None
    tags: dict[str, str] | None = None
    redirect: str | None = None
    products: list[str] | None = None
    created: datetime | None = None


@dataclass(frozen=True, slots=True)
class ConnectionInfo:
    """What an event tells us about a connection."""

    id: str
    status: ConnectionStatus
    platform_key: str | None = None
    platform_name: str | None = None
    source_type: str | None = None
    integration_id: str | None = None
    source_id: str | None = None
    link_url: str | None = None
    created: datetime | None = None
    last_sync: datetime | None = None
    errors: list[dict[str, Any]] | None = None


@dataclass(frozen=True, slots=True)
class ConnectionEvent:
    meta: EventMeta
    kind: ConnectionEventKind
    company: CompanyInfo
    connection: ConnectionInfo
    # Legacy bodies say which status the connection moved from; current ones imply it.
    previous_status: ConnectionStatus | None = None

    @property
    def legacy(self) -> bool:
        return self.meta.generated_at is None


@dataclass(frozen=True, slots=True)
class CompanyEvent:
    meta: EventMeta
    kind: CompanyEventKind
    company: CompanyInfo


@dataclass(frozen=True, slots=True)
class DataTypeRead:
    connection_id: str | None
    data_type: str
    status: str
    records_modified: bool | None = None
    issues: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ReadCompleted:
    meta: EventMeta
    initial: bool
    company: CompanyInfo
    data_types: list[DataTypeRead]


@dataclass(frozen=True, slots=True)
class WriteCompleted:
    meta: EventMeta
    data_type: str
    successful: bool
    company: CompanyInfo
    connection_id: str | None
    push_operation_key: str
    operation: str | None
    status: str | None
    record_id: str | None


@dataclass(frozen=True, slots=True)
class RateLimitChanged:
    meta: EventMeta
    reached: bool
    daily_quota: int | None
    quota_remaining: int | None
    expires_at: datetime | None


Event = ConnectionEvent | CompanyEvent | ReadCompleted | WriteCompleted | RateLimitChanged


def company_id_of(event: Event) -> str | None:
    """The company an event is about, where it names one."""
    return None if isinstance(event, RateLimitChanged) else event.company.id


def connection_id_of(event: Event) -> str | None:
    """The connection an event is about, where it names exactly one."""
    if isinstance(event, ConnectionEvent):
        return event.connection.id
    if isinstance(event, WriteCompleted):
        return event.connection_id
    if isinstance(event, ReadCompleted):
        ids = {d.connection_id for d in event.data_types if d.connection_id}
        return ids.pop() if len(ids) == 1 else None
    return None
