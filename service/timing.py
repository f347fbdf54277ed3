"""ASGI middleware that records every HTTP request's latency by route and status class, and
answers the webhook route directly.

The webhook route is the hot path: :class:`RequestTiming` hands ``POST /webhooks/codat`` to
its endpoint itself, past the router and the exception middleware (the receiver answers every
error of its own; an unexpected exception still reaches the server-error middleware outside,
which answers 500). Every other request goes through the router as usual.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.metrics import Metrics

Endpoint = Callable[[Request], Awaitable[Response]]


def route_label(scope: Scope) -> str:
    """The matched route's template (``/v1/companies/{company_id}``), never anything taken from
    the request's path: whatever paths are sent, the label set stays the set of routes."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


class RequestTiming:
    def __init__(self, app: ASGIApp, metrics: Metrics,
                 direct: Mapping[tuple[str, str], Endpoint] | None = None) -> None:
        self._app = app
        self._metrics = metrics
        self._direct = dict(direct or {})  # (method, exact path) -> endpoint
        self._observers: dict[tuple[str, str], Callable[[float], None]] = {}

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

        endpoint = self._direct.get((scope["method"], scope["path"]))
        try:
            if endpoint is None:
                await self._app(scope, receive, send_and_note)
            else:
                response = await endpoint(Request(scope, receive))
                await response(scope, receive, send_and_note)
        finally:
            label = route_label(scope) if endpoint is None else scope["path"]
            self._observe(label, f"{status // 100}xx", time.perf_counter() - started)

    def _observe(self, route: str, status: str, seconds: float) -> None:
        key = (route, status)
        observe = self._observers.get(key)
        if observe is None:  # one child per route and status class, looked up once
            observe = self._observers[key] = \
                self._metrics.request_latency.labels(route, status).observe
        observe(seconds)
