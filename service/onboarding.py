"""The onboarding API: create a Codat company and its connection, hand back the linkUrl, unlink.

Codat's "configure your SMB customer" flow. Each call goes to Codat first (outside any
transaction), then stores what Codat answered, with its history row, in one transaction.
A caller's ``Idempotency-Key`` replays the first result without a second Codat call; the Codat
POST/PATCH carries a key derived from it, so a retried call never creates a second company.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from schemas.commands import Cause
from schemas.events import CompanyInfo
from schemas.platforms import PLATFORM_NAMES, SUPPORTED_PLATFORMS, BillPayMode
from schemas.state import Source, State
from service import api_models as m
from service import outbox, queries, store
from service.auth import Scope, TokenAuth
from service.codat import (
    CodatClient,
    CodatError,
    CodatNotFound,
    CodatRateLimited,
    CodatRetryable,
    Connection,
)
from service.db import Database, Tx, as_dt, sql, utcnow
from service.errors import PayloadTooLarge
from service.followups import codat_word
from service.limits import read_body
from service.operations import Operation, Param
from service.responses import codat_error, error

STALE_IN_PROGRESS = timedelta(minutes=5)  # a first attempt that died mid-way can be retried
MAX_BODY_BYTES = 64 * 1024
MAX_IDEMPOTENCY_KEY = 255


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, correlation_id: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.correlation_id = correlation_id
        self.headers = headers


def codat_failure(exc: CodatError) -> ApiError:
    """Codat's failure as the caller should see it (and retry it, or not)."""
    cid = exc.correlation_id
    if isinstance(exc, CodatRateLimited):
        wait = str(max(1, round(exc.retry_after or 5)))
        return ApiError(503, f"Codat is rate limiting us: {exc}", correlation_id=cid,
                        headers={"Retry-After": wait})
    if isinstance(exc, CodatRetryable):
        if exc.status is None and "timed out" in str(exc):
            return ApiError(504, f"Codat did not answer in time: {exc}", correlation_id=cid)
        if exc.status == 409:
            return ApiError(503, f"Codat is still working on it: {exc}", correlation_id=cid,
                            headers={"Retry-After": "2"})
        return ApiError(502, f"Codat is unavailable: {exc}", correlation_id=cid)
    if isinstance(exc, CodatNotFound):
        return ApiError(404, str(exc), correlation_id=cid)
    if exc.status in (400, 422):
        return ApiError(exc.status, str(exc), correlation_id=cid)
    # 401/402/403: our credentials or our account, not the caller's request.
    return ApiError(502, f"Codat refused our request: {exc}", correlation_id=cid)


IDEMPOTENCY_KEY = Param(
    "Idempotency-Key", "the same key with the same body replays the first answer (with header "
    f"Idempotent-Replayed: true) and calls Codat no second time; 1 to {MAX_IDEMPOTENCY_KEY} "
    "printable characters",
    where="header")
_ERRORS = {
    400: "Codat refused the request as invalid",
    409: "A request with this Idempotency-Key is still in progress (retry after Retry-After)",
    413: f"A body over {MAX_BODY_BYTES // 1024} KiB",
    422: "An invalid body or Idempotency-Key, a key reused with another body, or Codat found "
         "the request invalid",
    502: "Codat failed, or refused our credentials",
    503: "Codat is rate limiting us or still working on the request, or the database is "
         "unavailable (retry after Retry-After)",
    504: "Codat did not answer in time",
}
CREATE_COMPANY = Operation(
    "POST", "/v1/companies", "Create a Codat company for an SMB customer", m.Company,
    status=201, scope=Scope.WRITE, params=(IDEMPOTENCY_KEY,), body=m.NewCompany,
    errors=_ERRORS)
CREATE_CONNECTION = Operation(
    "POST", "/v1/companies/{company_id}/connections",
    "Create a connection for a platformKey; answers its linkUrl (status PendingAuth)",
    m.Connection, status=201, scope=Scope.WRITE, params=(IDEMPOTENCY_KEY,),
    body=m.NewConnection, errors={
        **_ERRORS, 404: "No such company at Codat",
        422: f"{_ERRORS[422]}, or a platformKey BILL_PAY_MODE does not support"})
UNLINK = Operation(
    "POST", "/v1/companies/{company_id}/connections/{connection_id}/unlink",
    "Unlink a Linked connection (Codat: its status PATCHed to Unlinked)", m.Connection,
    scope=Scope.WRITE, params=(IDEMPOTENCY_KEY,), body=m.Unlink, body_required=False,
    errors={**_ERRORS, 404: "No such connection of this company",
            409: f"The connection is not Linked; or: {_ERRORS[409]}"})
