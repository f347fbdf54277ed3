"""``create_sandbox_app(config)``: the local Codat as one Starlette app.

Codat's endpoints hang off the root (no ``/v1``), the Link pages under ``/link``, the controls
under ``/_sandbox``. The lifespan starts and stops the webhook dispatcher; ``app.state.sandbox``
is the in-memory state, for tests.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from service.sandbox import api, controls, followups, link
from service.sandbox.config import SandboxConfig
from service.sandbox.errors import CodatError, error_response
from service.sandbox.gate import add_rate_limit_headers, sandbox_of
from service.sandbox.state import Sandbox


async def _http_error(request: Request, exc: Exception) -> Response:
    """Unknown paths and methods answer with Codat's ErrorMessage body too."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    detail = exc.detail if isinstance(exc, HTTPException) else None
    response = error_response(CodatError(status, detail))
    if not request.url.path.startswith(("/link/", "/_sandbox/")):
        add_rate_limit_headers(response, sandbox_of(request))
    return response


def create_sandbox_app(config: SandboxConfig) -> Starlette:
    """A fresh sandbox: empty state, its own dispatcher, nothing shared between apps."""
    sandbox = Sandbox(config)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await sandbox.start()
        try:
            yield
        finally:
            await sandbox.stop()

    app = Starlette(routes=[*api.routes, *followups.routes, *link.routes, *controls.routes],
                    exception_handlers={HTTPException: _http_error}, lifespan=lifespan)
    app.router.redirect_slashes = False  # answer every path as it is: no 307 to a slash twin
    app.state.sandbox = sandbox
    return app
