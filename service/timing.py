"""ASGI middleware that records every HTTP request's latency by route and status class."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.metrics import Metrics


def route_label(scope: Scope) -> str:
    """The matched route's template (``/v1/companies/{company_id}``), never anything taken from
    the request's path: whatever paths are sent, the label set stays the set of routes."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


class RequestTiming:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self._app = app
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self._app(scope, receive, send_and_note)
        finally:
            self._metrics.request_latency.labels(route_label(scope), f"{status // 100}xx") \
                .observe(time.perf_counter() - started)
