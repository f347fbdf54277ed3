"""The query API for internal services: bearer-token auth, camelCase JSON, keyset pagination.

Each route is declared as an :class:`~service.operations.Operation` below, next to its endpoint:
its success is checked against that operation's model, and ``/openapi.json`` describes it.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from schemas.state import State
from service import api_models as m
from service import outbox, queries
from service.auth import Endpoint as Endpoint
from service.auth import TokenAuth as TokenAuth
from service.db import Database
from service.operations import Operation, Param
from service.outbox import JobStatus
from service.queries import BadQuery, ConnectionFilter
from service.responses import error as error
from service.responses import json_response as json_response

LIMIT = Param("limit", f"page size, 1 to {queries.MAX_LIMIT}",
              Annotated[int, Field(ge=1, le=queries.MAX_LIMIT)], default=100)
CURSOR = Param("cursor", "nextCursor from the previous page")

COMPANY = Operation("GET", "/v1/companies/{company_id}",
                    "A company, its Bill Pay readiness, read status and connections", m.Company)
COMPANY_CONNECTIONS = Operation("GET", "/v1/companies/{company_id}/connections",
                                "A company's connections", m.CompanyConnections)
CONNECTIONS = Operation(
    "GET", "/v1/connections", "Connections, filtered, in id order (keyset pagination)",
    m.ConnectionPage, params=(
        Param("status", "only connections in this state (Deleted: the deleted ones; the other "
                        "states list no deleted connection)", State),
        Param("platformKey", "e.g. qhyg"), Param("companyId", "a company's connections"),
        LIMIT, CURSOR))
CONNECTION = Operation("GET", "/v1/connections/{connection_id}", "A connection", m.Connection)
HISTORY = Operation("GET", "/v1/connections/{connection_id}/history",
                    "A connection's history: every applied, superseded and rejected word",
                    m.HistoryPage, params=(LIMIT, CURSOR))
DELIVERY = Operation("GET", "/v1/deliveries/{message_id}",
                     "A stored webhook delivery: outcome and error, the body on request",
                     m.Delivery, params=(
                         Param("includeBody", "true (or 1) to include the body", bool,
                               default=False),))
OUTBOX = Operation("GET", "/v1/outbox", "Follow-up jobs, in id order", m.OutboxPage,
                   params=(Param("status", "only jobs in this status", m.JobStatusName),
                           LIMIT, CURSOR))
OPERATIONS = (COMPANY, COMPANY_CONNECTIONS, CONNECTIONS, CONNECTION, HISTORY, DELIVERY, OUTBOX)


class QueryApi:
    """GET endpoints over the stored state."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def company(self, request: Request) -> Response:
        company_id = request.path_params["company_id"]
        found = await self._db.read(lambda tx: queries.get_company(tx, company_id))
        return COMPANY.answer(found) if found else error(404, f"no company {company_id}")

    async def company_connections(self, request: Request) -> Response:
        company_id = request.path_params["company_id"]

        async def work(tx: Any) -> Any:
            if await queries.get_company(tx, company_id) is None:
                return None
            return await queries.company_connections(tx, company_id)

        found = await self._db.read(work)
        if found is None:
            return error(404, f"no company {company_id}")
        return COMPANY_CONNECTIONS.answer({"results": found})

    async def connection(self, request: Request) -> Response:
        connection_id = request.path_params["connection_id"]
        found = await self._db.read(lambda tx: queries.get_connection(tx, connection_id))
        return CONNECTION.answer(found) if found else error(404, f"no connection {connection_id}")

    async def history(self, request: Request) -> Response:
        connection_id = request.path_params["connection_id"]
        limit = queries.parse_limit(request.query_params.get("limit"))
        cursor = request.query_params.get("cursor")
        if cursor:
            queries.decode_cursor(cursor)

        async def work(tx: Any) -> Any:
            if await queries.get_connection(tx, connection_id) is None:
                return None
            return await queries.connection_history(tx, connection_id, limit=limit,
                                                    cursor=cursor)

        found = await self._db.read(work)
        if found is None:
            return error(404, f"no connection {connection_id}")
        return HISTORY.answer(found)

    async def connections(self, request: Request) -> Response:
        params = request.query_params
        unknown = set(params) - {"status", "platformKey", "companyId", "limit", "cursor"}
        if unknown:
            raise BadQuery(f"unknown query parameter(s): {', '.join(sorted(unknown))}")
        filters = ConnectionFilter(params.get("status") or None,
                                   params.get("platformKey") or None,
                                   params.get("companyId") or None)
        limit = queries.parse_limit(params.get("limit"))
        cursor = params.get("cursor") or None
        if cursor:
            queries.decode_cursor(cursor)
        page = await self._db.read(
            lambda tx: queries.list_connections(tx, filters, limit=limit, cursor=cursor))
        return CONNECTIONS.answer(page)

    async def delivery(self, request: Request) -> Response:
        message_id = request.path_params["message_id"]
        include = request.query_params.get("includeBody", "false").lower()
        if include not in ("true", "false", "1", "0"):
            raise BadQuery("includeBody: must be true or false")
        found = await self._db.read(lambda tx: queries.get_delivery(
            tx, message_id, include_body=include in ("true", "1")))
        return DELIVERY.answer(found) if found else error(404, f"no delivery {message_id}")

    async def outbox_jobs(self, request: Request) -> Response:
        params = request.query_params
        status = params.get("status") or None
        if status is not None and status not in JobStatus.ALL:
            raise BadQuery(f"status: unknown value {status!r} (known: "
                           f"{', '.join(JobStatus.ALL)})")
        limit = queries.parse_limit(params.get("limit"))
        cursor = params.get("cursor") or None
        after = queries.decode_cursor(cursor) if cursor else ""
        rows = await self._db.read(
            lambda tx: outbox.list_jobs(tx, status=status, after=after, limit=limit + 1))
        page = rows[:limit]
        next_cursor = queries.encode_cursor(page[-1]["id"]) if len(rows) > limit else None
        return OUTBOX.answer({"results": page, "nextCursor": next_cursor})

    def routes(self, auth: TokenAuth) -> list[Route]:
        return [operation.route(endpoint, auth) for operation, endpoint in (
            (COMPANY, self.company), (COMPANY_CONNECTIONS, self.company_connections),
            (CONNECTIONS, self.connections), (CONNECTION, self.connection),
            (HISTORY, self.history), (DELIVERY, self.delivery), (OUTBOX, self.outbox_jobs))]
