"""The Codat client against a transport-level fake: auth, keys, errors, paging, tolerance."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest

from service.codat import (
    CodatClient,
    CodatNotFound,
    CodatPermanent,
    CodatRateLimited,
    CodatRetryable,
    authorization_header,
    parse_retry_after,
)
from tests.factories import OAS_DIR, spec_operations

API_KEY = "sk_live_a-very-secret-codat-key-0123456789"


def _company(**extra: Any) -> dict[str, Any]:
    return {"id": "8a210b68-6988-11ed-a1eb-0242ac120002", "name": "Toft stores",
            "redirect": "https://link.codat.io/company/8a21", "dataConnections": [], **extra}


def _connection(status: str = "PendingAuth", **extra: Any) -> dict[str, Any]:
    return {"id": "2e9d2c44-f675-40ba-8049-353bfcb5e171", "integrationId": "bf08",
            "integrationKey": "qhyg", "sourceId": "bdd8", "platformName": "QuickBooks Online",
            "linkUrl": "https://link-api.codat.io/x/start", "status": status,
            "created": "2022-10-27T09:53:29Z", "sourceType": "Accounting", **extra}


def _error(status: int, message: str = "nope") -> dict[str, Any]:
    return {"statusCode": status, "service": "PublicApi", "error": message,
            "correlationId": f"corr-{status}", "validation": None, "canBeRetried": "Unknown",
            "detailedErrorCode": 0}


class Recorder:
    """A transport handler that records requests and answers from a function."""

    def __init__(self, answer: Callable[[httpx.Request], httpx.Response]) -> None:
        self.requests: list[httpx.Request] = []
        self._answer = answer

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self._answer(request)


def client_for(answer: Callable[[httpx.Request], httpx.Response],
               **kw: Any) -> tuple[CodatClient, Recorder]:
    recorder = Recorder(answer)
    client = CodatClient(api_key=API_KEY, base_url="https://api.codat.io",
                         transport=httpx.MockTransport(recorder), **kw)
    return client, recorder


def test_authorization_is_basic_of_the_raw_key_with_no_colon() -> None:
    header = authorization_header(API_KEY)
    assert header == "Basic " + base64.b64encode(API_KEY.encode()).decode()
    assert ":" not in base64.b64decode(header.split()[1]).decode()
    assert authorization_header("Basic abc123=") == "Basic abc123="  # a ready-made header


async def test_create_company_posts_with_idempotency_key_and_parses() -> None:
    client, recorder = client_for(lambda r: httpx.Response(200, json=_company(platform="x")))
    company = await client.create_company(name="Toft stores", tags={"uid": "42"},
                                          idempotency_key="key-1")
    [request] = recorder.requests
    assert (request.method, request.url.path) == ("POST", "/companies")
    assert request.headers["idempotency-key"] == "key-1"
    assert request.headers["authorization"] == authorization_header(API_KEY)
    assert json.loads(request.content) == {"name": "Toft stores", "tags": {"uid": "42"}}
    assert company.name == "Toft stores"
    assert company.model_extra == {"platform": "x"}  # unknown fields tolerated and kept
    await client.aclose()


async def test_a_post_without_an_idempotency_key_is_refused_before_sending() -> None:
    client, recorder = client_for(lambda r: httpx.Response(200, json=_company()))
    with pytest.raises(ValueError, match="idempotency key"):
        await client.request("POST", "/companies", endpoint="create-company", json={})
    assert recorder.requests == []


async def test_unknown_connection_status_does_not_break_a_call() -> None:
    client, _ = client_for(lambda r: httpx.Response(200, json=_connection("Hibernating")))
    connection = await client.get_connection("c", "x")
    assert connection.status == "Hibernating"
    assert connection.known_status is None


async def test_unlink_patches_status_unlinked() -> None:
    client, recorder = client_for(lambda r: httpx.Response(200, json=_connection("Unlinked")))
    connection = await client.unlink_connection("c", "x", idempotency_key="k")
    [request] = recorder.requests
    assert request.method == "PATCH"
    assert json.loads(request.content) == {"status": "Unlinked"}
    assert connection.known_status is not None and connection.known_status.value == "Unlinked"


@pytest.mark.parametrize(("status", "family"), [
    (429, CodatRateLimited), (500, CodatRetryable), (502, CodatRetryable),
    (503, CodatRetryable), (409, CodatRetryable), (400, CodatPermanent), (401, CodatPermanent),
    (402, CodatPermanent), (403, CodatPermanent), (404, CodatNotFound), (422, CodatPermanent),
])
async def test_errors_map_to_retryable_or_permanent_with_correlation_id(
        status: int, family: type[Exception]) -> None:
    client, _ = client_for(lambda r: httpx.Response(status, json=_error(status)))
    with pytest.raises(family) as caught:
        await client.get_company("c")
    error = caught.value
    assert error.status == status  # type: ignore[attr-defined]
    assert error.correlation_id == f"corr-{status}"  # type: ignore[attr-defined]
    assert f"corr-{status}" in str(error)
    retryable = isinstance(error, CodatRetryable)
    assert retryable == (status in (409, 429) or status >= 500)


async def test_retry_after_in_seconds_and_as_an_http_date() -> None:
    later = datetime.now(UTC) + timedelta(seconds=120)
    for header, low, high in (("7", 7, 7), (format_datetime(later, usegmt=True), 110, 121)):
        client, _ = client_for(lambda r, h=header: httpx.Response(
            429, json=_error(429), headers={"Retry-After": h}))
        with pytest.raises(CodatRateLimited) as caught:
            await client.get_company("c")
        assert caught.value.retry_after is not None
        assert low <= caught.value.retry_after <= high
    assert parse_retry_after("not a date") is None
    assert parse_retry_after(None) is None


async def test_timeouts_and_connection_errors_are_retryable() -> None:
    def timeout(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    for answer, text in ((timeout, "timed out"), (refused, "ConnectError")):
        client, _ = client_for(answer)
        with pytest.raises(CodatRetryable, match=text):
            await client.get_company("c")


async def test_the_api_key_never_appears_in_errors_or_repr() -> None:
    def echo_headers(request: httpx.Request) -> httpx.Response:
        return httpx.Response(500, text=str(dict(request.headers)))

    client, _ = client_for(echo_headers)
    with pytest.raises(CodatRetryable) as caught:
        await client.get_company("c")
    encoded = base64.b64encode(API_KEY.encode()).decode()
    for text in (str(caught.value), repr(caught.value), repr(client)):
        assert API_KEY not in text
        assert encoded not in text


async def test_paged_lists_follow_next_links() -> None:
    def pages(request: httpx.Request) -> httpx.Response:
        page = int(request.url.params["page"])
        links: dict[str, Any] = {"self": {"href": "/"}, "current": {"href": "/"}}
        if page < 3:
            links["next"] = {"href": f"/?page={page + 1}"}
        return httpx.Response(200, json={
            "results": [_connection(id=f"c{page}")], "pageNumber": page, "pageSize": 1,
            "totalResults": 3, "_links": links})

    client, recorder = client_for(pages)
    connections = await client.list_connections("co")
    assert [c.id for c in connections] == ["c1", "c2", "c3"]
    assert len(recorder.requests) == 3


async def test_payment_bank_accounts_follow_continuation_tokens() -> None:
    def pages(request: httpx.Request) -> httpx.Response:
        token = request.url.params.get("continuationToken")
        if token is None:
            return httpx.Response(200, json={"bankAccounts": [{"id": "a1"}],
                                             "pagination": {"continuationToken": "t2"}})
        return httpx.Response(200, json={"bankAccounts": [{"id": "a2", "name": "Main"}],
                                         "pagination": {}})

    client, _ = client_for(pages)
    accounts = await client.payment_bank_accounts("co", "cn")
    assert [a.id for a in accounts] == ["a1", "a2"]


# --- the requests the client makes exist in Codat's OpenAPI files ---------------------------


@pytest.mark.skipif(not OAS_DIR.is_dir(), reason="../shared/codat/oas is absent")
async def test_every_request_the_client_makes_is_an_operation_in_codats_specs() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.endswith("/dataStatus"):
            return httpx.Response(200, json={"bills": {"dataType": "bills",
                                                       "currentStatus": "Complete"}})
        if path.endswith("/payables/info"):
            return httpx.Response(200, json={"companyName": "T", "baseCurrency": "GBP"})
        if path.endswith("/mappingOptions/payments"):
            return httpx.Response(200, json={"bankAccounts": [], "pagination": {}})
        if "/data/queue/" in path:
            return httpx.Response(200, json={"id": "p1", "dataType": "bills",
                                             "status": "Queued"})
        if path.endswith("/connections") and request.method == "GET":
            return httpx.Response(200, json={"results": [], "_links": {}})
        if path == "/companies" and request.method == "GET":
            return httpx.Response(200, json={"results": [_company()], "_links": {}})
        if "/connections" in path:
            return httpx.Response(200, json=_connection())
        return httpx.Response(200, json=_company())

    client, recorder = client_for(answer)
    await client.create_company(name="n", idempotency_key="k")
    await client.get_company("co")
    _ = [c async for c in client.iter_companies()]
    await client.create_connection("co", platform_key="qhyg", idempotency_key="k")
    await client.get_connection("co", "cn")
    await client.list_connections("co")
    await client.unlink_connection("co", "cn", idempotency_key="k")
    await client.refresh_data_type("co", "bills", connection_id="cn", idempotency_key="k")
    await client.data_status("co")
    await client.company_information("co", "cn")
    await client.payment_bank_accounts("co", "cn")

    operations = spec_operations()
    for request in recorder.requests:
        assert any(method == request.method and re.match(pattern, request.url.path)
                   for method, pattern in operations), (request.method, request.url.path)
        if request.method in ("POST", "PATCH"):
            assert request.headers.get("idempotency-key")
    # Codat's create-connection body is {"platformKey": ...}; unlink's is {"status": ...}.
    bodies = {r.url.path: json.loads(r.content) for r in recorder.requests if r.content}
    assert bodies["/companies/co/connections"] == {"platformKey": "qhyg"}
    assert bodies["/companies/co/connections/cn"] == {"status": "Unlinked"}
