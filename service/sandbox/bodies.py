"""Codat's JSON shapes for the sandbox's objects (camelCase keys, PascalCase enum values).

Optional fields without a value are left out, as in Codat's own examples (a new company has no
``lastSync``; a connection has ``dataConnectionErrors`` only once something went wrong).
"""

from __future__ import annotations

from typing import Any

from service.sandbox.clock import iso
from service.sandbox.model import Company, Connection, DataStatus

PORTAL = "https://app.codat.io"


def company_redirect(base_url: str, company: Company) -> str:
    """The company's hosted Link URL (Codat: ``https://link.codat.io/company/{id}``)."""
    return f"{base_url}/link/company/{company.id}"


def link_url(base_url: str, connection: Connection) -> str:
    """Where the SMB authorizes a connection (Codat: ``link-api.codat.io/.../start``)."""
    return (f"{base_url}/link/companies/{connection.company_id}"
            f"/connections/{connection.id}/start")


def company_details(base_url: str, company: Company) -> dict[str, Any]:
    """The ``companyDetails`` part of a Company, also the payload of ``company.*`` events."""
    body: dict[str, Any] = {
        "id": company.id,
        "name": company.name,
        "description": company.description or "",
        "redirect": company_redirect(base_url, company),
    }
    if company.last_sync is not None:
        body["lastSync"] = iso(company.last_sync)
    body["created"] = iso(company.created)
    if company.tags:
        body["tags"] = dict(company.tags)
    return body


def company_body(base_url: str, company: Company) -> dict[str, Any]:
    """A Company as the API returns it, with its ``dataConnections``."""
    body = company_details(base_url, company)
    body.update({
        "platform": "",  # undeclared in the schema but present in every Codat example
        "createdByUserName": "Codat sandbox",
        "products": [],
        "referenceSubsidiaryCompanies": [],
        "dataConnections": [connection_body(base_url, c) for c in company.connections.values()],
    })
    return body


def company_reference(company: Company) -> dict[str, Any]:
    """``referenceCompany`` in connection and read events."""
    body: dict[str, Any] = {
        "id": company.id,
        "name": company.name,
        "description": company.description or "",
        "links": {"portal": f"{PORTAL}/companies/{company.id}/summary"},
    }
    if company.tags:
        body["tags"] = dict(company.tags)
    return body


def connection_body(base_url: str, connection: Connection) -> dict[str, Any]:
    """A Connection, keys in the order of Codat's examples."""
    platform = connection.platform
    body: dict[str, Any] = {
        "id": connection.id,
        "integrationId": platform.integration_id,
        "integrationKey": platform.key,
        "sourceId": platform.source_id,
        "platformName": platform.name,
        "linkUrl": link_url(base_url, connection),
        "status": connection.status.value,
    }
    if connection.last_sync is not None:
        body["lastSync"] = iso(connection.last_sync)
    body["created"] = iso(connection.created)
    body["sourceType"] = platform.source_type
    if connection.errors:
        body["dataConnectionErrors"] = [dict(error) for error in connection.errors]
    return body


def data_status_body(status: DataStatus) -> dict[str, Any]:
    """One entry of ``GET /companies/{companyId}/dataStatus``."""
    body: dict[str, Any] = {"dataType": status.data_type}
    if status.last_successful_sync is not None:
        body["lastSuccessfulSync"] = iso(status.last_successful_sync)
    body["currentStatus"] = status.current_status
    body["latestSyncId"] = status.latest_sync_id
    if status.latest_successful_sync_id is not None:
        body["latestSuccessfulSyncId"] = status.latest_successful_sync_id
    return body
