"""``GET /v1/events``: the change feed for internal services (see :mod:`service.feed`)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.auth import TokenAuth
from service.feed import (
    MAX_LIMIT,
    MAX_WAIT,
    BadCursor,
    Feed,
    FeedGone,
    decode_cursor,
    encode_cursor,
    parse_filters,
)
from service.feed_models import FEED
from service.responses import error


def _number(raw: str | None, name: str, default: float, low: float, high: float) -> float:
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not low <= value <= high:  # also NaN
        raise BadCursor(f"{name}: must be a number from {low:g} to {high:g}")
    return value


_PARAMETERS = {"after", "limit", "wait", "companyId", "connectionId", "type"}


class FeedApi:
    """``GET /v1/events``: a page of changes after a cursor, waiting for one if asked."""

    def __init__(self, feed: Feed) -> None:
        self._feed = feed

    async def events(self, request: Request) -> Response:
        params = request.query_params
        try:
            unknown = set(params) - _PARAMETERS
            if unknown:
                raise BadCursor(f"unknown query parameter(s): {', '.join(sorted(unknown))}")
            limit = int(_number(params.get("limit"), "limit", 100, 1, MAX_LIMIT))
            if params.get("limit") and not params["limit"].isdigit():
                raise BadCursor(f"limit: must be a whole number from 1 to {MAX_LIMIT}")
            wait = _number(params.get("wait"), "wait", 0, 0, MAX_WAIT)
            filters = parse_filters(params.get("companyId") or None,
                                    params.get("connectionId") or None,
                                    params.get("type") or None)
            raw = params.get("after") or None
            if raw == "now":
                return FEED.answer({"results": [], "next": encode_cursor(await self._feed.now())})
            after = None if raw is None else decode_cursor(raw)
        except BadCursor as exc:
            return error(400, str(exc))
        try:
            page = await self._feed.page(after=after, limit=limit, wait=wait, filters=filters)
        except FeedGone as exc:
            return error(410, str(exc))
        return FEED.answer({"results": page.results, "next": encode_cursor(page.next)})

    def routes(self, auth: TokenAuth) -> list[Route]:
        return [FEED.route(self.events, auth)]
