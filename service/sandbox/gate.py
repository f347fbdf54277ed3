"""What every Codat endpoint does around its own work, in Codat's order.

1. log the call; 2. check the API key (401); 3. for POST/PATCH with an ``Idempotency-Key``,
replay, refuse (409 in progress, 422 other request) or run and keep the answer; 4. apply an
injected fault, if one matches; 5. run the endpoint; 6. add the rate-limit headers.
Faults sit inside the idempotency step on purpose: Codat caches every answer but a 429.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from service.sandbox.calls import Call
from service.sandbox.clock import iso, next_midnight, utcnow
from service.sandbox.errors import CodatError, error_response
from service.sandbox.idempotency import CachedAnswer, Lookup, fingerprint
from service.sandbox.state import Sandbox

Endpoint = Callable[[Request], Awaitable[Response]]
DAILY_QUOTA_PER_COMPANY = 1000
IDEMPOTENT_METHODS = ("POST", "PATCH")


def sandbox_of(request: Request) -> Sandbox:
    sandbox: Sandbox = request.app.state.sandbox
    return sandbox


async def read_json(request: Request) -> Any:
    """The request body as JSON; anything else is a Codat 400."""
    try:
        return json.loads(await request.body())
    except ValueError:
        raise CodatError(400, "The request body is not valid JSON.") from None


def codat_endpoint(endpoint: Endpoint) -> Endpoint:
    """Wrap a Codat endpoint with auth, idempotency, faults, the call log and rate limits."""

    @functools.wraps(endpoint)
    async def gated(request: Request) -> Response:
        sandbox = sandbox_of(request)
        call = sandbox.calls.open(Call(
            request.method, request.url.path, dict(request.query_params),
            request.headers.get("idempotency-key"), utcnow()))
        response = await _answer(request, sandbox, endpoint, call)
        call.status = response.status_code
        add_rate_limit_headers(response, sandbox)
        return response

    return gated


def _authorized(request: Request, sandbox: Sandbox) -> bool:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    _, _, expected = sandbox.config.authorization.partition(" ")
    return scheme.lower() == "basic" and hmac.compare_digest(token.strip(), expected)


async def _answer(request: Request, sandbox: Sandbox, endpoint: Endpoint, call: Call) -> Response:
    if not _authorized(request, sandbox):
        return error_response(CodatError(401))
    key = call.idempotency_key
    if key is None or request.method not in IDEMPOTENT_METHODS:
        return await _run(request, sandbox, endpoint, call)
    print_ = fingerprint(request.method, request.url.path, await request.body())
    lookup, cached = sandbox.idempotency.begin(key, print_)
    if lookup is Lookup.REPLAY and cached is not None:
        call.replayed = True
        return Response(cached.body, cached.status, media_type=cached.media_type)
    if lookup is Lookup.IN_PROGRESS:
        return error_response(CodatError(
            409, "A request with this Idempotency-Key is still in progress."))
    if lookup is Lookup.MISMATCH:
        return error_response(CodatError(422))
    try:
        response = await _run(request, sandbox, endpoint, call)
    except BaseException:
        sandbox.idempotency.release(key)
        raise
    sandbox.idempotency.finish(key, CachedAnswer(response.status_code, bytes(response.body),
                                                 response.media_type))
    return response


async def _run(request: Request, sandbox: Sandbox, endpoint: Endpoint, call: Call) -> Response:
    fault = sandbox.faults.take(request.method, request.url.path)
    if fault is not None:
        call.fault = True
        if fault.delay:
            await asyncio.sleep(fault.delay)
        if fault.status is not None:
            return error_response(CodatError(fault.status, retry_after=fault.retry_after))
    try:
        response = await endpoint(request)
    except CodatError as exc:
        return error_response(exc)
    call.effect = 200 <= response.status_code < 300
    return response


def add_rate_limit_headers(response: Response, sandbox: Sandbox) -> None:
    """Codat's quota: 1,000 x (1 + active connected companies) a day, reset at 00:00 UTC."""
    now = utcnow()
    active = sum(1 for company in sandbox.companies.values() if company.linked_connections())
    limit = DAILY_QUOTA_PER_COMPANY * (1 + active)
    used = sandbox.calls.count_since(now.replace(hour=0, minute=0, second=0, microsecond=0))
    response.headers["X-Rate-Limit-Limit"] = str(limit)
    response.headers["X-Rate-Limit-Remaining"] = str(max(0, limit - used))
    response.headers["X-Rate-Limit-Reset"] = iso(next_midnight(now))
