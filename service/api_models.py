"""What the API takes and answers, as pydantic models: the one description of its JSON.

Request bodies are validated through these models; every success of the query and onboarding
API is validated against its model, strictly, before it is served
(:meth:`service.operations.Operation.serialize`), and every error is built through
:class:`Error`; ``/openapi.json`` is derived from them (:mod:`service.openapi`). So what is
served, what is checked and what is documented cannot drift apart. The change feed's models are
in :mod:`service.feed_models`.

Response models forbid undeclared keys, and their booleans and integers are strict even when a
model is built in Python: a key added to a query's dict but not here, or a value of another
type, fails loudly (in the tests, which drive every route) instead of being served undocumented
or coerced.
"""

from __future__ import annotations

from typing import Any, Literal, Self

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from schemas.commands import JobKind
from schemas.state import ConnectionStatus, MoveResult, Source, State
from service.edge import storable
from service.ingest import Outcome

Time = AwareDatetime
# service.outbox.JobStatus.ALL, as a type (tests/test_openapi.py holds the two equal).
JobStatusName = Literal["pending", "running", "done", "dead"]


class ApiModel(BaseModel):
    """A JSON object the API answers: camelCase names, nothing undeclared."""

    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True,
                              frozen=True)


# --- errors and probes -----------------------------------------------------------------------

class Error(ApiModel):
    """Every error the API answers (the status is repeated in the body)."""

    status_code: StrictInt = Field(description="the HTTP status")
    error: str = Field(description="what went wrong, in words")
    correlation_id: str | None = Field(
        default=None, description="on onboarding errors: Codat's correlation id, null when "
                                  "Codat was not reached or gave none")


class Health(ApiModel):
    """/healthz: the process answers."""

    status: Literal["ok"]


class Ready(ApiModel):
    """/readyz, ready: the database answers and its migrations are current."""

    ready: Literal[True]
    migration: str = Field(description="the database's migration revision")


class NotReady(ApiModel):
    """/readyz, not ready: the database is unreachable (nothing more is said of why), or its
    migrations are behind this code's."""

    ready: Literal[False]
    reason: str = Field(description='"database unreachable" or "migrations are behind"')
    current: str | None = Field(default=None, description="migrations behind: the database's "
                                                          "revision (null: none applied)")
    head: str | None = Field(default=None, description="migrations behind: this code's revision")


# --- companies and connections ---------------------------------------------------------------

class Connection(ApiModel):
    """A company's connection to its accounting software, as Codat's newest word left it."""

    id: str
    company_id: str
    platform_key: str | None = Field(description="e.g. qhyg (QuickBooks Online), gbol (Xero)")
    platform_name: str | None
    source_type: str | None
    integration_id: str | None
    source_id: str | None
    status: ConnectionStatus | None = Field(
        description="Codat's status (null while the connection is known by id alone); a "
                    "deleted connection keeps its last one: see deleted")
    link_url: str | None = Field(description="the page the SMB opens to authorize")
    created: Time | None
    last_sync: Time | None
    last_event_at: Time | None = Field(description="the instant of the newest word applied")
    last_event_id: str | None
    previous_state: State | None = Field(description="the state before the newest word moved it")
    updated_at: Time
    deleted: StrictBool
    deleted_at: Time | None
    errors: list[dict[str, Any]] = Field(description="Codat's dataConnectionErrors, as sent")
    version: StrictInt = Field(description="how many times the row changed")


class DataTypeStatus(ApiModel):
    """The latest read of one data type of a company (from Codat's read.completed events)."""

    data_type: str = Field(description="e.g. bills, suppliers")
    status: str = Field(description="Codat's dataset status, e.g. Complete, Fetching")
    connection_id: str | None
    records_modified: StrictBool | None
    issues: list[dict[str, Any]]
    last_read_at: Time | None


class Company(ApiModel):
    """A Codat company (an SMB customer): whether it is ready for Bill Pay, what was read of it,
    and its connections."""

    id: str
    name: str | None
    description: str | None
    tags: dict[str, str]
    redirect: str | None
    products: list[str]
    created: Time | None
    deleted: StrictBool
    deleted_at: Time | None
    bill_pay_ready: StrictBool = Field(
        description="never true while no connection is Linked")
    bill_pay_checked_at: Time | None
    bill_pay_detail: dict[str, Any] | None = Field(
        description="what the last readiness check found: mode, and the data types missing or "
                    "failed (null until checked)")
    data_types: list[DataTypeStatus]
    last_event_at: Time | None
    created_at: Time
    updated_at: Time
    data_connections: list[Connection]


class CompanyConnections(ApiModel):
    """A company's connections, in id order."""

    results: list[Connection]


class ConnectionPage(ApiModel):
    """One page of connections, in id order."""

    results: list[Connection]
    next_cursor: str | None = Field(description="pass as cursor for the next page; null on the "
                                                "last one")


