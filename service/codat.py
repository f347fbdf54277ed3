"""The Codat API client (httpx, async): auth, timeouts, idempotency keys, one error family.

Errors (each carries Codat's ``correlationId`` when Codat sent one):

CodatError
  ├─ CodatRetryable      429, 5xx, 409 (in progress / not ready), timeouts, connection errors
  │    └─ CodatRateLimited   429, with ``retry_after`` in seconds when Codat said
  └─ CodatPermanent      400, 401, 402, 403, 404, 422 and any other 4xx
       └─ CodatNotFound      404: the company or connection is gone; final

The API key never appears in a log line, an error message or a repr.
"""

from __future__ import annotations

import base64
import email.utils
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from schemas.state import ConnectionStatus
from service.errors import Retryable

DEFAULT_BASE_URL = "https://api.codat.io"


class CodatError(Exception):
    """A Codat call that did not succeed."""

    def __init__(self, message: str, *, status: int | None = None,
                 correlation_id: str | None = None, endpoint: str | None = None) -> None:
        detail = f" (correlationId {correlation_id})" if correlation_id else ""
        super().__init__(f"{message}{detail}")
        self.status = status
        self.correlation_id = correlation_id
        self.endpoint = endpoint


class CodatRetryable(CodatError, Retryable):
    """Worth retrying later: rate limited, Codat unavailable, timed out, or not ready yet."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        CodatError.__init__(self, message, **kw)
        self.retry_after = retry_after


class CodatRateLimited(CodatRetryable):
    """429: Codat's quota is used up; ``retry_after`` says for how long, when Codat says."""


class CodatPermanent(CodatError):
    """Retrying the same request will fail the same way."""


