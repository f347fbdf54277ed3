"""The onboarding API end to end, on SQLite and PostgreSQL: the service and the sandbox Codat on
real loopback ports, the SMB on the Link page, Codat's webhooks back to the service, the
follow-ups to Bill Pay readiness, unlink; bad input, caller idempotency and every Codat failure.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest

from schemas.platforms import SUPPORTED_PLATFORMS, BillPayMode
from tests.factories import OAS_DIR, new_id, spec_operations
from tests.flow import BILL_PAY_TYPES, Flow, eventually, flow

COMPANY_CALL = r"/companies"
CONNECTIONS_CALL = r"/companies/[^/]+/connections"
CONNECTION_CALL = r"/companies/[^/]+/connections/[^/]+"
NOTHING = {"companies": 0, "connections": 0, "connection_history": 0, "outbox": 0}


async def nothing_written(f: Flow) -> dict[str, int]:
    counts = await f.counts()
    return {table: counts[table] for table in NOTHING}


async def seed(f: Flow, mode: str) -> tuple[str, str]:
    """The seed flow, asserting every step; returns the company and connection ids."""
    # 1. Create the company: stored, and it exists at Codat.
    response = await f.api.post("/v1/companies", headers={"Idempotency-Key": "seed-company"},
                                json={"name": "Toft stores", "description": "customer 42",
                                      "tags": {"customerId": "cust-42"}})
    assert response.status_code == 201, response.text
    company = response.json()
    company_id = company["id"]
    assert company["name"] == "Toft stores"
    assert company["tags"] == {"customerId": "cust-42"}
    assert company["billPayReady"] is False
    stored = await f.company(company_id)
    assert stored["name"] == "Toft stores" and stored["description"] == "customer 42"
    at_codat = await f.codat("GET", f"/companies/{company_id}")
    assert at_codat.status_code == 200
    assert at_codat.json()["name"] == "Toft stores"
    assert at_codat.json()["tags"] == {"customerId": "cust-42"}

    # 2. Create its QuickBooks Online connection: PendingAuth, with a linkUrl to the Link page.
    response = await f.api.post(f"/v1/companies/{company_id}/connections",
                                json={"platformKey": "qhyg"})
    assert response.status_code == 201, response.text
    connection = response.json()
    connection_id = connection["id"]
    assert connection["status"] == "PendingAuth"
    assert connection["companyId"] == company_id
    assert connection["platformKey"] == "qhyg"
    assert connection["platformName"] == "QuickBooks Online"
    assert connection["linkUrl"] == (f"{f.sandbox_url}/link/companies/{company_id}"
                                     f"/connections/{connection_id}/start")
    # Codat's connection.created may be stored before or after the API's own row.
    assert any(h["source"] == "api" and h["toState"] == "PendingAuth"
               and h["result"] == "applied" for h in await f.history(connection_id))

    # 3. The SMB opens the page and authorizes; Codat's webhook turns the connection Linked.
    page = await f.sb.get(connection["linkUrl"])
    assert page.status_code == 200
    assert "Connect Toft stores to QuickBooks Online" in page.text
    authorized = await f.authorize(connection["linkUrl"])
    assert authorized.status_code == 200 and "Connected." in authorized.text
    linked = await f.until_status(connection_id, "Linked")
    assert linked["lastEventAt"] is not None
    history = await f.history(connection_id)
    assert any(h["eventType"] == "connection.connected" and h["source"] == "webhook"
               and h["toState"] == "Linked" and h["result"] == "applied" for h in history)

    # 4. The follow-ups run and the company becomes ready for Bill Pay.
    async def ready() -> Any:
        found = await f.company(company_id)
        return found if found["billPayReady"] else None
    info = await eventually(ready, what="the company to become ready for Bill Pay")
    detail = info["billPayDetail"]
    assert detail["mode"] == mode and detail["missing"] == []
    if mode == "sync":
        assert detail["companyName"] == "Toft stores"
        # The sandbox's savings account is Archived: bills cannot be paid from it.
        assert {a["name"] for a in detail["bankAccounts"]} == {"Business current account"}
    else:
        assert detail["failed"] == []
    jobs = await f.settled({"confirm_connection", "refresh_readiness"})
    assert all(j["status"] == "done" for j in jobs), jobs

    async def every_type_complete() -> Any:
        found = await f.company(company_id)
        statuses = {d["dataType"]: d["status"] for d in found["dataTypes"]}
        return found if all(statuses.get(t) == "Complete" for t in BILL_PAY_TYPES) else None
    await eventually(every_type_complete, what="every Bill Pay data type Complete")

    # 5. Unlink: Unlinked at once (source api), then Codat's connection.disconnected arrives.
    response = await f.api.post(
        f"/v1/companies/{company_id}/connections/{connection_id}/unlink",
        json={"reason": "customer closed their account"})
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "Unlinked"
    at_codat = await f.codat("GET", f"/companies/{company_id}/connections/{connection_id}")
    assert at_codat.json()["status"] == "Unlinked"
    history = await f.history(connection_id)
    unlinked = [h for h in history if h["source"] == "api" and h["toState"] == "Unlinked"]
    assert len(unlinked) == 1
    assert "customer closed their account" in unlinked[0]["reason"]

    async def disconnected() -> Any:
        rows = await f.history(connection_id)
        return rows if any(r["eventType"] == "connection.disconnected" for r in rows) else None
    history = await eventually(disconnected, what="Codat's connection.disconnected")
    seen = next(h for h in history if h["eventType"] == "connection.disconnected")
    assert seen["source"] == "webhook" and seen["toState"] == "Unlinked"
    # Codat dated its event before it answered the unlink, so our record of its answer is the
    # newer word: the webhook is superseded if it comes after that record, applied (and then
    # overtaken) if before. The state is the same either way.
    assert seen["result"] in ("applied", "superseded")
    assert (await f.connection(connection_id))["status"] == "Unlinked"
    # Its only connection is gone: the company cannot pay bills through it any more.
    assert (await f.company(company_id))["billPayReady"] is False
    return company_id, connection_id


# --- the seed flow ---------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["async", "sync"])
async def test_the_seed_flow_end_to_end(database_url: str, mode: str) -> None:
    async with flow(database_url, bill_pay_mode=mode) as f:
        company_id, _ = await seed(f, mode)
        # Codat saw one company and one connection created, however many calls were made.
        log = await f.call_log()
        creates = [c for c in log["calls"] if c["method"] == "POST"
                   and re.fullmatch(f"{COMPANY_CALL}|{CONNECTIONS_CALL}", c["path"])]
        assert len(creates) == 2 and all(c["effect"] for c in creates)
        assert len(f.sandbox.companies) == 1 and company_id in f.sandbox.companies


@pytest.mark.skipif(not OAS_DIR.is_dir(), reason=f"{OAS_DIR} is absent")
@pytest.mark.parametrize("mode", ["async", "sync"])
async def test_every_call_of_the_seed_flow_is_a_codat_operation(database_url: str,
                                                                 mode: str) -> None:
    async with flow(database_url, bill_pay_mode=mode) as f:
        await seed(f, mode)
        calls = await f.calls()
    operations = spec_operations()
    assert {c["method"] for c in calls} >= {"POST", "PATCH", "GET"}
    for call in calls:
        assert any(method == call["method"] and re.match(pattern, call["path"])
                   for method, pattern in operations), (call["method"], call["path"])
        if call["method"] in ("POST", "PATCH"):
            assert call["idempotencyKey"], call


# --- refused before Codat is called ----------------------------------------------------------

@pytest.mark.parametrize(("mode", "key"), [("async", "fbrh"), ("sync", "pqsw")])
async def test_a_platform_the_mode_does_not_support_is_422_naming_the_supported_ones(
        database_url: str, mode: str, key: str) -> None:
    async with flow(database_url, bill_pay_mode=mode, worker_enabled=False) as f:
        company_id = await f.create_company()
        before, calls = await nothing_written(f), len(await f.calls())
        response = await f.api.post(f"/v1/companies/{company_id}/connections",
                                    json={"platformKey": key},
                                    headers={"Idempotency-Key": "conn-1"})
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert key in error and mode in error
        for supported in SUPPORTED_PLATFORMS[BillPayMode(mode)]:
            assert supported in error
        assert await nothing_written(f) == before
        assert len(await f.calls()) == calls  # Codat was not asked
        # The refusal did not use up the caller's key: the right request goes through with it.
        retried = await f.api.post(f"/v1/companies/{company_id}/connections",
                                   json={"platformKey": "qhyg"},
                                   headers={"Idempotency-Key": "conn-1"})
        assert retried.status_code == 201, retried.text


INVALID_COMPANIES: list[tuple[Any, str]] = [
    ({"description": "no name"}, "name: Field required"),
    ({"name": "Toft", "nmae": "typo"}, "nmae: Extra inputs are not permitted"),
    ({"name": "Toft", "tags": {f"k{i}": "v" for i in range(11)}}, "tags: Value error, at most "
                                                                  "10 tags"),
    ({"name": "Toft", "tags": {"k" * 28: "v"}}, "a tag key is 1-27 characters"),
    ({"name": ""}, "name: String should have at least 1 character"),
    (b"{not json", "body: Invalid JSON"),
    (b"", "body: Invalid JSON"),
]
INVALID_CONNECTIONS: list[tuple[Any, str]] = [
    ({}, "platformKey: Field required"),
    ({"platformKey": "QHYG"}, "platformKey: String should match pattern"),
    ({"platformKey": "qhyg", "extra": 1}, "extra: Extra inputs are not permitted"),
    (b"[]", "body: Input should be an object"),
    (b"platformKey=qhyg", "body: Invalid JSON"),
]


def _content(body: Any) -> bytes:
    return body if isinstance(body, bytes) else json.dumps(body).encode()


async def test_an_invalid_company_body_is_422_with_a_clear_message(database_url: str) -> None:
    async with flow(database_url, worker_enabled=False) as f:
        for body, message in INVALID_COMPANIES:
            response = await f.api.post("/v1/companies", content=_content(body),
                                        headers={"content-type": "application/json",
                                                 "Idempotency-Key": "bad-body"})
            assert response.status_code == 422, (body, response.text)
            error = response.json()["error"]
            assert error.startswith("invalid request body: ") and message in error, (body, error)
        assert await f.calls() == []  # Codat was never asked
        assert await nothing_written(f) == NOTHING
        assert (await f.counts())["api_idempotency"] == 0  # the key is free for a fixed body


async def test_an_invalid_connection_body_is_422_without_a_codat_call(database_url: str) -> None:
    async with flow(database_url, worker_enabled=False) as f:
        company_id = await f.create_company()
        calls = len(await f.calls())
        for body, message in INVALID_CONNECTIONS:
            response = await f.api.post(f"/v1/companies/{company_id}/connections",
                                        content=_content(body),
                                        headers={"content-type": "application/json"})
            assert response.status_code == 422, (body, response.text)
            error = response.json()["error"]
            assert error.startswith("invalid request body: ") and message in error, (body, error)
        assert len(await f.calls()) == calls
        assert (await f.counts())["connections"] == 0


async def test_unlinking_a_connection_that_is_not_linked_is_409_and_changes_nothing(
        database_url: str) -> None:
    async with flow(database_url, worker_enabled=False) as f:
        company_id = await f.create_company()
        connection = await f.create_connection(company_id)
        await f.delivered(2)  # company.created and connection.created are in
        unlink = f"/v1/companies/{company_id}/connections/{connection['id']}/unlink"
        before, history = await f.connection(connection["id"]), await f.history(connection["id"])
        response = await f.api.post(unlink, json={"reason": "too early"})
        assert response.status_code == 409, response.text
        assert response.json()["error"] == ("only a Linked connection can be unlinked; this one "
                                            "is PendingAuth")
        assert await f.connection(connection["id"]) == before
        assert await f.history(connection["id"]) == history
        assert await f.calls("PATCH") == []


async def test_unlinking_an_unknown_connection_is_404(database_url: str) -> None:
    async with flow(database_url, worker_enabled=False) as f:
        company_id, connection_id = await f.onboard()
        other_company = await f.create_company("Someone else")
        for company, connection in ((company_id, new_id()), (other_company, connection_id)):
            response = await f.api.post(
                f"/v1/companies/{company}/connections/{connection}/unlink")
            assert response.status_code == 404, response.text
            assert connection in response.json()["error"]
        assert await f.calls("PATCH") == []
        assert (await f.connection(connection_id))["status"] == "Linked"


# --- caller idempotency ----------------------------------------------------------------------

async def test_the_same_key_and_body_replays_the_answer_with_one_codat_call(
        database_url: str) -> None:
    async with flow(database_url, worker_enabled=False) as f:
        body = {"name": "Toft stores", "tags": {"customerId": "cust-42"}}
        first = await f.api.post("/v1/companies", json=body, headers={"Idempotency-Key": "k1"})
        again = await f.api.post("/v1/companies", json=body, headers={"Idempotency-Key": "k1"})
        assert first.status_code == again.status_code == 201
        assert again.json() == first.json()
        assert again.headers.get("Idempotent-Replayed") == "true"
        assert "Idempotent-Replayed" not in first.headers
        assert len(await f.calls("POST", COMPANY_CALL)) == 1
        assert len(f.sandbox.companies) == 1

        other = await f.api.post("/v1/companies", json={"name": "Another"},
                                 headers={"Idempotency-Key": "k1"})
        assert other.status_code == 422, other.text
        assert "different request body" in other.json()["error"]
        assert len(await f.calls("POST", COMPANY_CALL)) == 1

        # A key belongs to one route: the same key on the connections route is a new request.
        company_id = first.json()["id"]
        path = f"/v1/companies/{company_id}/connections"
        made = [await f.api.post(path, json={"platformKey": "qhyg"},
                                 headers={"Idempotency-Key": "k1"}) for _ in range(2)]
        assert [m.status_code for m in made] == [201, 201]
        assert made[0].json()["id"] == made[1].json()["id"]
        assert len(await f.calls("POST", CONNECTIONS_CALL)) == 1
        assert (await f.counts())["companies"] == 1


async def test_concurrent_requests_with_one_key_make_one_codat_call(database_url: str) -> None:
    async with flow(database_url, worker_enabled=False) as f:
        await f.fault(COMPANY_CALL, method="POST", delay=0.4)  # slow: the others arrive meanwhile
        body = {"name": "Toft stores"}
        answers = await asyncio.gather(*[
            f.api.post("/v1/companies", json=body, headers={"Idempotency-Key": "same"})
            for _ in range(6)])
        statuses = sorted(a.status_code for a in answers)
        assert statuses.count(201) >= 1 and set(statuses) <= {201, 409}, statuses
        created = [a for a in answers if a.status_code == 201]
        assert len({a.json()["id"] for a in created}) == 1
        assert sum(a.headers.get("Idempotent-Replayed") != "true" for a in created) == 1
        for busy in (a for a in answers if a.status_code == 409):
            assert busy.headers["Retry-After"] and "in progress" in busy.json()["error"]
        assert len(await f.calls("POST", COMPANY_CALL)) == 1
        assert len(f.sandbox.companies) == 1
        replay = await f.api.post("/v1/companies", json=body, headers={"Idempotency-Key": "same"})
        assert replay.status_code == 201 and replay.json()["id"] == created[0].json()["id"]


# --- Codat failures --------------------------------------------------------------------------

def _assert_codat_correlation(body: dict[str, Any]) -> None:
    assert re.fullmatch(r"[0-9a-f]{32}", body["correlationId"] or ""), body
    assert body["correlationId"] in body["error"]


@pytest.mark.parametrize(("status", "answer"), [(429, 503), (500, 502), (503, 502)])
async def test_a_codat_error_on_create_company_writes_nothing(
        database_url: str, status: int, answer: int) -> None:
    async with flow(database_url, worker_enabled=False) as f:
        await f.fault(COMPANY_CALL, method="POST", status=status, retry_after=7)
        response = await f.api.post("/v1/companies", json={"name": "Toft stores"},
                                    headers={"Idempotency-Key": "k"})
        assert response.status_code == answer, response.text
        body = response.json()
        assert body["statusCode"] == answer
        _assert_codat_correlation(body)
        if status == 429:
            assert response.headers["Retry-After"] == "7"
            assert "rate limiting" in body["error"]
        else:
            assert "Codat is unavailable" in body["error"]
        assert await nothing_written(f) == NOTHING
        assert f.sandbox.companies == {}


async def test_a_codat_answer_slower_than_the_timeout_is_504(database_url: str) -> None:
    async with flow(database_url, worker_enabled=False, codat_timeout_seconds=0.3) as f:
        await f.fault(COMPANY_CALL, method="POST", delay=1.0)
        response = await f.api.post("/v1/companies", json={"name": "Toft stores"},
                                    headers={"Idempotency-Key": "slow"})
        assert response.status_code == 504, response.text
        assert "did not answer in time" in response.json()["error"]
        assert response.json()["correlationId"] is None  # Codat never answered
        assert await nothing_written(f) == NOTHING
        # The caller retries at once: Codat is still working on the first request (same Codat
        # key, kept after a timeout), so the answer is "try again shortly".
        busy = await f.api.post("/v1/companies", json={"name": "Toft stores"},
                                headers={"Idempotency-Key": "slow"})
        assert busy.status_code == 503, busy.text
        assert busy.headers["Retry-After"] == "2"
        assert "still working on it" in busy.json()["error"]
        _assert_codat_correlation(busy.json())
        assert await nothing_written(f) == NOTHING
        # Codat finishes the request after all; a retry with the caller's key gets that same
        # company, never a second one.
        await eventually(lambda: f.sandbox.companies, what="Codat to finish the slow request")
        retried = await f.api.post("/v1/companies", json={"name": "Toft stores"},
                                   headers={"Idempotency-Key": "slow"})
        assert retried.status_code == 201, retried.text
        assert list(f.sandbox.companies) == [retried.json()["id"]]
        keys = {c["idempotencyKey"] for c in await f.calls("POST", COMPANY_CALL)}
        assert len(keys) == 1


async def test_a_company_codat_does_not_know_is_404(database_url: str) -> None:
    async with flow(database_url, worker_enabled=False) as f:
        missing = new_id()
        response = await f.api.post(f"/v1/companies/{missing}/connections",
                                    json={"platformKey": "qhyg"})
        assert response.status_code == 404, response.text
        _assert_codat_correlation(response.json())
        assert missing in response.json()["error"]
        assert await nothing_written(f) == NOTHING


async def test_a_wrong_api_key_is_502_with_codats_correlation_id(database_url: str) -> None:
    async with flow(database_url, worker_enabled=False, codat_api_key="not-the-key") as f:
        response = await f.api.post("/v1/companies", json={"name": "Toft stores"})
        assert response.status_code == 502, response.text
        assert "Codat refused our request" in response.json()["error"]
        assert "not-the-key" not in response.text
        _assert_codat_correlation(response.json())
        assert [c["status"] for c in await f.calls()] == [401]
        assert await nothing_written(f) == NOTHING


async def test_codat_failures_on_create_connection_and_unlink_write_nothing(
        database_url: str) -> None:
    async with flow(database_url, worker_enabled=False) as f:
        company_id, connection_id = await f.onboard()
        await f.delivered(4)  # up to read.completed.initial, which queues a readiness job
        before = await nothing_written(f)
        history = await f.history(connection_id)
        await f.fault(CONNECTIONS_CALL, method="POST", status=500)
        response = await f.api.post(f"/v1/companies/{company_id}/connections",
                                    json={"platformKey": "gbol"})
        assert response.status_code == 502, response.text
        _assert_codat_correlation(response.json())
        await f.fault(CONNECTION_CALL, method="PATCH", status=429, retry_after=3)
        response = await f.api.post(
            f"/v1/companies/{company_id}/connections/{connection_id}/unlink")
        assert response.status_code == 503 and response.headers["Retry-After"] == "3"
        _assert_codat_correlation(response.json())
        assert await nothing_written(f) == before
        assert await f.history(connection_id) == history
        assert (await f.connection(connection_id))["status"] == "Linked"


@pytest.mark.parametrize(("status", "rotated"), [(500, True), (503, True), (429, False)])
async def test_a_retry_with_the_same_key_after_a_codat_failure_creates_one_company(
        database_url: str, status: int, rotated: bool) -> None:
    async with flow(database_url, worker_enabled=False) as f:
        await f.fault(COMPANY_CALL, method="POST", status=status, retry_after=1)
        body, headers = {"name": "Toft stores"}, {"Idempotency-Key": "retry-me"}
        failed = await f.api.post("/v1/companies", json=body, headers=headers)
        assert failed.status_code in (502, 503), failed.text
        retried = await f.api.post("/v1/companies", json=body, headers=headers)
        assert retried.status_code == 201, retried.text
        calls = await f.calls("POST", COMPANY_CALL)
        assert [c["status"] for c in calls] == [status, 200]
        # Codat keeps a 5xx under its key for 90 minutes, so the retry needs a fresh one; a
        # 429 is not kept, so the same key is right (and safer).
        assert (calls[0]["idempotencyKey"] != calls[1]["idempotencyKey"]) is rotated
        assert list(f.sandbox.companies) == [retried.json()["id"]]
        replay = await f.api.post("/v1/companies", json=body, headers=headers)
        assert replay.json() == retried.json()
        assert replay.headers["Idempotent-Replayed"] == "true"
        assert len(await f.calls("POST", COMPANY_CALL)) == 2
        assert (await f.counts())["companies"] == 1


async def test_codat_rate_limit_pause_answers_503_without_calling_codat(
        database_url: str) -> None:
    from datetime import UTC, datetime, timedelta

    import orjson

    async with flow(database_url, worker_enabled=False) as f:
        expiry = datetime.now(UTC) + timedelta(seconds=30)
        reached = orjson.dumps({
            "id": new_id(), "eventType": "client.rateLimit.reached",
            "generatedDate": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "payload": {"dailyQuota": 1000, "quotaRemaining": 0,
                        "expiryDate": expiry.isoformat().replace("+00:00", "Z")}})
        assert (await f.deliver(reached)).status_code == 200
        before = len((await f.call_log())["calls"])
        response = await f.api.post("/v1/companies", json={"name": "Toft stores"})
        assert response.status_code == 503, response.text
        assert 25 <= int(response.headers["retry-after"]) <= 31
        assert "rate limit" in response.json()["error"]
        assert len((await f.call_log())["calls"]) == before
        assert await nothing_written(f) == NOTHING


async def test_an_oversized_onboarding_body_is_413_and_calls_nothing(database_url: str) -> None:
    async with flow(database_url, worker_enabled=False) as f:
        body = b'{"name": "Toft", "description": "' + b"x" * 70_000 + b'"}'
        response = await f.api.post("/v1/companies", content=body,
                                    headers={"content-type": "application/json"})
        assert response.status_code == 413
        assert (await f.call_log())["calls"] == []
        assert await nothing_written(f) == NOTHING