OPERATIONS = (CREATE_COMPANY, CREATE_CONNECTION, UNLINK)


_BEGIN_KEY = sql("""
INSERT INTO api_idempotency (key, request_hash, created_at) VALUES ($1, $2, $3)
ON CONFLICT (key) DO NOTHING RETURNING key""")
_GET_KEY = sql("""
SELECT request_hash, status_code, response, created_at, failed_at, codat_attempt
FROM api_idempotency WHERE key = $1{lock}""")
_RESTART_KEY = sql("UPDATE api_idempotency SET created_at = $2, failed_at = NULL WHERE key = $1")
_FAIL_KEY = sql("""
UPDATE api_idempotency SET failed_at = $2, codat_attempt = codat_attempt + $3
WHERE key = $1 AND status_code IS NULL""")
_COMPLETE_KEY = sql("""
UPDATE api_idempotency SET status_code = $2, response = $3, completed_at = $4 WHERE key = $1""")
_FORGET_KEY = sql("DELETE FROM api_idempotency WHERE key = $1 AND status_code IS NULL")

Action = Callable[[str], Awaitable[tuple[str, Callable[[Tx], Awaitable[None]] | None]]]


class OnboardingApi:
    """POST endpoints that change Codat, then our state."""

    def __init__(self, *, db: Database, client: CodatClient, mode: BillPayMode) -> None:
        self._db = db
        self._client = client
        self._mode = mode
        self._supported = sorted(SUPPORTED_PLATFORMS[mode])

    def routes(self, auth: TokenAuth) -> list[Route]:
        return [CREATE_COMPANY.route(self.create_company, auth),
                CREATE_CONNECTION.route(self.create_connection, auth),
                UNLINK.route(self.unlink, auth)]

    # --- endpoints ----------------------------------------------------------------------------

    async def create_company(self, request: Request) -> Response:
        async def action(codat_key: str) -> Any:
            new = await _parse(request, m.NewCompany)
            company = await self._client.create_company(
                name=new.name, description=new.description, tags=new.tags,
                idempotency_key=codat_key)
            info = CompanyInfo(company.id, company.name, company.description, company.tags,
                               company.redirect, company.products, None)

            async def write(tx: Tx) -> None:
                await store.upsert_company(tx, company=info, event_time=None, now=utcnow())
            return company.id, write

        async def shape(tx: Tx, company_id: str) -> Any:
            return await queries.get_company(tx, company_id)
        return await self._idempotent(request, CREATE_COMPANY, action, shape)

    async def create_connection(self, request: Request) -> Response:
        company_id = request.path_params["company_id"]

        async def action(codat_key: str) -> Any:
            new = await _parse(request, m.NewConnection)
            if new.platform_key not in SUPPORTED_PLATFORMS[self._mode]:
                names = ", ".join(f"{k} ({PLATFORM_NAMES[k]})" for k in self._supported)
                raise ApiError(422, f"platformKey {new.platform_key!r} is not supported by "
                                    f"{self._mode.value} Bill Pay; supported: {names}")
            connection = await self._client.create_connection(
                company_id, platform_key=new.platform_key, idempotency_key=codat_key)
            cause = Cause(f"api:create:{connection.id}", "api.create_connection",
                          reason="created through the onboarding API")
            return connection.id, self._store_move(company_id, connection, cause,
                                                   State.PENDING_AUTH, utcnow())

        async def shape(tx: Tx, connection_id: str) -> Any:
            return await queries.get_connection(tx, connection_id)
        return await self._idempotent(request, CREATE_CONNECTION, action, shape)

    async def unlink(self, request: Request) -> Response:
        company_id = request.path_params["company_id"]
        connection_id = request.path_params["connection_id"]

        async def action(codat_key: str) -> Any:
            body = await _parse(request, m.Unlink, allow_empty=True)
            current = await self._db.read(lambda tx: queries.get_connection(tx, connection_id))
            if current is None or current["companyId"] != company_id:
                raise ApiError(404, f"no connection {connection_id} for company {company_id}")
            if current["deleted"] or current["status"] != State.LINKED:
                state = "Deleted" if current["deleted"] else current["status"]
                raise ApiError(409, f"only a Linked connection can be unlinked; this one is "
                                    f"{state}")
            connection = await self._client.unlink_connection(
                company_id, connection_id, idempotency_key=codat_key)
            reason = "unlinked through the onboarding API"
            if body.reason:
                reason += f": {body.reason}"
            cause = Cause(f"api:unlink:{codat_key}", "api.unlink", reason=reason)
            return connection_id, self._store_move(company_id, connection, cause,
                                                   State.UNLINKED, utcnow())

        async def shape(tx: Tx, connection_id: str) -> Any:
            return await queries.get_connection(tx, connection_id)
        return await self._idempotent(request, UNLINK, action, shape)

    # --- shared -------------------------------------------------------------------------------

    def _store_move(self, company_id: str, connection: Connection, cause: Cause,
                    expected: State, answered_at: datetime) -> Callable[[Tx], Awaitable[None]]:
        # Codat's answer is its word as of when it answered: it takes its place among the
        # webhooks about the connection by that instant.
        word = codat_word(company_id, connection.id, connection, cause, source=Source.API,
                          answered_at=answered_at, expected=expected)

        async def write(tx: Tx) -> None:
            await store.apply_word(tx, word, now=utcnow())
        return write

    async def _idempotent(self, request: Request, operation: Operation, action: Action,
                          shape: Callable[[Tx, str], Awaitable[Any]]) -> Response:
        try:
            body = await read_body(request, MAX_BODY_BYTES)
        except PayloadTooLarge as exc:
            return error(413, str(exc))
        request.state.body = body
        paused = await self._db.read(outbox.paused_until)
        if paused is not None and paused > utcnow():
            # Codat said the quota is used up: a call now would only be refused (429).
            wait = max(1, int((paused - utcnow()).total_seconds()) + 1)
            return error(503, f"Codat's rate limit is reached until {paused.isoformat()}",
                         {"Retry-After": str(wait)})
        caller_key = request.headers.get("idempotency-key")
        if caller_key is not None and not (0 < len(caller_key) <= MAX_IDEMPOTENCY_KEY
                                           and caller_key.isprintable()):
            return error(422, f"Idempotency-Key: 1 to {MAX_IDEMPOTENCY_KEY} printable "
                              "characters")
        key = None
        codat_key = uuid.uuid4().hex
        if caller_key:
            key = f"{request.method} {request.url.path} {caller_key}"
            request_hash = hashlib.sha256(body).hexdigest()
            begun = await self._db.write(lambda tx: _begin(tx, key or "", request_hash))
            if isinstance(begun, Response):
                return begun
            # The same caller key gives the same Codat key, so a retry cannot create a second
            # company; only after Codat answered 5xx (which it caches under the key) a new one.
            seed = f"codat-hooks {key}" + (f" {begun}" if begun else "")
            codat_key = hashlib.sha256(seed.encode()).hexdigest()[:32]
        try:
            try:
                resource_id, write = await action(codat_key)
            except CodatError as exc:
                if key:
                    rotate = int(exc.status is not None and exc.status >= 500)
                    await self._db.write(lambda tx: tx.execute(_FAIL_KEY, key, utcnow(), rotate))
                    key = None  # kept, marked failed: the caller may retry with it
                raise codat_failure(exc) from None

            async def commit(tx: Tx) -> bytes:
                if write is not None:
                    await write(tx)
                # Through the operation's model: what is stored for a replay is what is served.
                answer = operation.serialize(await shape(tx, resource_id))
                if key:
                    await tx.execute(_COMPLETE_KEY, key, operation.status, answer.decode(),
                                     utcnow())
                return answer
            answer = await self._db.write(commit)
        except ApiError as exc:
            if key:
                await self._db.write(lambda tx: tx.execute(_FORGET_KEY, key))
            return codat_error(exc.status, str(exc), exc.correlation_id, exc.headers)
        return Response(answer, operation.status, media_type="application/json")


