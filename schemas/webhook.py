"""Codat's webhook bodies (contract section 6) and the parser that maps them to internal events.

The parser reads the exact bytes, tolerates unknown fields, reads ``eventType`` and falls back to
``type``, and understands the legacy ``DataConnectionStatusChanged`` rule body. It raises
:class:`UnusableDelivery` for an authentic body it cannot use (a retry would fail the same way)
and :class:`UnsupportedEvent` for an event type we do not act on.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from schemas.events import (
    CompanyEvent,
    CompanyEventKind,
    CompanyInfo,
    ConnectionEvent,
    ConnectionEventKind,
    ConnectionInfo,
    DataTypeRead,
    Event,
    EventMeta,
    RateLimitChanged,
    ReadCompleted,
    WriteCompleted,
)
from schemas.order import parse_instant
from schemas.state import ConnectionStatus


class UnusableDelivery(Exception):
    """An authentic delivery whose body we cannot use: not JSON, the wrong shape, unknown values."""


class UnsupportedEvent(Exception):
    """An authentic, well-formed delivery of an event type we do not act on."""

    def __init__(self, event_type: str, event_id: str | None) -> None:
        super().__init__(f"event type {event_type!r} is not one we act on")
        self.event_type = event_type
        self.event_id = event_id


def parse_datetime(value: object) -> datetime | None:
    """Codat's ISO-8601 forms. A value without a zone is taken as UTC: the dates we order by
    (``generatedDate``) are documented as UTC, and the rest are only displayed."""
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str) and value:
        parsed = datetime.fromisoformat(value)
    else:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _lenient_datetime(value: object) -> datetime | None:
    # Informational dates (lastSync, created, expiryDate) never make a body unusable: Codat's own
    # rate-limit example carries "23:59:99".
    try:
        return parse_datetime(value)
    except ValueError:
        return None


# Ids become keys (primary, unique) and Codat URL paths: anything else is not a Codat id, and a
# key longer than an index entry can hold would fail every retry.
_ID = re.compile(r"[\x21-\x7e]{1,128}")


def _id(value: object) -> str:
    if not isinstance(value, str) or _ID.fullmatch(value) is None:
        raise ValueError("an id is 1 to 128 printable ASCII characters without spaces")
    return value


LenientDatetime = Annotated[datetime | None, BeforeValidator(_lenient_datetime)]
Id = Annotated[str, BeforeValidator(_id)]


class _Body(BaseModel):
    model_config = ConfigDict(
        extra="ignore", alias_generator=to_camel, populate_by_name=True, frozen=True
    )


class _CompanyRef(_Body):
    id: Id
    name: str | None = Field(default=None, max_length=500)  # an index entry must fit a page
    description: str | None = None
    tags: dict[str, str] | None = None


class _Company(_CompanyRef):
    redirect: str | None = None
    created: LenientDatetime = None
    products: list[str] | None = None


class _Connection(_Body):
    id: Id
    status: str
    integration_id: str | None = None
    integration_key: str | None = None
    platform_key: str | None = None  # the legacy name of integrationKey
    source_id: str | None = None
    source_type: str | None = None
    platform_name: str | None = None
    link_url: str | None = None
    created: LenientDatetime = None
    last_sync: LenientDatetime = None
    data_connection_errors: list[dict[str, Any]] | None = None


class _Envelope(_Body):
    id: Id
    event_type: str
    generated_date: str
    payload: dict[str, Any]


class _ConnectionPayload(_Body):
    reference_company: _CompanyRef
    connection: _Connection


class _DataTypeRead(_Body):
    connection_id: Id | None = None
    data_type: str
    status: str
    records_modified: bool | None = None
    issues: list[dict[str, Any]] | None = None


class _ReadPayload(_Body):
    reference_company: _CompanyRef
    data_types: list[_DataTypeRead]


class _WritePayload(_Body):
    id: Id
    type: str | None = None
    reference_company: _CompanyRef
    connection_id: Id | None = None
    status: str | None = None
    record: dict[str, Any] | None = None


class _RateLimitPayload(_Body):
    daily_quota: int | None = None
    quota_remaining: int | None = None
    expiry_date: LenientDatetime = None


class _LegacyData(_Body):
    data_connection_id: Id | None = None
    new_status: str
    old_status: str | None = None
    platform_key: str | None = None


class _LegacyBody(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    AlertId: Id
    RuleType: str
    CompanyId: Id
    DataConnectionId: Id | None = None
    Data: _LegacyData


_CONNECTION_KINDS = {f"connection.{k.value}": k for k in ConnectionEventKind}
_COMPANY_KINDS = {
    "company.created": CompanyEventKind.CREATED,
    "company.deleted": CompanyEventKind.DELETED,
    "company.product.added": CompanyEventKind.PRODUCT_ADDED,
    "company.product.removed": CompanyEventKind.PRODUCT_REMOVED,
}
_WRITE_TYPE = re.compile(r"^(?P<data_type>[^.]+)\.write\.(?P<result>successful|unsuccessful)$")
_LEGACY_STATUS_CHANGED = "DataConnectionStatusChanged"


def parse_event(body: bytes) -> Event:
    """Map a verified delivery body onto an internal event."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise UnusableDelivery(f"body is not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise UnusableDelivery("body is not a JSON object")
    if b"\\u0000" in body and _holds_nul(document):
        # PostgreSQL's text cannot hold it; refused on every database alike.
        raise UnusableDelivery("body holds a NUL character (\\u0000), which cannot be stored")
    try:
        if "RuleType" in document and "eventType" not in document:
            rule = document["RuleType"]
            if rule != _LEGACY_STATUS_CHANGED and isinstance(rule, str):
                alert = document.get("AlertId")
                known = isinstance(alert, str) and _ID.fullmatch(alert) is not None
                raise UnsupportedEvent(rule[:200], alert if known else None)
            return _parse_legacy(_LegacyBody.model_validate(document))
        if "eventType" not in document and "type" in document:
            document = {**document, "eventType": document["type"]}
        return _parse_current(_Envelope.model_validate(document))
    except ValidationError as exc:
        raise UnusableDelivery(f"body does not have the shape of a Codat event: {_brief(exc)}") \
            from None


