"""The calls the service's worker makes once a connection is Linked (CONTRACT §5).

Refreshes (``/data/queue``, ``/data/all``), ``/dataStatus`` and the sync Bill Pay reads
(``/payables/info``, ``/payables/mappingOptions/payments``). They answer 409 while there is
no Linked connection to read from.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from service.sandbox import lifecycle
from service.sandbox.bodies import data_status_body
from service.sandbox.clock import iso, utcnow
from service.sandbox.errors import CodatError
from service.sandbox.gate import codat_endpoint, sandbox_of
from service.sandbox.model import BILL_PAY_DATA_TYPES, Company, Connection, ConnectionStatus

# Accounting data types a refresh may name (Codat's DataStatus enum, accounting part).
DATA_TYPES = frozenset({
    "accountTransactions", "balanceSheet", "bankAccounts", "bankTransactions",
    "billCreditNotes", "billPayments", "bills", "cashFlowStatement", "chartOfAccounts",
    "company", "creditNotes", "customers", "directCosts", "directIncomes", "invoices",
    "itemReceipts", "items", "journalEntries", "journals", "paymentMethods", "payments",
    "profitAndLoss", "purchaseOrders", "salesOrders", "suppliers", "taxRates",
    "trackingCategories", "transfers",
})
_BANK_ACCOUNTS = (
    ("Business current account", "12345678", "400000", "1200", "Active"),
    ("Business savings account", "87654321", "400000", "1210", "Archived"),
)


def _not_linked(connection: Connection) -> CodatError:
    return CodatError(409, f"Data connection {connection.id} is {connection.status.value}; "
                           f"data can be read only while it is Linked.")


def _linked(company: Company, connection_id: str | None) -> Connection:
    """The Linked connection to read from: the one named, or the company's first."""
    if connection_id is not None:
        connection = company.connections.get(connection_id)
        if connection is None:
            raise CodatError(404, f"Data connection {connection_id} not found")
        if connection.status is not ConnectionStatus.LINKED:
            raise _not_linked(connection)
        return connection
    linked = company.linked_connections()
    if not linked:
        raise CodatError(409, f"Company {company.id} has no Linked data connection.")
    return linked[0]


async def refresh_data_type(request: Request) -> Response:
    sandbox = sandbox_of(request)
    company = sandbox.company(request.path_params["companyId"])
    data_type = request.path_params["dataType"]
    if data_type not in DATA_TYPES:
        raise CodatError(400, f"{data_type} is not a data type that can be refreshed.",
                         errors=[("dataType", f"unknown data type {data_type}")])
    connection = _linked(company, request.query_params.get("connectionId"))
    status = lifecycle.start_read(sandbox, company, connection, [data_type])[data_type]
    return JSONResponse({
        "id": status.latest_sync_id, "companyId": company.id, "connectionId": connection.id,
        "dataType": data_type, "status": status.current_status, "requested": iso(utcnow()),
        "progress": 0, "isCompleted": False, "isErrored": False,
    })


async def refresh_all(request: Request) -> Response:
    sandbox = sandbox_of(request)
    company = sandbox.company(request.path_params["companyId"])
    _linked(company, None)
    for connection in company.linked_connections():
        lifecycle.start_read(sandbox, company, connection, list(BILL_PAY_DATA_TYPES))
    return Response(status_code=204)


async def data_status(request: Request) -> Response:
    company = sandbox_of(request).company(request.path_params["companyId"])
    _linked(company, None)
    return JSONResponse({name: data_status_body(status)
                         for name, status in sorted(company.data_status.items())})


def _payables_connection(request: Request) -> Connection:
    _, connection = sandbox_of(request).connection(request.path_params["companyId"],
                                                   request.path_params["connectionId"])
    if connection.status is not ConnectionStatus.LINKED:
        raise _not_linked(connection)
    return connection


async def payables_info(request: Request) -> Response:
    connection = _payables_connection(request)
    company = sandbox_of(request).company(connection.company_id)
    return JSONResponse({"companyName": company.name, "baseCurrency": "GBP"})


def _bank_account(connection: Connection, row: tuple[str, str, str, str, str]) -> dict[str, Any]:
    name, number, sort_code, nominal, status = row
    return {"id": str(uuid.uuid5(uuid.UUID(connection.id), name)), "name": name,
            "accountNumber": number, "currency": "GBP", "nominalCode": nominal,
            "sortCode": sort_code, "status": status, "accountType": "Debit",
            "sourceModifiedDate": iso(connection.created)}


async def payment_mapping_options(request: Request) -> Response:
    """Every bank account fits one page, so ``pagination`` never carries a token."""
    connection = _payables_connection(request)
    if request.query_params.get("continuationToken"):
        raise CodatError(400, "The continuation token is not valid.",
                         errors=[("continuationToken", "unknown token")])
    wanted = set(re.findall(r"status\s*=\s*(\w+)", request.query_params.get("statusQuery", "")))
    accounts = [_bank_account(connection, row) for row in _BANK_ACCOUNTS
                if not wanted or row[4] in wanted]
    return JSONResponse({"bankAccounts": accounts, "pagination": {}})


COMPANY = "/companies/{companyId}"
PAYABLES = COMPANY + "/connections/{connectionId}/payables"

routes: list[BaseRoute] = [
    Route(COMPANY + "/data/queue/{dataType}", codat_endpoint(refresh_data_type),
          methods=["POST"]),
    Route(COMPANY + "/data/all", codat_endpoint(refresh_all), methods=["POST"]),
    Route(COMPANY + "/dataStatus", codat_endpoint(data_status), methods=["GET"]),
    Route(PAYABLES + "/info", codat_endpoint(payables_info), methods=["GET"]),
    Route(PAYABLES + "/mappingOptions/payments", codat_endpoint(payment_mapping_options),
          methods=["GET"]),
]
