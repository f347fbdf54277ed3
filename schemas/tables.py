"""The tables, as SQLModel classes: the schema of record for migrations and for the SQL we write.

Portable between SQLite and PostgreSQL: generic JSON (not JSONB), timezone-aware timestamps.
The delivery path does not go through the ORM (see ``service/store.py``); these classes define
the schema that alembic migrates and that ``tests/test_migrations.py`` holds the migrations to.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from schemas.commands import NOT_CODAT_JOBS_SQL

_TS = sa.DateTime(timezone=True)
# Order keys (schemas.order) compare byte for byte: SQLite's default, PostgreSQL's "C" collation.
_KEY = sa.Text().with_variant(sa.Text(collation="C"), "postgresql")


def _ts(*, nullable: bool = True, index: bool = False) -> Any:
    return Field(default=None, sa_type=_TS, nullable=nullable, index=index)


def _json() -> Any:
    return Field(default=None, sa_type=sa.JSON, nullable=True)


def _key() -> Any:
    return Field(default=None, sa_type=_KEY, nullable=True)


class Company(SQLModel, table=True):
    __tablename__ = "companies"
    # The on-call search by the start of a name (names are capped at 500 characters when parsed:
    # an index entry must fit a page).
    __table_args__ = (sa.Index("ix_companies_name_id", "name", "id"),)

    id: str = Field(primary_key=True)
    name: str | None = None
    description: str | None = None
    tags: dict[str, str] | None = _json()
    redirect: str | None = None
    products: list[str] | None = _json()
    created: datetime | None = _ts()
    deleted: bool = Field(default=False)
    deleted_at: datetime | None = _ts()
    # The order key of company.deleted: it deletes every connection of the company, including
    # one whose events arrive after it.
    deleted_key: str | None = _key()
    # How many of its connections are Linked, kept with every move: the company is ready for Bill
    # Pay only while this is above 0, whatever commits meanwhile (a row lock orders the updates).
    linked_count: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    bill_pay_ready: bool = Field(default=False)
    bill_pay_checked_at: datetime | None = _ts()
    bill_pay_detail: dict[str, Any] | None = _json()
    last_event_at: datetime | None = _ts()
    created_at: datetime = _ts(nullable=False)
    updated_at: datetime = _ts(nullable=False)


class Connection(SQLModel, table=True):
    __tablename__ = "connections"
    __table_args__ = (
        sa.Index("ix_connections_company_id_id", "company_id", "id"),
        sa.Index("ix_connections_status_id", "status", "id"),
        sa.Index("ix_connections_platform_key_id", "platform_key", "id"),
        # Connections in one state, most recently changed first (on-call), and the count of
        # each state from the index alone.
        sa.Index("ix_connections_status_deleted_updated_at", "status", "deleted", "updated_at"),
    )

    id: str = Field(primary_key=True)
    company_id: str
    platform_key: str | None = None
    platform_name: str | None = None
    source_type: str | None = None
    integration_id: str | None = None
    source_id: str | None = None
    link_url: str | None = None
    # Codat's status; None only while a connection is known by id alone.
    status: str | None = None
    errors: list[dict[str, Any]] | None = _json()
    created: datetime | None = _ts()
    last_sync: datetime | None = _ts()
    deleted: bool = Field(default=False)
    deleted_at: datetime | None = _ts()
    # The newest word applied (schemas.order): its key, its instant and the event it came with.
    event_key: str | None = _key()
    last_event_at: datetime | None = _ts()
    last_event_id: str | None = None
    # The state before the newest word moved it (None: nothing heard before it).
    previous_state: str | None = None
    version: int = Field(default=0)
    created_at: datetime = _ts(nullable=False)
    updated_at: datetime = _ts(nullable=False)


class ConnectionHistory(SQLModel, table=True):
    __tablename__ = "connection_history"
    __table_args__ = (
        # One row per (connection, event): a replayed or re-sent event records nothing twice.
        # Also serves a connection's history (by its connection_id prefix): a connection has
        # tens of rows, and every index here is paid on each delivery.
        sa.UniqueConstraint("connection_id", "event_id", "event_type",
                            name="uq_connection_history_event"),
    )

    id: int | None = Field(default=None, primary_key=True)
    connection_id: str
    company_id: str
    from_state: str | None = None
    to_state: str | None = None
    result: str  # applied / superseded / rejected
    # Applied, but not one step of Codat's lifecycle (events were missed): Codat was asked.
    skipped: bool = Field(default=False, sa_column_kwargs={"server_default": sa.false()})
    source: str  # webhook / api / reconcile
    event_id: str | None = None
    event_type: str | None = None
    delivery_id: str | None = None
    event_time: datetime | None = _ts()
    event_key: str | None = _key()
    recorded_at: datetime = _ts(nullable=False)
    reason: str | None = None


class Delivery(SQLModel, table=True):
    __tablename__ = "deliveries"
    __table_args__ = (
        sa.Index("ix_deliveries_received_at", "received_at"),
        sa.Index("ix_deliveries_outcome_received_at", "outcome", "received_at"),
        sa.Index("ix_deliveries_event_id", "event_id"),  # on-call search by Codat's event id
        sa.Index("ix_deliveries_company_id_received_at", "company_id", "received_at"),
    )

    message_id: str = Field(primary_key=True)
    msg_timestamp: int = Field(sa_type=sa.BigInteger)
    event_id: str | None = None
    event_type: str | None = None
    company_id: str | None = None
    connection_id: str | None = None
    # The exact bytes as received (NULL once pruned; the dedupe record stays).
    body: bytes | None = Field(default=None, sa_type=sa.LargeBinary, nullable=True)
    body_sha256: str
    headers: dict[str, str] | None = _json()
    secret_id: str
    received_at: datetime = _ts(nullable=False)
    processed_at: datetime | None = _ts()
    outcome: str  # processed / ignored / unparseable / failed
    error: str | None = None
    attempts: int = Field(default=1)


class DeliveryConflict(SQLModel, table=True):
    """A message id seen again with a different body: kept for on-call, never processed."""

    __tablename__ = "delivery_conflicts"

    id: int | None = Field(default=None, primary_key=True)
    message_id: str = Field(index=True)
    body_sha256: str
    body: bytes | None = Field(default=None, sa_type=sa.LargeBinary, nullable=True)
    secret_id: str
    received_at: datetime = _ts(nullable=False)


class OutboxJob(SQLModel, table=True):
    """Follow-up work, written in the same transaction as the change that caused it."""

    __tablename__ = "outbox"
    __table_args__ = (
        sa.Index("ix_outbox_status_next_attempt_at", "status", "next_attempt_at"),
        sa.Index("ix_outbox_company_id_created_at", "company_id", "created_at"),
        # Jobs of one sequence (a subscriber's pushes about one connection) run in order.
        sa.Index("ix_outbox_sequence", "sequence", "ordinal",
                 sqlite_where=sa.text("sequence IS NOT NULL"),
                 postgresql_where=sa.text("sequence IS NOT NULL")),
        # What a claim may run while Codat calls wait (schemas/commands.py), in claim order.
        sa.Index("ix_outbox_not_codat_status_next_attempt_at", "status", "next_attempt_at",
                 "id", sqlite_where=sa.text(NOT_CODAT_JOBS_SQL),
                 postgresql_where=sa.text(NOT_CODAT_JOBS_SQL)),
    )

    id: str = Field(primary_key=True)
    kind: str
    # The same cause never enqueues the same job twice (e.g. "confirm:<connection>:<event>").
    dedupe_key: str = Field(unique=True)
    company_id: str | None = None
    connection_id: str | None = None
    payload: dict[str, Any] | None = _json()
    # Jobs sharing a sequence are claimed one at a time, in ordinal order (None: any order).
    sequence: str | None = None
    ordinal: int | None = Field(default=None, sa_type=sa.BigInteger)
    status: str  # pending / running / done / dead
    attempts: int = Field(default=0)
    max_attempts: int
    next_attempt_at: datetime = _ts(nullable=False)
    lease_until: datetime | None = _ts()
    locked_by: str | None = None
    last_error: str | None = None
    created_at: datetime = _ts(nullable=False)
    updated_at: datetime = _ts(nullable=False)


class DataTypeStatus(SQLModel, table=True):
    """The latest read status of one data type of a company (from read.completed events)."""

    __tablename__ = "data_type_status"

    company_id: str = Field(primary_key=True)
    data_type: str = Field(primary_key=True)
    connection_id: str | None = None
    status: str
    records_modified: bool | None = None
    issues: list[dict[str, Any]] | None = _json()
    event_time: datetime | None = _ts()
    updated_at: datetime = _ts(nullable=False)


class WriteResult(SQLModel, table=True):
    """A ``{dataType}.write.successful|unsuccessful`` event, recorded against its company."""

    __tablename__ = "write_results"

    event_id: str = Field(primary_key=True)
    company_id: str = Field(index=True)
    connection_id: str | None = None
    data_type: str
    successful: bool
    push_operation_key: str
    operation: str | None = None
    status: str | None = None
    record_id: str | None = None
    event_time: datetime | None = _ts()
    recorded_at: datetime = _ts(nullable=False)


class RateLimitState(SQLModel, table=True):
    """Codat's client rate limit as its webhooks last told us: all Codat calls pause until then."""

    __tablename__ = "rate_limit"

    id: int = Field(default=1, primary_key=True)
    paused_until: datetime | None = _ts()
    daily_quota: int | None = None
    quota_remaining: int | None = None
    event_time: datetime | None = _ts()
    updated_at: datetime = _ts(nullable=False)


