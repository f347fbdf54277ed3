"""What happens to companies and connections, and the webhooks each change sends.

The Codat endpoints, the Link page and the ``/_sandbox`` controls all change state through
these functions, so one move always sends the same event.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

from service.sandbox.clock import iso, utcnow
from service.sandbox.events import company_event, connection_event, read_completed_event
from service.sandbox.model import (
    BILL_PAY_DATA_TYPES,
    Company,
    Connection,
    ConnectionStatus,
    DataStatus,
    new_id,
)
from service.sandbox.platforms import Platform
from service.sandbox.state import Sandbox

LINKED = ConnectionStatus.LINKED


class TransitionRefused(Exception):
    """The connection's current status does not allow the move; the text says why."""


def _connection_event(sandbox: Sandbox, event_type: str, company: Company,
                      connection: Connection, when: datetime) -> str:
    body = connection_event(event_type, sandbox.config.base_url, company, connection, when)
    sandbox.webhooks.publish(body)
    return event_type


def _error(status_code: str, text: str, message: str, when: datetime) -> dict[str, Any]:
    return {"statusCode": status_code, "statusText": text, "errorMessage": message,
            "erroredOnUtc": iso(when), "status": "Active"}


def create_company(sandbox: Sandbox, name: str, description: str | None,
                   tags: dict[str, str]) -> Company:
    """A new company; sends ``company.created``."""
    company = Company(new_id(), name, utcnow(), description, dict(tags))
    sandbox.companies[company.id] = company
    sandbox.webhooks.publish(company_event("company.created", sandbox.config.base_url,
                                           company, company.created))
    return company


def delete_company(sandbox: Sandbox, company: Company) -> None:
    """Remove a company and its connections for good; sends ``company.deleted``."""
    del sandbox.companies[company.id]
    sandbox.webhooks.publish(company_event("company.deleted", sandbox.config.base_url,
                                           company, utcnow()))


def adopt(sandbox: Sandbox, company_id: str, name: str,
          connections: list[tuple[str, Platform, ConnectionStatus]]) -> Company:
    """Put a company and its connections in place as Codat already holds them (their
    statuses as given; a Linked one's Bill Pay data read), sending nothing: a benchmark's
    storm is about customers Codat knows, whose events it delivers itself."""
    now = utcnow()
    company = sandbox.companies.get(company_id) or Company(company_id, name, now)
    sandbox.companies[company_id] = company
    for connection_id, platform, status in connections:
        connection = Connection(connection_id, company_id, platform, now, status)
        company.connections[connection_id] = connection
        if status is LINKED:
            connection.last_sync = company.last_sync = now
            connection.has_read = True
            for data_type in BILL_PAY_DATA_TYPES:
                sync = new_id()
                company.data_status[data_type] = DataStatus(data_type, "Complete", sync, now,
                                                            sync)
    return company


def create_connection(sandbox: Sandbox, company: Company, platform: Platform) -> Connection:
    """A new PendingAuth connection; sends ``connection.created``."""
    connection = Connection(new_id(), company.id, platform, utcnow())
    company.connections[connection.id] = connection
    _connection_event(sandbox, "connection.created", company, connection, connection.created)
    return connection


def authorize(sandbox: Sandbox, company: Company, connection: Connection) -> str | None:
    """The SMB completed Link: Linked, then a read of the Bill Pay data types.

    PendingAuth sends ``connection.connected``; Unlinked or Deauthorized (a re-link) sends
    ``connection.reconnected``; an already Linked connection is left alone (None).
    """
    if connection.status is LINKED:
        return None
    now = utcnow()
    relink = connection.status is not ConnectionStatus.PENDING_AUTH
    connection.status = LINKED
    connection.last_sync = now
    for error in connection.errors:
        if error.get("status") == "Active":
            error.update(status="Resolved", resolvedOnUtc=iso(now))
    event = "connection.reconnected" if relink else "connection.connected"
    _connection_event(sandbox, event, company, connection, now)
    start_read(sandbox, company, connection, list(BILL_PAY_DATA_TYPES))
    return event


def decline(sandbox: Sandbox, company: Company, connection: Connection) -> str:
    """The SMB cancelled Link: the status stays, an error is added, ``connection.failed``."""
    if connection.status is LINKED:
        raise TransitionRefused("the connection is already Linked; there is nothing to decline")
    now = utcnow()
    connection.errors.append(_error("403", "User cancelled linking", "User cancelled", now))
    return _connection_event(sandbox, "connection.failed", company, connection, now)


def deauthorize(sandbox: Sandbox, company: Company, connection: Connection) -> str:
    """The SMB revoked access in their software: Deauthorized, ``connection.disconnected``."""
    if connection.status is not LINKED:
        raise TransitionRefused(f"only a Linked connection can be deauthorized "
                                f"(this one is {connection.status.value})")
    now = utcnow()
    connection.status = ConnectionStatus.DEAUTHORIZED
    text = "The integration de-authorized access to the connection."
    connection.errors.append(_error("401", text, text, now))
    return _connection_event(sandbox, "connection.disconnected", company, connection, now)


def unlink(sandbox: Sandbox, company: Company, connection: Connection) -> str:
    """The client severed the connection (PATCH status Unlinked): ``connection.disconnected``."""
    if connection.status is not LINKED:
        raise TransitionRefused(f"Only Linked data connections can be unlinked; "
                                f"connection {connection.id} is {connection.status.value}.")
    connection.status = ConnectionStatus.UNLINKED
    return _connection_event(sandbox, "connection.disconnected", company, connection, utcnow())


def delete_connection(sandbox: Sandbox, company: Company, connection: Connection) -> str:
    """Remove the connection for good; ``connection.deleted`` shows its last status."""
    del company.connections[connection.id]
    return _connection_event(sandbox, "connection.deleted", company, connection, utcnow())


def start_read(sandbox: Sandbox, company: Company, connection: Connection,
               data_types: list[str]) -> dict[str, DataStatus]:
    """Queue a read of ``data_types``; it completes after ``read_delay`` (see _finish_read)."""
    started: dict[str, DataStatus] = {}
    for data_type in data_types:
        previous = company.data_status.get(data_type)
        status = DataStatus(data_type, "Queued", new_id())
        if previous is not None:
            status.last_successful_sync = previous.last_successful_sync
            status.latest_successful_sync_id = previous.latest_successful_sync_id
        company.data_status[data_type] = started[data_type] = status
    sandbox.spawn(_finish_read(sandbox, company, connection, started))
    return started


def _still_linked(sandbox: Sandbox, company: Company, connection: Connection) -> bool:
    return (sandbox.companies.get(company.id) is company
            and company.connections.get(connection.id) is connection
            and connection.status is LINKED)


async def _finish_read(sandbox: Sandbox, company: Company, connection: Connection,
                       started: dict[str, DataStatus]) -> None:
    await asyncio.sleep(sandbox.config.read_delay)
    if not _still_linked(sandbox, company, connection):
        for status in started.values():
            status.current_status = "Cancelled"
        return
    now = utcnow()
    for status in started.values():
        status.current_status = "Complete"
        status.last_successful_sync = now
        status.latest_successful_sync_id = status.latest_sync_id
    connection.last_sync = company.last_sync = now
    # The first read after linking is the "initial" one; later reads are plain read.completed.
    event = "read.completed" if connection.has_read else "read.completed.initial"
    connection.has_read = True
    sandbox.webhooks.publish(read_completed_event(event, company, connection,
                                                  list(started), now))