# --- history, deliveries, jobs ---------------------------------------------------------------

class HistoryEntry(ApiModel):
    """One word about a connection and what was made of it: every word leaves one row."""

    id: StrictInt
    connection_id: str
    company_id: str
    from_state: State | None
    to_state: State | None
    result: MoveResult = Field(description="applied: the newest word; superseded: older than "
                                           "it; rejected: can never apply (Codat is asked)")
    skipped: StrictBool = Field(description="applied, but not one step of Codat's lifecycle")
    source: Source
    event_id: str | None
    event_type: str | None
    delivery_id: str | None = Field(description="the svix message id that carried it")
    event_time: Time | None = Field(description="the word's instant")
    order_key: str | None = Field(description="what orders it among the connection's words")
    recorded_at: Time
    reason: str | None


class HistoryPage(ApiModel):
    """One page of a connection's history, oldest first."""

    results: list[HistoryEntry]
    next_cursor: str | None = Field(description="pass as cursor for the next page; null on the "
                                                "last one")


class DeliveryBody(ApiModel):
    """A delivery's body exactly as received: UTF-8 text, or base64 when it is not UTF-8."""

    encoding: Literal["utf-8", "base64"]
    text: str


class Delivery(ApiModel):
    """A stored webhook delivery (one svix message): what it was and what became of it."""

    message_id: str = Field(description="svix-id")
    timestamp: StrictInt = Field(description="svix-timestamp, in seconds")
    event_id: str | None
    event_type: str | None
    company_id: str | None
    connection_id: str | None
    body_sha256: str
    secret_id: str = Field(description="which configured secret verified it")
    headers: dict[str, str]
    received_at: Time
    processed_at: Time | None
    outcome: Outcome
    error: str | None
    attempts: StrictInt
    conflicts: StrictInt = Field(
        description="times the message id came again with another body")
    body_pruned: StrictBool
    body: DeliveryBody | None = Field(default=None, description="only with includeBody=true; "
                                                                "null once pruned")


class OutboxJob(ApiModel):
    """A follow-up job (confirm a connection, reconcile it, refresh readiness)."""

    id: str
    kind: JobKind
    dedupe_key: str
    company_id: str | None
    connection_id: str | None
    payload: dict[str, Any]
    status: JobStatusName
    attempts: StrictInt
    max_attempts: StrictInt
    next_attempt_at: Time
    lease_until: Time | None
    locked_by: str | None
    last_error: str | None
    created_at: Time
    updated_at: Time


class OutboxPage(ApiModel):
    """One page of follow-up jobs, in id order."""

    results: list[OutboxJob]
    next_cursor: str | None = Field(description="pass as cursor for the next page; null on the "
                                                "last one")


# --- onboarding request bodies ---------------------------------------------------------------

class RequestBody(BaseModel):
    """A request body: no unknown fields, and no text PostgreSQL cannot store."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @model_validator(mode="after")
    def _storable(self) -> Self:
        # Refused here, before Codat is called: nothing half-done is left behind.
        for name, value in self:
            texts = [value] if isinstance(value, str) else \
                [*value.keys(), *value.values()] if isinstance(value, dict) else []
            if not all(storable(text) for text in texts):
                raise ValueError(f"{name}: contains a character that cannot be stored "
                                 "(NUL or a lone surrogate)")
        return self


class NewCompany(RequestBody):
    """A Codat company to create for an SMB customer."""

    name: str = Field(min_length=1, max_length=255)
    description: str | None = Field(default=None, max_length=1000)
    # Codat's tag rules, checked by _codat_tag_rules; the schema says the same.
    tags: dict[str, str] | None = Field(default=None, json_schema_extra={
        "maxProperties": 10, "propertyNames": {"minLength": 1, "maxLength": 27},
        "additionalProperties": {"type": "string", "maxLength": 100}})

    @field_validator("tags")
    @classmethod
    def _codat_tag_rules(cls, tags: dict[str, str] | None) -> dict[str, str] | None:
        if tags is not None:
            if len(tags) > 10:
                raise ValueError("at most 10 tags")
            for key, value in tags.items():
                if not 1 <= len(key) <= 27 or len(value) > 100:
                    raise ValueError("a tag key is 1-27 characters, a value at most 100")
        return tags


class NewConnection(RequestBody):
    """A connection to create for a company; the answer carries its linkUrl."""

    platform_key: str = Field(alias="platformKey", pattern=r"^[a-z]{4}$",
                              description="e.g. qhyg (QuickBooks Online), gbol (Xero); which "
                                          "are accepted depends on BILL_PAY_MODE")


class Unlink(RequestBody):
    """Why the connection is unlinked (optional; the body may be empty)."""

    reason: str | None = Field(default=None, max_length=500)
