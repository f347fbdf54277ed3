"""The change feed's page and each kind of change, as pydantic models, and its operation
(``GET /v1/events``) as data: ``/openapi.json`` describes them, and the feed's answers are checked
against them (``FEED.answer(page)``, as the query API's are).

A change is one of four types, told apart by ``type``; each has the same envelope (``id``,
``type``, ``at``, ``companyId``, ``connectionId``) and its own ``data``. ``connectionId`` is a
string on a connection's change and always null on a company's.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, RootModel, StrictBool

from schemas.changes import ChangeType
from schemas.state import Source, State
from service.api_models import ApiModel, Time
from service.operations import Operation, Param

# --- data of each type ---------------------------------------------------------------------


class ChangeCause(ApiModel):
    """What made the change: a Codat webhook, an onboarding API call, or a reconcile (a
    follow-up job that asked Codat)."""

    source: Source
    event_id: str = Field(description="Codat's event id; for api and reconcile, the call's or "
                                      "the job's id")
    event_type: str = Field(description="e.g. connection.connected, api.unlink")
    delivery_id: str | None = Field(description="the svix message id that carried the webhook; "
                                                "null for api and reconcile")


class StatusChangedData(ApiModel):
    """A connection moved from one state to another."""

    from_: State | None = Field(alias="from", description="null: first heard of")
    to: State
    skipped: StrictBool = Field(description="not one step of Codat's lifecycle: events were "
                                            "missed or came out of order, and Codat is asked "
                                            "to confirm")
    cause: ChangeCause


class ConnectionDeletedData(ApiModel):
    """Codat deleted the connection (terminal)."""

    from_: State | None = Field(alias="from", description="null: first heard of")
    cause: ChangeCause


class BillPayReadyChangedData(ApiModel):
    """The company became ready for Bill Pay, or stopped being ready."""

    ready: StrictBool
    why_not: list[str] = Field(description="why it is not ready, in words; empty when ready")


class CompanyDeletedData(ApiModel):
    """Codat deleted the company (and so each of its connections)."""

    event_id: str = Field(description="Codat's company.deleted event id")


# --- the changes -----------------------------------------------------------------------------

class _Change(ApiModel):
    id: str = Field(description="stable: the same change has the same id on every read")
    type: str
    at: Time = Field(description="when the change was recorded")
    company_id: str
    connection_id: str | None


class _CompanyChange(_Change):
    connection_id: None = Field(description="always null: a company's change")


class ConnectionStatusChanged(_Change):
    """A connection's state changed."""

    type: Literal[ChangeType.STATUS_CHANGED]
    connection_id: str
    data: StatusChangedData


class ConnectionDeleted(_Change):
    """A connection was deleted."""

    type: Literal[ChangeType.CONNECTION_DELETED]
    connection_id: str
    data: ConnectionDeletedData


class CompanyBillPayReadyChanged(_CompanyChange):
    """A company's Bill Pay readiness changed."""

    type: Literal[ChangeType.READY_CHANGED]
    data: BillPayReadyChangedData


class CompanyDeleted(_CompanyChange):
    """A company was deleted."""

    type: Literal[ChangeType.COMPANY_DELETED]
    data: CompanyDeletedData


CHANGE_MODELS = (ConnectionStatusChanged, ConnectionDeleted, CompanyBillPayReadyChanged,
                 CompanyDeleted)
AnyChange = Annotated[ConnectionStatusChanged | ConnectionDeleted | CompanyBillPayReadyChanged
                      | CompanyDeleted, Field(discriminator="type")]
# The feed's type filter (tests/test_openapi.py holds it equal to the models' types).
CHANGE_TYPES: tuple[str, ...] = tuple(ChangeType)


class Change(RootModel[AnyChange]):
    """One change, of the type its ``type`` names."""


class FeedPage(ApiModel):
    """The changes after the cursor, in the order they committed (each connection's in order)."""

    results: list[Change]
    next: str = Field(description="pass as after to continue exactly after the last result "
                                  "(on an empty page: where to wait for the next change)")


MAX_WAIT_SECONDS = 30
FEED = Operation(
    "GET", "/v1/events",
    "The change feed: every change to connections and companies, once each, in commit order; "
    "long-polls with wait", FeedPage, params=(
        Param("after", "a cursor (next of the previous page), or now: an empty page and the "
                       "cursor of the present; without it the feed starts at its beginning"),
        Param("limit", "at most this many changes, 1 to 500", Annotated[int, Field(ge=1, le=500)],
              default=100),
        Param("wait", f"when nothing is new, wait up to this many seconds (at most "
                      f"{MAX_WAIT_SECONDS}) for a change to commit",
              Annotated[float, Field(ge=0, le=MAX_WAIT_SECONDS)], default=0),
        Param("companyId", "only this company's changes"),
        Param("connectionId", "only this connection's changes"),
        Param("type", "only changes of this type", ChangeType)),
    errors={410: "The cursor is older than the changes kept (they are kept as long as "
                 "deliveries are, see prune): start again without after, or with after=now"})