async def _begin(tx: Tx, key: str, request_hash: str) -> Response | int:
    """Start a keyed request and return its Codat attempt number; or the answer to give now
    (a replay, 422 or 409)."""
    now = utcnow()
    if await tx.fetchrow(_BEGIN_KEY, key, request_hash, now) is not None:
        return 0
    row = await tx.fetchrow(_GET_KEY, key)
    assert row is not None
    if row["request_hash"] != request_hash:
        return error(422, "this Idempotency-Key was used with a different request body")
    if row["status_code"] is not None:
        return Response(row["response"], row["status_code"], {"Idempotent-Replayed": "true"},
                        media_type="application/json")
    created = as_dt(row["created_at"])
    if row["failed_at"] is not None or (created is not None
                                        and now - created > STALE_IN_PROGRESS):
        await tx.execute(_RESTART_KEY, key, now)  # failed, or its first attempt died: retry
        return int(row["codat_attempt"])
    return error(409, "a request with this Idempotency-Key is still in progress",
                 {"Retry-After": "2"})


M = TypeVar("M", bound=BaseModel)


async def _parse(request: Request, model: type[M], *, allow_empty: bool = False) -> M:
    raw: bytes = request.state.body  # read (under the size limit) by _idempotent
    if allow_empty and not raw.strip():
        return model()
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors())
        raise ApiError(422, f"invalid request body: {problems}") from None