class CodatNotFound(CodatPermanent):
    """404: the company or connection does not exist (or was deleted)."""


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """``Retry-After`` in either form (delta-seconds or HTTP-date) as seconds from now."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, moment.timestamp() - (time.time() if now is None else now))


def authorization_header(api_key: str) -> str:
    """``Basic <base64 of the raw key>``; a value that already starts with ``Basic`` is kept."""
    key = api_key.strip()
    if key.lower().startswith("basic "):
        return "Basic " + key[6:].strip()
    return "Basic " + base64.b64encode(key.encode("ascii")).decode("ascii")


class _Model(BaseModel):
    # Unknown fields are kept aside, never an error: Codat adds fields over time.
    model_config = ConfigDict(extra="allow", alias_generator=to_camel, populate_by_name=True)


class Connection(_Model):
    id: str
    status: str  # a str, not the enum: a status Codat adds later must not break a call
    integration_id: str | None = None
    integration_key: str | None = None
    source_id: str | None = None
    source_type: str | None = None
    platform_name: str | None = None
    link_url: str | None = None
    last_sync: str | None = None
    created: str | None = None
    data_connection_errors: list[dict[str, Any]] | None = None

    @property
    def known_status(self) -> ConnectionStatus | None:
        """The status as our enum, or None for a value we do not know."""
        try:
            return ConnectionStatus(self.status)
        except ValueError:
            return None


class Company(_Model):
    id: str
    name: str
    description: str | None = None
    redirect: str | None = None
    last_sync: str | None = None
    created: str | None = None
    products: list[str] | None = None
    tags: dict[str, str] | None = None
    data_connections: list[Connection] | None = None


class PullOperation(_Model):
    id: str
    data_type: str | None = None
    status: str | None = None
    is_completed: bool | None = None
    is_errored: bool | None = None


class DataStatus(_Model):
    data_type: str
    current_status: str
    last_successful_sync: str | None = None


class CompanyInformation(_Model):
    company_name: str | None = None
    base_currency: str | None = None


class BankAccountOption(_Model):
    id: str
    name: str | None = None
    currency: str | None = None
    status: str | None = None  # "Active", "Archived", ...


ResponseHook = Callable[[str, int, httpx.Headers | None], None]


class CodatClient:
    """One ``httpx.AsyncClient`` to Codat, with explicit timeouts.

    ``on_response(endpoint, status, headers)`` is called for every attempt (status 0 for a
    transport failure) so metrics stay outside this module.
    """

    def __init__(self, *, api_key: str, base_url: str = DEFAULT_BASE_URL,
                 timeout: float = 10.0, transport: httpx.AsyncBaseTransport | None = None,
                 on_response: ResponseHook | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.AsyncClient(
            base_url=self.base_url, transport=transport,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            headers={"Authorization": authorization_header(api_key),
                     "Accept": "application/json", "User-Agent": "codat-hooks"})
        self._on_response = on_response

    def __repr__(self) -> str:
        return f"CodatClient(base_url={self.base_url!r})"

    async def aclose(self) -> None:
        await self._http.aclose()

    async def request(self, method: str, path: str, *, endpoint: str, json: Any = None,
                      params: dict[str, Any] | None = None,
                      idempotency_key: str | None = None) -> httpx.Response:
        """One call; raises a CodatError subclass for anything but 2xx."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        if method in ("POST", "PATCH") and not idempotency_key:
            raise ValueError(f"{method} {endpoint} needs an idempotency key")
        try:
            response = await self._http.request(method, path, json=json, params=params,
                                                headers=headers)
        except httpx.TimeoutException:
            self._record(endpoint, 0, None)
            raise CodatRetryable(f"Codat {endpoint}: timed out", endpoint=endpoint) from None
        except httpx.TransportError as exc:
            self._record(endpoint, 0, None)
            raise CodatRetryable(f"Codat {endpoint}: {type(exc).__name__}",
                                 endpoint=endpoint) from None
        self._record(endpoint, response.status_code, response.headers)
        if response.is_success:
            return response
        raise _error(endpoint, response)

    def _record(self, endpoint: str, status: int, headers: httpx.Headers | None) -> None:
        if self._on_response is not None:
            self._on_response(endpoint, status, headers)

    # --- companies and connections (contract section 4) --------------------------------------

    async def create_company(self, *, name: str, description: str | None = None,
                             tags: dict[str, str] | None = None,
                             idempotency_key: str) -> Company:
        body: dict[str, Any] = {"name": name}
        if description is not None:
            body["description"] = description
        if tags is not None:
            body["tags"] = tags
        response = await self.request("POST", "/companies", endpoint="create-company",
                                      json=body, idempotency_key=idempotency_key)
        return Company.model_validate(response.json())

    async def get_company(self, company_id: str) -> Company:
        response = await self.request("GET", f"/companies/{_seg(company_id)}",
                                      endpoint="get-company")
        return Company.model_validate(response.json())

    async def iter_companies(self, *, page_size: int = 500) -> AsyncIterator[Company]:
        async for item in self._pages("/companies", "list-companies", page_size):
            yield Company.model_validate(item)

    async def create_connection(self, company_id: str, *, platform_key: str,
                                idempotency_key: str) -> Connection:
        response = await self.request(
            "POST", f"/companies/{_seg(company_id)}/connections", endpoint="create-connection",
            json={"platformKey": platform_key}, idempotency_key=idempotency_key)
        return Connection.model_validate(response.json())

    async def get_connection(self, company_id: str, connection_id: str) -> Connection:
        response = await self.request(
            "GET", f"/companies/{_seg(company_id)}/connections/{_seg(connection_id)}",
            endpoint="get-connection")
        return Connection.model_validate(response.json())

    async def list_connections(self, company_id: str) -> list[Connection]:
        return [Connection.model_validate(item) async for item in
                self._pages(f"/companies/{_seg(company_id)}/connections", "list-connections",
                            500)]

    async def unlink_connection(self, company_id: str, connection_id: str, *,
                                idempotency_key: str) -> Connection:
        response = await self.request(
            "PATCH", f"/companies/{_seg(company_id)}/connections/{_seg(connection_id)}",
            endpoint="unlink-connection", json={"status": "Unlinked"},
            idempotency_key=idempotency_key)
        return Connection.model_validate(response.json())

    # --- follow-ups (contract section 5) -------------------------------------------------------

    async def refresh_data_type(self, company_id: str, data_type: str, *, connection_id: str,
                                idempotency_key: str) -> PullOperation:
        response = await self.request(
            "POST", f"/companies/{_seg(company_id)}/data/queue/{_seg(data_type)}",
            endpoint="refresh-data-type", params={"connectionId": connection_id},
            idempotency_key=idempotency_key)
        return PullOperation.model_validate(response.json())

    async def data_status(self, company_id: str) -> dict[str, DataStatus]:
        response = await self.request("GET", f"/companies/{_seg(company_id)}/dataStatus",
                                      endpoint="get-data-status")
        return {key: DataStatus.model_validate(value) for key, value in response.json().items()}

    async def company_information(self, company_id: str, connection_id: str,
                                  ) -> CompanyInformation:
        response = await self.request(
            "GET",
            f"/companies/{_seg(company_id)}/connections/{_seg(connection_id)}/payables/info",
            endpoint="get-company-information")
        return CompanyInformation.model_validate(response.json())

    async def payment_bank_accounts(self, company_id: str, connection_id: str,
                                    ) -> list[BankAccountOption]:
        """The bank accounts bills can be paid from (sync Bill Pay's payment mapping options)."""
        path = (f"/companies/{_seg(company_id)}/connections/{_seg(connection_id)}"
                "/payables/mappingOptions/payments")
        accounts: list[BankAccountOption] = []
        token: str | None = None
        while True:
            response = await self.request("GET", path, endpoint="get-payment-mapping-options",
                                          params={"continuationToken": token} if token else None)
            document = response.json()
            accounts += [BankAccountOption.model_validate(a)
                         for a in document.get("bankAccounts") or []]
            token = (document.get("pagination") or {}).get("continuationToken")
            if not token:
                return accounts

    async def _pages(self, path: str, endpoint: str, page_size: int,
                     ) -> AsyncIterator[dict[str, Any]]:
        page = 1
        while True:
            response = await self.request("GET", path, endpoint=endpoint,
                                          params={"page": page, "pageSize": page_size})
            document = response.json()
            for item in document.get("results") or []:
                yield item
            if not (document.get("_links") or {}).get("next"):
                return
            page += 1


def _seg(value: str) -> str:
    """One path segment, percent-encoded: an id can never add a query, a fragment or another
    segment to the URL our API key is sent to. ``.`` and ``..`` (which a URL resolves, and no
    encoding hides) and the empty segment are refused."""
    if value in ("", ".", ".."):
        raise ValueError(f"{value!r} is not a Codat id")
    return quote(value, safe="")


def _error(endpoint: str, response: httpx.Response) -> CodatError:
    status = response.status_code
    try:
        body = response.json()
    except ValueError:
        body = {}
    body = body if isinstance(body, dict) else {}
    correlation_id = body.get("correlationId")
    detail = body.get("error") or response.reason_phrase or "error"
    message = f"Codat {endpoint} answered {status}: {detail}"
    kw: dict[str, Any] = {"status": status, "correlation_id": correlation_id,
                          "endpoint": endpoint}
    if status == 429:
        return CodatRateLimited(message,
                                retry_after=parse_retry_after(response.headers.get("retry-after")),
                                **kw)
    if status >= 500 or status == 409:
        return CodatRetryable(message,
                              retry_after=parse_retry_after(response.headers.get("retry-after")),
                              **kw)
    if status == 404:
        return CodatNotFound(message, **kw)
    return CodatPermanent(message, **kw)

