"""Webhook event bodies, shaped like Codat's published examples (CONTRACT §6.3-6.4)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from service.sandbox.bodies import company_details, company_reference, connection_body
from service.sandbox.clock import generated_date, iso
from service.sandbox.model import Company, Connection, new_id


def envelope(event_type: str, payload: dict[str, Any], generated: datetime) -> dict[str, Any]:
    """``{id, eventType, generatedDate, payload}``; ``generatedDate`` is when it happened."""
    return {"id": new_id(), "eventType": event_type, "generatedDate": generated_date(generated),
            "payload": payload}


def company_event(event_type: str, base_url: str, company: Company,
                  generated: datetime) -> dict[str, Any]:
    """``company.created`` / ``company.deleted``: the company itself is the payload."""
    return envelope(event_type, company_details(base_url, company), generated)


def connection_event(event_type: str, base_url: str, company: Company, connection: Connection,
                     generated: datetime) -> dict[str, Any]:
    """``connection.*``: ``referenceCompany`` plus the connection as it is now."""
    payload = {"referenceCompany": company_reference(company),
               "connection": connection_body(base_url, connection)}
    return envelope(event_type, payload, generated)


def read_completed_event(event_type: str, company: Company, connection: Connection,
                         data_types: list[str], generated: datetime) -> dict[str, Any]:
    """``read.completed`` / ``read.completed.initial`` for data types read on a connection."""
    summaries = [{"connectionId": connection.id, "dataType": data_type,
                  "recordsModified": True, "status": "Complete"} for data_type in data_types]
    payload = {"referenceCompany": company_reference(company),
               "modifiedFromDate": iso(generated), "dataTypes": summaries}
    return envelope(event_type, payload, generated)