class ApiIdempotency(SQLModel, table=True):
    """A caller's Idempotency-Key on the onboarding API: the first result, replayed."""

    __tablename__ = "api_idempotency"

    key: str = Field(primary_key=True)
    request_hash: str
    status_code: int | None = None  # None while the first request is still in progress
    response: str | None = None
    created_at: datetime = _ts(nullable=False, index=True)
    completed_at: datetime | None = _ts()
    # Set when the Codat call failed: a retry with the same key may try again.
    failed_at: datetime | None = _ts()
    # Codat caches a 5xx under its Idempotency-Key; after one, the next try needs a new key.
    codat_attempt: int = Field(default=0, sa_column_kwargs={"server_default": "0"})


class Change(SQLModel, table=True):
    """The change feed: every change of a connection's state or a company's readiness, in the
    order of its id. An id is drawn after the rows it describes were locked, so ids follow
    commit order for each connection; service/feed.py reads only below a horizon no
    transaction in flight can write under. AUTOINCREMENT on SQLite: an id is never reused."""

    __tablename__ = "changes"
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: int | None = Field(default=None, sa_type=sa.BigInteger().with_variant(sa.Integer(),
                                                                              "sqlite"),
                           primary_key=True)
    type: str
    at: datetime = _ts(nullable=False)
    company_id: str
    connection_id: str | None = None
    data: dict[str, Any] | None = _json()


class FeedState(SQLModel, table=True):
    """What the feed no longer keeps: changes up to ``floor`` were pruned (410 below it)."""

    __tablename__ = "feed_state"

    id: int = Field(default=1, primary_key=True)
    floor: int = Field(default=0, sa_type=sa.BigInteger)
    updated_at: datetime = _ts(nullable=False)


class SubscriberCursor(SQLModel, table=True):
    """How far the worker has handed a push subscriber's changes to the outbox."""

    __tablename__ = "subscriber_cursors"

    name: str = Field(primary_key=True)
    position: int = Field(default=0, sa_type=sa.BigInteger)
    updated_at: datetime = _ts(nullable=False)
