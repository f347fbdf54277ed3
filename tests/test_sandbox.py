"""The sandbox's Codat endpoints, driven over HTTP: auth, companies, connections, paging,
idempotency, follow-up reads, faults and the call log. Webhook deliveries are in
test_sandbox_webhooks.py; schema checks against Codat's OpenAPI files in test_sandbox_contract.py.
"""

from __future__ import annotations

import asyncio
import base64
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from service.sandbox import SandboxConfig
from service.sandbox.idempotency import CachedAnswer, IdempotencyCache, Lookup
from tests.test_sandbox_fixtures import (
    API_KEY,
    BILL_PAY_TYPES,
    PUBLIC_URL,
    SECRET,
    Harness,
    eventually,
    make_config,
    running,
)

ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


@pytest.fixture
async def sb() -> AsyncIterator[Harness]:
    async with running(make_config(None)) as harness:
        yield harness


def assert_codat_error(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == {"statusCode", "service", "error", "correlationId", "validation",
                         "canBeRetried", "detailedErrorCode"}
    assert body["statusCode"] == status
    assert body["canBeRetried"] == "Unknown"
    assert body["correlationId"]
    return body


# --- auth and headers ---------------------------------------------------------------------

@pytest.mark.parametrize("header", [
    None,
    "Basic " + base64.b64encode(b"some-other-key").decode(),
    "Basic " + base64.b64encode(f"{API_KEY}:".encode()).decode(),  # user:password style
    f"Basic {API_KEY}",  # not encoded
    "Bearer " + base64.b64encode(API_KEY.encode()).decode(),
])
async def test_a_missing_or_wrong_key_gets_401_with_codat_error(sb: Harness,
                                                                header: str | None) -> None:
    headers = {} if header is None else {"Authorization": header}
    first = await sb.client.get("/companies", headers=headers)
    second = await sb.client.post("/companies", headers=headers, json={"name": "x"})
    body = assert_codat_error(first, 401)
    assert body["error"] == "Unauthorized"
    assert assert_codat_error(second, 401)["correlationId"] != body["correlationId"]
    assert "X-Rate-Limit-Limit" in first.headers
    assert sb.sandbox.companies == {}


async def test_the_base64_of_the_raw_key_is_accepted_and_a_ready_made_header_too() -> None:
    encoded = "Basic " + base64.b64encode(API_KEY.encode()).decode()
    async with running(make_config(None)) as harness:
        ok = await harness.client.get("/companies", headers={"Authorization": encoded})
        assert ok.status_code == 200
    config = SandboxConfig(api_key=encoded, webhook_secret=SECRET, webhook_url=None,
                           public_url=PUBLIC_URL)
    async with running(config) as harness:
        ok = await harness.client.get("/companies", headers={"Authorization": encoded})
        assert ok.status_code == 200


async def test_every_answer_carries_the_rate_limit_headers(sb: Harness) -> None:
    first = await sb.codat("GET", "/companies")
    second = await sb.codat("GET", "/companies/00000000-0000-0000-0000-000000000000")
    assert first.headers["X-Rate-Limit-Limit"] == "1000"  # 1,000 x (1 + no linked company)
    remaining = int(first.headers["X-Rate-Limit-Remaining"])
    assert int(second.headers["X-Rate-Limit-Remaining"]) == remaining - 1
    assert ISO_MS.match(second.headers["X-Rate-Limit-Reset"])
    assert second.headers["X-Rate-Limit-Reset"].endswith("T00:00:00.000Z")
    await sb.linked()
    after = await sb.codat("GET", "/companies")
    assert after.headers["X-Rate-Limit-Limit"] == "2000"


# --- companies ----------------------------------------------------------------------------

async def test_create_company_answers_200_with_the_codat_company(sb: Harness) -> None:
    response = await sb.codat("POST", "/companies", json={
        "name": "Toft stores", "description": "customer 42", "tags": {"uid": "c-42"}})
    assert response.status_code == 200
    company = response.json()
    assert UUID.match(company["id"])
    assert company["name"] == "Toft stores"
    assert company["description"] == "customer 42"
    assert company["tags"] == {"uid": "c-42"}
    assert company["dataConnections"] == []
    assert company["redirect"] == f"{PUBLIC_URL}/link/company/{company['id']}"
    assert ISO_MS.match(company["created"])
    assert "lastSync" not in company
    fetched = await sb.codat("GET", f"/companies/{company['id']}")
    assert fetched.json() == company
    assert await sb.event_types() == ["company.created"]


async def test_company_names_lose_forbidden_characters_as_codat_does(sb: Harness) -> None:
    company = await sb.create_company("Company (Codat[1])")
    assert company["name"] == "Company Codat1"


@pytest.mark.parametrize(("body", "item"), [
    ({}, "name"),
    ({"name": 42}, "name"),
    ({"name": "()[]{}"}, "name"),
    ({"name": "ok", "description": 7}, "description"),
    ({"name": "ok", "tags": {f"k{i}": "v" for i in range(11)}}, "tags"),
    ({"name": "ok", "tags": {"k" * 28: "v"}}, "tags." + "k" * 28),
    ({"name": "ok", "tags": {"": "v"}}, "tags."),
    ({"name": "ok", "tags": {"k": "v" * 101}}, "tags.k"),
    ({"name": "ok", "tags": {"k": 1}}, "tags.k"),
    (["name"], "body"),
])
async def test_invalid_company_requests_get_400_with_validation_errors(
        sb: Harness, body: Any, item: str) -> None:
    response = await sb.codat("POST", "/companies", json=body)
    error = assert_codat_error(response, 400)
    assert item in [e["itemId"] for e in error["validation"]["errors"]]
    assert sb.sandbox.companies == {}


async def test_a_body_that_is_not_json_gets_400(sb: Harness) -> None:
    response = await sb.codat("POST", "/companies", content=b"{name",
                              headers={"content-type": "application/json"})
    assert_codat_error(response, 400)


async def test_limits_at_the_edge_are_accepted(sb: Harness) -> None:
    tags = {f"{i:02d}" + "k" * 25: "v" * 100 for i in range(10)}
    company = await sb.create_company("Edge", tags=tags)
    assert company["tags"] == tags


async def test_patch_changes_what_it_names_and_put_replaces(sb: Harness) -> None:
    company = await sb.create_company("Toft", description="d", tags={"uid": "1"})
    path = f"/companies/{company['id']}"
    patched = (await sb.codat("PATCH", path, json={"name": "Toft stores"})).json()
    assert (patched["name"], patched["description"], patched["tags"]) == (
        "Toft stores", "d", {"uid": "1"})
    wiped = (await sb.codat("PATCH", path, json={"tags": {}})).json()
    assert "tags" not in wiped
    replaced = await sb.codat("PUT", path, json={"name": "New"})
    assert replaced.status_code == 200
    assert (replaced.json()["name"], replaced.json()["description"]) == ("New", "")
    assert_codat_error(await sb.codat("PUT", path, json={"description": "no name"}), 400)


async def test_deleting_a_company_gives_204_then_404_for_it_and_its_connections(
        sb: Harness) -> None:
    company = await sb.create_company()
    connection = await sb.create_connection(company["id"])
    path = f"/companies/{company['id']}"
    deleted = await sb.codat("DELETE", path)
    assert deleted.status_code == 204
    assert deleted.content == b""
    assert_codat_error(await sb.codat("GET", path), 404)
    assert_codat_error(await sb.codat("GET", f"{path}/connections"), 404)
    assert_codat_error(await sb.codat("GET", f"{path}/connections/{connection['id']}"), 404)
    assert_codat_error(await sb.codat("DELETE", path), 404)
    messages = await sb.messages()
    assert messages[-1]["eventType"] == "company.deleted"
    assert messages[-1]["body"]["payload"]["id"] == company["id"]


# --- connections --------------------------------------------------------------------------

async def test_create_connection_answers_200_pending_auth_with_link_url(sb: Harness) -> None:
    company = await sb.create_company()
    response = await sb.codat("POST", f"/companies/{company['id']}/connections",
                              json={"platformKey": "qhyg"})
    assert response.status_code == 200
    connection = response.json()
    assert connection["status"] == "PendingAuth"
    assert connection["integrationKey"] == "qhyg"
    assert connection["platformName"] == "QuickBooks Online"
    assert connection["sourceType"] == "Accounting"
    assert connection["linkUrl"] == (f"{PUBLIC_URL}/link/companies/{company['id']}"
                                     f"/connections/{connection['id']}/start")
    assert UUID.match(connection["integrationId"]) and UUID.match(connection["sourceId"])
    assert "lastSync" not in connection and "dataConnectionErrors" not in connection
    again = await sb.codat("GET", f"/companies/{company['id']}/connections/{connection['id']}")
    assert again.json() == connection
    listed = (await sb.codat("GET", f"/companies/{company['id']}")).json()["dataConnections"]
    assert listed == [connection]
    created = (await sb.messages())[-1]
    assert created["eventType"] == "connection.created"
    assert created["body"]["payload"]["connection"] == connection


@pytest.mark.parametrize(("key", "name"), [
    ("qhyg", "QuickBooks Online"), ("gbol", "Xero"), ("akxx", "Oracle NetSuite"),
    ("pqsw", "QuickBooks Desktop"), ("pdvj", "MYOB Business"), ("knfz", "Sage Intacct"),
    ("fbrh", "FreeAgent"), ("rwuv", "Zoho Books"), ("ndsk", "QuickBooks Online Sandbox"),
])
async def test_each_bill_pay_platform_key_has_its_name(sb: Harness, key: str,
                                                       name: str) -> None:
    company = await sb.create_company()
    connection = await sb.create_connection(company["id"], key)
    assert (connection["integrationKey"], connection["platformName"]) == (key, name)
    integration = (await sb.codat("GET", f"/integrations/{key}")).json()
    assert (integration["key"], integration["name"]) == (key, name)
    assert integration["integrationId"] == connection["integrationId"]


@pytest.mark.parametrize("body", [{"platformKey": "zzzz"}, {"platformKey": "QHYG"}, {}, []])
async def test_an_unknown_or_malformed_platform_key_gets_400(sb: Harness, body: Any) -> None:
    company = await sb.create_company()
    response = await sb.codat("POST", f"/companies/{company['id']}/connections", json=body)
    assert_codat_error(response, 400)
    assert sb.sandbox.companies[company["id"]].connections == {}


async def test_unknown_companies_and_connections_get_404(sb: Harness) -> None:
    missing = "00000000-0000-0000-0000-000000000000"
    body = assert_codat_error(await sb.codat("POST", f"/companies/{missing}/connections",
                                             json={"platformKey": "qhyg"}), 404)
    assert missing in body["error"]
    company = await sb.create_company()
    body = assert_codat_error(
        await sb.codat("GET", f"/companies/{company['id']}/connections/{missing}"), 404)
    assert body["error"] == f"Data connection {missing} not found"
    assert_codat_error(await sb.codat("GET", "/integrations/zzzz"), 404)
    unknown = await sb.codat("GET", "/no/such/path")
    assert_codat_error(unknown, 404)
    assert "X-Rate-Limit-Remaining" in unknown.headers
    assert_codat_error(await sb.codat("PUT", "/companies"), 405)


async def test_only_a_linked_connection_can_be_unlinked(sb: Harness) -> None:
    company = await sb.create_company()
    pending = await sb.create_connection(company["id"])
    path = f"/companies/{company['id']}/connections/{pending['id']}"
    refused = assert_codat_error(await sb.codat("PATCH", path, json={"status": "Unlinked"}),
                                 400)
    assert "Only Linked data connections can be unlinked" in refused["error"]
    company_id, connection_id = await sb.linked()
    path = f"/companies/{company_id}/connections/{connection_id}"
    assert_codat_error(await sb.codat("PATCH", path, json={"status": "Linked"}), 400)
    assert_codat_error(await sb.codat("PATCH", path, json={"status": "Unlinked", "x": 1}), 400)
    unlinked = await sb.codat("PATCH", path, json={"status": "Unlinked"})
    assert unlinked.status_code == 200
    assert unlinked.json()["status"] == "Unlinked"
    assert (await sb.codat("GET", path)).json()["status"] == "Unlinked"
    assert_codat_error(await sb.codat("PATCH", path, json={"status": "Unlinked"}), 400)
    last = (await sb.messages())[-1]
    assert last["eventType"] == "connection.disconnected"
    assert last["body"]["payload"]["connection"]["status"] == "Unlinked"


async def test_deleting_a_connection_answers_200_without_body_then_404(sb: Harness) -> None:
    company_id, connection_id = await sb.linked()
    path = f"/companies/{company_id}/connections/{connection_id}"
    deleted = await sb.codat("DELETE", path)
    assert deleted.status_code == 200
    assert deleted.content == b""
    assert_codat_error(await sb.codat("GET", path), 404)
    assert_codat_error(await sb.codat("DELETE", path), 404)
    last = (await sb.messages())[-1]
    assert last["eventType"] == "connection.deleted"
    assert last["body"]["payload"]["connection"]["status"] == "Linked"  # its last status


# --- paging -------------------------------------------------------------------------------

async def test_lists_page_with_codat_envelope_and_links(sb: Harness) -> None:
    names = [f"Company {i}" for i in range(5)]
    for name in names:
        await sb.create_company(name)
    first = (await sb.codat("GET", "/companies", params={"pageSize": 2})).json()
    assert [c["name"] for c in first["results"]] == names[:2]
    assert (first["pageNumber"], first["pageSize"], first["totalResults"]) == (1, 2, 5)
    assert first["_links"] == {"self": {"href": "/companies"},
                               "current": {"href": "/companies?page=1&pageSize=2"},
                               "next": {"href": "/companies?page=2&pageSize=2"}}
    last = (await sb.codat("GET", "/companies", params={"page": 3, "pageSize": 2})).json()
    assert [c["name"] for c in last["results"]] == names[4:]
    assert "next" not in last["_links"]
    assert last["_links"]["previous"] == {"href": "/companies?page=2&pageSize=2"}
    default = (await sb.codat("GET", "/companies")).json()
    assert (default["pageNumber"], default["pageSize"], len(default["results"])) == (1, 100, 5)
    beyond = (await sb.codat("GET", "/companies", params={"page": 9})).json()
    assert beyond["results"] == [] and beyond["totalResults"] == 5


async def test_connections_page_too(sb: Harness) -> None:
    company = await sb.create_company()
    ids = [(await sb.create_connection(company["id"]))["id"] for _ in range(3)]
    path = f"/companies/{company['id']}/connections"
    page = (await sb.codat("GET", path, params={"page": 2, "pageSize": 2})).json()
    assert [c["id"] for c in page["results"]] == ids[2:]
    assert page["_links"]["self"] == {"href": path}
    assert "next" not in page["_links"]


@pytest.mark.parametrize("params", [{"pageSize": 0}, {"pageSize": 5001}, {"page": 0},
                                    {"page": "x"}])
async def test_out_of_range_paging_gets_400(sb: Harness, params: dict[str, Any]) -> None:
    assert_codat_error(await sb.codat("GET", "/companies", params=params), 400)


async def test_page_size_up_to_5000_is_accepted(sb: Harness) -> None:
    response = await sb.codat("GET", "/companies", params={"pageSize": 5000})
    assert response.json()["pageSize"] == 5000


# --- idempotency --------------------------------------------------------------------------

async def calls(sb: Harness) -> dict[str, Any]:
    body: dict[str, Any] = (await sb.client.get("/_sandbox/calls")).json()
    return body


async def test_a_repeated_idempotency_key_replays_the_first_answer_once(sb: Harness) -> None:
    headers = {"Idempotency-Key": "create-toft"}
    first = await sb.codat("POST", "/companies", json={"name": "Toft"}, headers=headers)
    second = await sb.codat("POST", "/companies", json={"name": "Toft"}, headers=headers)
    assert (first.status_code, second.status_code) == (200, 200)
    assert second.content == first.content
    assert len(sb.sandbox.companies) == 1
    assert await sb.event_types() == ["company.created"]
    log = await calls(sb)
    assert log["byIdempotencyKey"] == {"create-toft": 1}
    assert [(c["replayed"], c["effect"]) for c in log["calls"]] == [(False, True), (True, False)]


async def test_a_reused_key_with_another_body_gets_422(sb: Harness) -> None:
    headers = {"Idempotency-Key": "k1"}
    await sb.codat("POST", "/companies", json={"name": "Toft"}, headers=headers)
    response = await sb.codat("POST", "/companies", json={"name": "Other"}, headers=headers)
    assert_codat_error(response, 422)
    assert len(sb.sandbox.companies) == 1


async def test_a_key_still_in_progress_gets_409(sb: Harness) -> None:
    await sb.control("/faults", {"method": "POST", "path": "^/companies$", "delay": 0.3})
    headers = {"Idempotency-Key": "slow"}
    slow = asyncio.create_task(sb.codat("POST", "/companies", json={"name": "A"},
                                        headers=headers))
    await eventually(lambda: sb.sandbox.calls.calls and sb.sandbox.calls.calls[0].fault)
    racing = await sb.codat("POST", "/companies", json={"name": "A"}, headers=headers)
    assert_codat_error(racing, 409)
    assert (await slow).status_code == 200
    assert len(sb.sandbox.companies) == 1


async def test_a_429_is_not_cached_so_the_retry_with_the_same_key_takes_effect(
        sb: Harness) -> None:
    await sb.control("/faults", {"method": "POST", "path": "^/companies$", "status": 429,
                                 "retryAfter": 2, "count": 1})
    headers = {"Idempotency-Key": "rate-limited"}
    limited = await sb.codat("POST", "/companies", json={"name": "A"}, headers=headers)
    assert_codat_error(limited, 429)
    assert limited.headers["Retry-After"] == "2"
    retried = await sb.codat("POST", "/companies", json={"name": "A"}, headers=headers)
    assert retried.status_code == 200
    assert (await calls(sb))["byIdempotencyKey"] == {"rate-limited": 1}


async def test_other_errors_are_cached_and_replayed_like_codat_does(sb: Harness) -> None:
    await sb.control("/faults", {"method": "POST", "path": "^/companies$", "status": 500})
    headers = {"Idempotency-Key": "boom"}
    failed = await sb.codat("POST", "/companies", json={"name": "A"}, headers=headers)
    replayed = await sb.codat("POST", "/companies", json={"name": "A"}, headers=headers)
    assert (failed.status_code, replayed.status_code) == (500, 500)
    assert replayed.content == failed.content
    fresh = await sb.codat("POST", "/companies", json={"name": "A"},
                           headers={"Idempotency-Key": "boom-2"})
    assert fresh.status_code == 200
    assert (await calls(sb))["byIdempotencyKey"] == {"boom": 0, "boom-2": 1}


def test_idempotency_keys_expire_after_90_minutes() -> None:
    now = [0.0]
    cache = IdempotencyCache(clock=lambda: now[0])
    assert cache.begin("k", "a")[0] is Lookup.NEW
    cache.finish("k", CachedAnswer(200, b"{}", "application/json"))
    now[0] = 90 * 60 - 1
    assert cache.begin("k", "a") == (Lookup.REPLAY, CachedAnswer(200, b"{}", "application/json"))
    assert cache.begin("k", "b")[0] is Lookup.MISMATCH
    now[0] = 90 * 60
    assert cache.begin("k", "b")[0] is Lookup.NEW


async def test_idempotency_covers_patch_but_not_get(sb: Harness) -> None:
    company_id, connection_id = await sb.linked()
    path = f"/companies/{company_id}/connections/{connection_id}"
    headers = {"Idempotency-Key": "unlink-1"}
    first = await sb.codat("PATCH", path, json={"status": "Unlinked"}, headers=headers)
    again = await sb.codat("PATCH", path, json={"status": "Unlinked"}, headers=headers)
    assert (first.status_code, again.status_code) == (200, 200)  # not 400: a replay
    assert again.content == first.content
    assert (await sb.event_types()).count("connection.disconnected") == 1
    for _ in range(2):
        assert (await sb.codat("GET", path, headers={"Idempotency-Key": "g"})).status_code == 200
    log = await calls(sb)
    assert log["byIdempotencyKey"]["unlink-1"] == 1
    assert log["byIdempotencyKey"]["g"] == 2


# --- follow-up calls ----------------------------------------------------------------------

def followups(company_id: str, connection_id: str) -> list[tuple[str, str, dict[str, Any]]]:
    company = f"/companies/{company_id}"
    payables = f"{company}/connections/{connection_id}/payables"
    return [
        ("POST", f"{company}/data/queue/bills", {"connectionId": connection_id}),
        ("POST", f"{company}/data/all", {}),
        ("GET", f"{company}/dataStatus", {}),
        ("GET", f"{payables}/info", {}),
        ("GET", f"{payables}/mappingOptions/payments", {}),
    ]


async def test_follow_ups_answer_409_until_the_connection_is_linked(sb: Harness) -> None:
    company = await sb.create_company()
    connection = await sb.create_connection(company["id"])
    for method, path, params in followups(company["id"], connection["id"]):
        assert_codat_error(await sb.codat(method, path, params=params), 409)
    await sb.smb("authorize", company["id"], connection["id"])
    expected = [200, 204, 200, 200, 200]
    for (method, path, params), status in zip(
            followups(company["id"], connection["id"]), expected, strict=True):
        assert (await sb.codat(method, path, params=params)).status_code == status, path
    await sb.codat("PATCH", f"/companies/{company['id']}/connections/{connection['id']}",
                   json={"status": "Unlinked"})
    for method, path, params in followups(company["id"], connection["id"]):
        assert_codat_error(await sb.codat(method, path, params=params), 409)


async def test_initial_read_marks_bill_pay_data_types_complete(sb: Harness) -> None:
    company_id, connection_id = await sb.linked()
    status = (await sb.codat("GET", f"/companies/{company_id}/dataStatus")).json()
    assert set(status) == BILL_PAY_TYPES
    for data_type, entry in status.items():
        assert entry["dataType"] == data_type
        assert entry["currentStatus"] == "Complete"
        assert entry["latestSyncId"] == entry["latestSuccessfulSyncId"]
        assert ISO_MS.match(entry["lastSuccessfulSync"])
    connection = (await sb.codat(
        "GET", f"/companies/{company_id}/connections/{connection_id}")).json()
    assert ISO_MS.match(connection["lastSync"])


async def test_queueing_a_data_type_returns_a_pull_operation_then_completes(
        sb: Harness) -> None:
    company_id, connection_id = await sb.linked()
    path = f"/companies/{company_id}/data/queue/bills"
    operation = (await sb.codat("POST", path, params={"connectionId": connection_id})).json()
    assert operation["companyId"] == company_id and operation["connectionId"] == connection_id
    assert (operation["dataType"], operation["status"]) == ("bills", "Queued")
    assert (operation["isCompleted"], operation["isErrored"], operation["progress"]) == (
        False, False, 0)

    async def completed() -> bool:
        status = (await sb.codat("GET", f"/companies/{company_id}/dataStatus")).json()
        bills = status["bills"]
        return bool(bills["latestSuccessfulSyncId"] == operation["id"]
                    and bills["currentStatus"] == "Complete")

    await eventually(completed)
    assert (await sb.event_types())[-1] == "read.completed"
    assert_codat_error(await sb.codat("POST", f"/companies/{company_id}/data/queue/nonsense"),
                       400)


async def test_payables_info_and_payment_mapping_options(sb: Harness) -> None:
    company_id, connection_id = await sb.linked("Toft stores")
    payables = f"/companies/{company_id}/connections/{connection_id}/payables"
    info = (await sb.codat("GET", f"{payables}/info")).json()
    assert info == {"companyName": "Toft stores", "baseCurrency": "GBP"}
    options = (await sb.codat("GET", f"{payables}/mappingOptions/payments")).json()
    assert len(options["bankAccounts"]) >= 1
    assert "continuationToken" not in options["pagination"]
    active = (await sb.codat("GET", f"{payables}/mappingOptions/payments",
                             params={"statusQuery": "status=Active"})).json()
    assert {a["status"] for a in active["bankAccounts"]} == {"Active"}


# --- faults and the call log --------------------------------------------------------------

async def test_a_500_fault_hits_the_next_matching_request_only(sb: Harness) -> None:
    added = await sb.control("/faults", {"method": "GET", "path": r"^/companies$",
                                         "status": 500, "count": 1})
    assert added.status_code == 201
    assert (await sb.codat("POST", "/companies", json={"name": "x"})).status_code == 200
    company_id = next(iter(sb.sandbox.companies))
    assert (await sb.codat("GET", f"/companies/{company_id}")).status_code == 200
    assert_codat_error(await sb.codat("GET", "/companies"), 500)
    assert (await sb.codat("GET", "/companies")).status_code == 200


async def test_a_503_fault_with_retry_after_and_any_method(sb: Harness) -> None:
    await sb.control("/faults", {"method": None, "path": "/companies", "status": 503,
                                 "retryAfter": 30, "count": 2})
    first = await sb.codat("GET", "/companies")
    second = await sb.codat("POST", "/companies", json={"name": "x"})
    assert_codat_error(first, 503)
    assert_codat_error(second, 503)
    assert first.headers["Retry-After"] == "30"
    assert (await sb.codat("GET", "/companies")).status_code == 200


async def test_a_delay_alone_gives_a_slow_but_normal_answer(sb: Harness) -> None:
    await sb.control("/faults", {"method": "GET", "path": "^/integrations$", "delay": 0.2})
    started = time.monotonic()
    response = await sb.codat("GET", "/integrations")
    assert time.monotonic() - started >= 0.2
    assert response.status_code == 200
    assert response.json()["totalResults"] == 9


async def test_a_delayed_error_and_clearing_faults(sb: Harness) -> None:
    await sb.control("/faults", {"method": "GET", "path": "integrations", "status": 429,
                                 "delay": 0.1, "count": 5})
    started = time.monotonic()
    limited = await sb.codat("GET", "/integrations")
    assert time.monotonic() - started >= 0.1
    assert_codat_error(limited, 429)
    assert limited.headers["Retry-After"] == "1"  # always sent with a 429
    listed = (await sb.client.get("/_sandbox/faults")).json()["faults"]
    assert listed[0]["remaining"] == 4
    assert (await sb.client.delete("/_sandbox/faults")).json() == {"cleared": 1}
    assert (await sb.codat("GET", "/integrations")).status_code == 200


@pytest.mark.parametrize("rule", [{"path": "("}, {"path": "x"}, {"path": "x", "status": 200},
                                  {"path": "x", "status": 500, "count": 0},
                                  {"path": "x", "delay": -1}, ["x"]])
async def test_malformed_fault_rules_are_refused(sb: Harness, rule: Any) -> None:
    assert (await sb.control("/faults", rule)).status_code == 400
    assert sb.sandbox.faults.rules == []


async def test_the_call_log_records_every_codat_request(sb: Harness) -> None:
    await sb.control("/faults", {"method": "GET", "path": "integrations", "status": 500})
    await sb.codat("POST", "/companies", json={"name": "x"}, headers={"Idempotency-Key": "a"})
    await sb.codat("GET", "/integrations", params={"page": "1"})
    await sb.client.get("/companies")  # no key: 401
    await sb.client.get("/link/company/nothing")  # the Link page is not a Codat endpoint
    log = await calls(sb)
    summary = [(c["method"], c["path"], c["query"], c["idempotencyKey"], c["status"],
                c["effect"], c["fault"]) for c in log["calls"]]
    assert summary == [
        ("POST", "/companies", {}, "a", 200, True, False),
        ("GET", "/integrations", {"page": "1"}, None, 500, False, True),
        ("GET", "/companies", {}, None, 401, False, False),
    ]
    assert all(ISO_MS.match(c["at"]) for c in log["calls"])
    assert log["byIdempotencyKey"] == {"a": 1}


async def test_reset_forgets_everything(sb: Harness) -> None:
    await sb.linked()
    await sb.control("/faults", {"path": "x", "status": 500})
    await sb.client.post("/_sandbox/webhooks/pause")
    assert (await sb.control("/reset")).json() == {"reset": True}
    assert sb.sandbox.companies == {}
    assert sb.sandbox.faults.rules == []
    assert await sb.messages() == []
    assert (await calls(sb)) == {"calls": [], "byIdempotencyKey": {}}
    assert sb.sandbox.webhooks.paused is False
    assert (await sb.codat("GET", "/companies")).json()["totalResults"] == 0


# --- importing what Codat already holds (the benchmark's storm) -------------------------------

async def test_imported_companies_answer_follow_ups_without_a_webhook(sb: Harness) -> None:
    answer = await sb.control("/companies", {"companies": [
        {"id": "c-1", "name": "Imported Ltd", "connections": [
            {"id": "k-linked", "platformKey": "gbol", "status": "Linked"},
            {"id": "k-gone", "platformKey": "qhyg", "status": "Deauthorized"}]}]})
    assert answer.status_code == 201, answer.text
    assert answer.json() == {"companies": 1, "connections": 2}
    linked = (await sb.codat("GET", "/companies/c-1/connections/k-linked")).json()
    assert (linked["status"], linked["platformName"]) == ("Linked", "Xero")
    gone = (await sb.codat("GET", "/companies/c-1/connections/k-gone")).json()
    assert gone["status"] == "Deauthorized"
    status = (await sb.codat("GET", "/companies/c-1/dataStatus")).json()
    assert set(status) == BILL_PAY_TYPES
    assert {entry["currentStatus"] for entry in status.values()} == {"Complete"}
    assert (await sb.codat("GET", "/companies/c-1")).json()["name"] == "Imported Ltd"
    assert await sb.messages() == []  # Codat delivers the storm's events itself


@pytest.mark.parametrize("body", [
    [], {"companies": {}}, {"companies": [{"name": "no id"}]},
    {"companies": [{"id": "c", "connections": [{"id": "k", "status": "Sleeping"}]}]},
    {"companies": [{"id": "c", "connections": [{"id": "k", "platformKey": "nope"}]}]},
    {"companies": [{"id": "ok"}, {"id": "c", "connections": [{"status": "Linked"}]}]},
])
async def test_a_bad_import_gets_400_and_changes_nothing(sb: Harness, body: Any) -> None:
    answer = await sb.control("/companies", body)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]
    assert sb.sandbox.companies == {}