def _holds_nul(value: object) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_holds_nul(k) or _holds_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_holds_nul(v) for v in value)
    return False


def _parse_current(envelope: _Envelope) -> Event:
    try:
        generated, generated_at = parse_instant(envelope.generated_date)
    except ValueError as exc:
        raise UnusableDelivery(f"generatedDate {envelope.generated_date[:64]!r} is not a usable "
                               f"date-time: {exc}") from None
    meta = EventMeta(envelope.id, envelope.event_type, generated_at, generated)
    event_type, payload = envelope.event_type, envelope.payload
    if kind := _CONNECTION_KINDS.get(event_type):
        body = _ConnectionPayload.model_validate(payload)
        return ConnectionEvent(meta, kind, _company_info(body.reference_company),
                               _connection_info(body.connection))
    if company_kind := _COMPANY_KINDS.get(event_type):
        return CompanyEvent(meta, company_kind, _company_info(_Company.model_validate(payload)))
    if event_type in ("read.completed", "read.completed.initial"):
        read = _ReadPayload.model_validate(payload)
        data_types = [
            DataTypeRead(d.connection_id, d.data_type, d.status, d.records_modified, d.issues or [])
            for d in read.data_types
        ]
        return ReadCompleted(meta, event_type.endswith(".initial"),
                             _company_info(read.reference_company), data_types)
    if match := _WRITE_TYPE.match(event_type):
        write = _WritePayload.model_validate(payload)
        record_id = (write.record or {}).get("id")
        return WriteCompleted(
            meta, match["data_type"], match["result"] == "successful",
            _company_info(write.reference_company), write.connection_id, write.id, write.type,
            write.status, record_id if isinstance(record_id, str) else None,
        )
    if event_type in ("client.rateLimit.reached", "client.rateLimit.reset"):
        limit = _RateLimitPayload.model_validate(payload)
        return RateLimitChanged(meta, event_type.endswith(".reached"), limit.daily_quota,
                                limit.quota_remaining, limit.expiry_date)
    raise UnsupportedEvent(event_type, envelope.id)


def _parse_legacy(body: _LegacyBody) -> Event:
    connection_id = body.DataConnectionId or body.Data.data_connection_id
    if not connection_id:
        raise UnusableDelivery("legacy body names no data connection")
    new_status = _status(body.Data.new_status)
    old_status = _status(body.Data.old_status) if body.Data.old_status else None
    if new_status is ConnectionStatus.PENDING_AUTH:
        kind = ConnectionEventKind.CREATED
    elif new_status is ConnectionStatus.LINKED:
        kind = (ConnectionEventKind.CONNECTED if old_status in (None, ConnectionStatus.PENDING_AUTH)
                else ConnectionEventKind.RECONNECTED)
    else:
        kind = ConnectionEventKind.DISCONNECTED
    meta = EventMeta(body.AlertId, body.RuleType, None)
    connection = ConnectionInfo(id=connection_id, status=new_status,
                                platform_key=body.Data.platform_key)
    return ConnectionEvent(meta, kind, CompanyInfo(id=body.CompanyId), connection, old_status)


def _status(value: str) -> ConnectionStatus:
    try:
        return ConnectionStatus(value)
    except ValueError:
        known = ", ".join(s.value for s in ConnectionStatus)
        raise UnusableDelivery(f"unknown connection status {value!r} (known: {known})") from None


def _company_info(company: _CompanyRef) -> CompanyInfo:
    if isinstance(company, _Company):
        return CompanyInfo(company.id, company.name, company.description, company.tags,
                           company.redirect, company.products, company.created)
    return CompanyInfo(company.id, company.name, company.description, company.tags)


def _connection_info(connection: _Connection) -> ConnectionInfo:
    return ConnectionInfo(
        id=connection.id,
        status=_status(connection.status),
        platform_key=connection.integration_key or connection.platform_key,
        platform_name=connection.platform_name,
        source_type=connection.source_type,
        integration_id=connection.integration_id,
        source_id=connection.source_id,
        link_url=connection.link_url,
        created=connection.created,
        last_sync=connection.last_sync,
        errors=connection.data_connection_errors,
    )


def _brief(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors()[:3]:
        where = ".".join(str(p) for p in error["loc"]) or "body"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)
