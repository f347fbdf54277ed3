"""The query API for internal services: bearer-token auth, camelCase JSON, keyset pagination."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service import outbox, queries
from service.auth import Endpoint as Endpoint
from service.auth import TokenAuth as TokenAuth
from service.db import Database
from service.outbox import JobStatus
from service.queries import BadQuery, ConnectionFilter


def json_response(content: Any, status: int = 200, headers: dict[str, str] | None = None,
                  ) -> Response:
    return Response(orjson.dumps(content), status, headers, media_type="application/json")


def error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return json_response({"statusCode": status, "error": message}, status, headers)


class QueryApi:
    """GET endpoints over the stored state."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def company(self, request: Request) -> Response:
        company_id = request.path_params["company_id"]
        found = await self._db.read(lambda tx: queries.get_company(tx, company_id))
        return json_response(found) if found else error(404, f"no company {company_id}")

    async def company_connections(self, request: Request) -> Response:
        company_id = request.path_params["company_id"]

        async def work(tx: Any) -> Any:
            if await queries.get_company(tx, company_id) is None:
                return None
            return await queries.company_connections(tx, company_id)

        found = await self._db.read(work)
        if found is None:
            return error(404, f"no company {company_id}")
        return json_response({"results": found})

    async def connection(self, request: Request) -> Response:
        connection_id = request.path_params["connection_id"]
        found = await self._db.read(lambda tx: queries.get_connection(tx, connection_id))
        return json_response(found) if found else error(404, f"no connection {connection_id}")

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
        return json_response(found)

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
        return json_response(page)

    async def delivery(self, request: Request) -> Response:
        message_id = request.path_params["message_id"]
        include = request.query_params.get("includeBody", "false").lower()
        if include not in ("true", "false", "1", "0"):
            raise BadQuery("includeBody: must be true or false")
        found = await self._db.read(lambda tx: queries.get_delivery(
            tx, message_id, include_body=include in ("true", "1")))
        return json_response(found) if found else error(404, f"no delivery {message_id}")

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
        return json_response({"results": page, "nextCursor": next_cursor})

    def routes(self, auth: TokenAuth) -> list[Route]:
        return [
            Route("/v1/companies/{company_id}", auth.protect(self.company), methods=["GET"]),
            Route("/v1/companies/{company_id}/connections",
                  auth.protect(self.company_connections), methods=["GET"]),
            Route("/v1/connections", auth.protect(self.connections), methods=["GET"]),
            Route("/v1/connections/{connection_id}", auth.protect(self.connection),
                  methods=["GET"]),
            Route("/v1/connections/{connection_id}/history", auth.protect(self.history),
                  methods=["GET"]),
            Route("/v1/deliveries/{message_id}", auth.protect(self.delivery), methods=["GET"]),
            Route("/v1/outbox", auth.protect(self.outbox_jobs), methods=["GET"]),
        ]
