"""POST /webhooks/codat through HTTP, on SQLite and PostgreSQL: every rule, status and state."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import time
from pathlib import Path

import orjson
import pytest

from schemas.order import new_message_id
from service.localserver import free_port
from tests.conftest import (
    TABLES,
    Service,
    install_failure,
    make_settings,
    remove_failure,
    start_service,
)
from tests.factories import (
    OTHER_SECRET,
    SECRET_2,
    at,
    company_body,
    connection_body,
    legacy_body,
    new_id,
    read_completed_body,
    sign,
)

EMPTY = dict.fromkeys(TABLES, 0)


async def connection_state(service: Service, connection_id: str) -> dict[str, object]:
    response = await service.get(f"/v1/connections/{connection_id}")
    assert response.status_code == 200, response.text
    data: dict[str, object] = response.json()
    return data


async def history(service: Service, connection_id: str) -> list[dict[str, object]]:
    response = await service.get(f"/v1/connections/{connection_id}/history")
    assert response.status_code == 200, response.text
    results: list[dict[str, object]] = response.json()["results"]
    return results


async def jobs(service: Service) -> list[dict[str, object]]:
    return await service.rows("SELECT kind, connection_id, status FROM outbox ORDER BY kind")


# --- refused before anything is stored ---------------------------------------------------------

async def test_body_over_the_limit_is_413_with_content_length(service: Service) -> None:
    body = b"x" * (service.settings.webhook_max_body_bytes + 1)
    response = await service.deliver(body)
    assert response.status_code == 413
    assert await service.counts() == EMPTY


async def test_body_over_the_limit_is_413_without_content_length(service: Service) -> None:
    limit = service.settings.webhook_max_body_bytes
    headers = sign(b"{}")

    async def chunks():  # type: ignore[no-untyped-def]
        for _ in range(limit // 4096 + 2):
            yield b"y" * 4096

    response = await service.client.post("/webhooks/codat", content=chunks(), headers=headers)
    assert "content-length" not in response.request.headers
    assert response.status_code == 413
    assert await service.counts() == EMPTY


@pytest.mark.parametrize("missing", ["svix-id", "svix-timestamp", "svix-signature"])
async def test_missing_signature_header_is_400(service: Service, missing: str) -> None:
    body = connection_body("connection.created", company_id=new_id(), connection_id=new_id(),
                           status="PendingAuth", generated=at(0))
    headers = sign(body)
    del headers[missing]
    response = await service.client.post("/webhooks/codat", content=body, headers=headers)
    assert response.status_code == 400
    assert missing.removeprefix("svix-") in response.json()["error"]
    assert await service.counts() == EMPTY


def _tamper(headers: dict[str, str], case: str, body: bytes) -> tuple[dict[str, str], bytes]:
    now = int(time.time())
    if case == "wrong secret":
        return sign(body, secret=OTHER_SECRET), body
    if case == "signature of another body":
        return sign(body + b" "), body
    if case == "signature of another id":
        signed = sign(body)
        return {**signed, "svix-id": "msg_someone_else"}, body
    if case == "too old":
        return sign(body, timestamp=now - 301), body
    if case == "too new":
        return sign(body, timestamp=now + 301), body
    if case == "non-integer timestamp":
        return {**headers, "svix-timestamp": f"{now}.5"}, body
    if case == "timestamp not a number":
        return {**headers, "svix-timestamp": "yesterday"}, body
    if case == "malformed signature header":
        return {**headers, "svix-signature": "garbage"}, body
    if case == "bad base64":
        return {**headers, "svix-signature": "v1,@@not-base64@@"}, body
    if case == "other scheme only":
        return {**headers, "svix-signature": headers["svix-signature"].replace("v1,", "v1a,")}, \
            body
    if case == "body not utf-8":
        return sign(body), body + b"\xff\xfe"
    raise AssertionError(case)


@pytest.mark.parametrize("case", [
    "wrong secret", "signature of another body", "signature of another id", "too old", "too new",
    "non-integer timestamp", "timestamp not a number", "malformed signature header",
    "bad base64", "other scheme only", "body not utf-8"])
async def test_failed_verification_is_401_and_writes_nothing(service: Service, case: str) -> None:
    body = connection_body("connection.created", company_id=new_id(), connection_id=new_id(),
                           status="PendingAuth", generated=at(0))
    headers, sent = _tamper(sign(body), case, body)
    response = await service.client.post("/webhooks/codat", content=sent, headers=headers)
    assert response.status_code == 401, response.text
    assert await service.counts() == EMPTY


# --- stored and applied ------------------------------------------------------------------------

async def test_connection_created_stores_delivery_company_connection_and_history(
        service: Service) -> None:
    company, connection = new_id(), new_id()
    body = connection_body("connection.created", company_id=company, connection_id=connection,
                           status="PendingAuth", generated=at(0))
    headers = sign(body)
    response = await service.client.post("/webhooks/codat", content=body, headers=headers)
    assert response.status_code == 200
    assert response.json() == {"outcome": "processed", "disposition": "stored"}

    state = await connection_state(service, connection)
    assert state["status"] == "PendingAuth"
    assert state["companyId"] == company
    assert state["platformKey"] == "qhyg"
    assert state["linkUrl"].endswith(f"/connections/{connection}/start")  # type: ignore[union-attr]
    assert state["lastEventAt"] == "2026-11-01T12:00:00Z"
    [row] = await history(service, connection)
    assert (row["fromState"], row["toState"], row["result"], row["source"]) == \
        (None, "PendingAuth", "applied", "webhook")
    assert row["deliveryId"] == headers["svix-id"]
    [delivery] = await service.rows(
        "SELECT body, body_sha256, outcome, secret_id, event_type, company_id FROM deliveries")
    assert bytes(delivery["body"]) == body  # the exact bytes
    assert delivery["outcome"] == "processed"
    assert delivery["event_type"] == "connection.created"
    assert delivery["company_id"] == company
    assert delivery["secret_id"].startswith("whsec:")
    assert await jobs(service) == []
    company_json = (await service.get(f"/v1/companies/{company}")).json()
    assert company_json["name"] == "Toft stores"
    assert company_json["tags"] == {"uid": "customer-42"}


async def test_seed_flow_moves_through_the_states(service: Service) -> None:
    company, connection = new_id(), new_id()
    steps = [("connection.created", "PendingAuth"), ("connection.connected", "Linked"),
             ("connection.disconnected", "Unlinked"), ("connection.reconnected", "Linked"),
             ("connection.disconnected", "Deauthorized")]
    for second, (event_type, status) in enumerate(steps):
        body = connection_body(event_type, company_id=company, connection_id=connection,
                               status=status, generated=at(second))
        assert (await service.deliver(body)).status_code == 200
        assert (await connection_state(service, connection))["status"] == status
    rows = await history(service, connection)
    moves = [(h["fromState"], h["toState"], h["result"]) for h in rows]
    assert moves == [(None, "PendingAuth", "applied"), ("PendingAuth", "Linked", "applied"),
                     ("Linked", "Unlinked", "applied"), ("Unlinked", "Linked", "applied"),
                     ("Linked", "Deauthorized", "applied")]
    # Each time it became Linked, a confirm job was enqueued in the same transaction.
    assert [j["kind"] for j in await jobs(service)] == ["confirm_connection"] * 2


async def test_failed_keeps_pending_auth_with_its_errors(service: Service) -> None:
    company, connection = new_id(), new_id()
    await service.deliver(connection_body("connection.created", company_id=company,
                                          connection_id=connection, status="PendingAuth",
                                          generated=at(0)))
    errors = [{"statusCode": "403", "statusText": "User cancelled linking",
               "errorMessage": "User cancelled", "erroredOnUtc": "2026-11-01T12:00:01Z",
               "status": "Active"}]
    response = await service.deliver(connection_body(
        "connection.failed", company_id=company, connection_id=connection, status="PendingAuth",
        generated=at(1), errors=errors))
    assert response.status_code == 200
    state = await connection_state(service, connection)
    assert state["status"] == "PendingAuth"
    assert state["errors"] == errors


async def test_connection_deleted_marks_it_deleted(service: Service) -> None:
    company, connection = new_id(), new_id()
    for second, (event_type, status) in enumerate(
            [("connection.connected", "Linked"), ("connection.deleted", "Linked")]):
        await service.deliver(connection_body(event_type, company_id=company,
                                              connection_id=connection, status=status,
                                              generated=at(second)))
    state = await connection_state(service, connection)
    assert state["deleted"] is True
    assert state["status"] == "Linked"  # the last status Codat reported
    assert (await history(service, connection))[-1]["toState"] == "Deleted"
    # A deleted connection never comes back, even for a newer event.
    await service.deliver(connection_body("connection.reconnected", company_id=company,
                                          connection_id=connection, status="Linked",
                                          generated=at(5)))
    assert (await connection_state(service, connection))["deleted"] is True
    assert (await history(service, connection))[-1]["result"] == "rejected"


async def test_company_deleted_marks_company_and_connections_deleted(service: Service) -> None:
    company, first, second = new_id(), new_id(), new_id()
    for connection in (first, second):
        await service.deliver(connection_body("connection.created", company_id=company,
                                              connection_id=connection, status="PendingAuth",
                                              generated=at(0)))
    response = await service.deliver(company_body("company.deleted", company_id=company,
                                                  generated=at(10)))
    assert response.status_code == 200
    company_json = (await service.get(f"/v1/companies/{company}")).json()
    assert company_json["deleted"] is True
    for connection in (first, second):
        assert (await connection_state(service, connection))["deleted"] is True
        assert (await history(service, connection))[-1]["toState"] == "Deleted"


async def test_legacy_status_changed_body_is_applied(service: Service) -> None:
    company, connection = new_id(), new_id()
    body = legacy_body(company_id=company, connection_id=connection, new_status="Linked",
                       old_status="PendingAuth")
    response = await service.deliver(body)
    assert response.status_code == 200
    assert response.json()["outcome"] == "processed"
    state = await connection_state(service, connection)
    assert (state["status"], state["platformKey"]) == ("Linked", "gbol")
    # Never seen before, mid-life: confirm it, and reconcile it with Codat.
    assert sorted(j["kind"] for j in await jobs(service)) == ["confirm_connection",
                                                              "reconcile_connection"]


async def test_a_legacy_body_older_than_the_newest_word_is_superseded(service: Service) -> None:
    company, connection = new_id(), new_id()
    for event_type, status, when in (("connection.connected", "Linked", 20),
                                     ("connection.disconnected", "Unlinked", 23)):
        await service.deliver(connection_body(event_type, company_id=company,
                                              connection_id=connection, status=status,
                                              generated=at(when)))
    # Svix created this legacy message at 5 s (its id says so), before both: it arrives late.
    late = legacy_body(company_id=company, connection_id=connection, new_status="Linked",
                       old_status="PendingAuth")
    assert (await service.deliver(late, msg_id=new_message_id(at(5)))).status_code == 200
    assert (await connection_state(service, connection))["status"] == "Unlinked"
    last = (await history(service, connection))[-1]
    assert (last["result"], last["toState"]) == ("superseded", "Linked")


async def test_type_key_instead_of_event_type_is_read(service: Service) -> None:
    connection = new_id()
    body = connection_body("connection.created", company_id=new_id(), connection_id=connection,
                           status="PendingAuth", generated=at(0), type_key="type")
    assert (await service.deliver(body)).json()["outcome"] == "processed"
    assert (await connection_state(service, connection))["status"] == "PendingAuth"


# --- order is not guaranteed -------------------------------------------------------------------

async def test_an_older_event_is_superseded_and_never_moves_backwards(service: Service) -> None:
    company, connection = new_id(), new_id()
    await service.deliver(connection_body("connection.connected", company_id=company,
                                          connection_id=connection, status="Linked",
                                          generated=at(10)))
    late = connection_body("connection.created", company_id=company, connection_id=connection,
                           status="PendingAuth", generated=at(1))
    response = await service.deliver(late)
    assert response.status_code == 200
    state = await connection_state(service, connection)
    assert state["status"] == "Linked"
    assert state["lastEventAt"] == "2026-11-01T12:00:10Z"
    last = (await history(service, connection))[-1]
    assert (last["fromState"], last["toState"], last["result"]) == \
        ("Linked", "PendingAuth", "superseded")


async def test_a_newest_word_that_skips_states_is_applied_and_queues_a_reconcile(
        service: Service) -> None:
    company, connection = new_id(), new_id()
    await service.deliver(connection_body("connection.created", company_id=company,
                                          connection_id=connection, status="PendingAuth",
                                          generated=at(0)))
    # PendingAuth -> Unlinked is not one step Codat makes: events were missed. Codat's newest
    # word wins all the same, and Codat is asked to confirm it.
    response = await service.deliver(connection_body(
        "connection.disconnected", company_id=company, connection_id=connection,
        status="Unlinked", generated=at(5)))
    assert response.status_code == 200
    assert (await connection_state(service, connection))["status"] == "Unlinked"
    last = (await history(service, connection))[-1]
    assert (last["result"], last["skipped"], last["toState"]) == ("applied", True, "Unlinked")
    assert "skipped states: PendingAuth -> Unlinked" in str(last["reason"])
    assert [(j["kind"], j["connection_id"]) for j in await jobs(service)] == \
        [("reconcile_connection", connection)]


async def test_an_unknown_connection_is_created_from_any_event(service: Service) -> None:
    company, connection = new_id(), new_id()
    response = await service.deliver(connection_body(
        "connection.disconnected", company_id=company, connection_id=connection,
        status="Deauthorized", generated=at(3)))
    assert response.status_code == 200
    state = await connection_state(service, connection)
    assert state["status"] == "Deauthorized"
    assert state["platformName"] == "QuickBooks Online"
    assert [j["kind"] for j in await jobs(service)] == ["reconcile_connection"]


# --- duplicates and conflicts ------------------------------------------------------------------

async def test_same_message_again_is_200_and_changes_nothing(service: Service) -> None:
    body = connection_body("connection.connected", company_id=new_id(), connection_id=new_id(),
                           status="Linked", generated=at(0))
    headers = sign(body)
    first = await service.client.post("/webhooks/codat", content=body, headers=headers)
    before = await service.counts()
    second = await service.client.post("/webhooks/codat", content=body, headers=headers)
    assert (first.status_code, second.status_code) == (200, 200)
    assert second.json() == {"outcome": "processed", "disposition": "duplicate"}
    assert await service.counts() == before


async def test_same_event_under_a_new_message_id_records_nothing_twice(service: Service) -> None:
    body = connection_body("connection.connected", company_id=new_id(), connection_id=new_id(),
                           status="Linked", generated=at(0))
    await service.deliver(body)
    before = await service.counts()
    await service.deliver(body)  # Codat's bulk replay may resend an event as a new message
    assert await service.counts() == {**before, "deliveries": 2}
    assert (before["connection_history"], before["outbox"]) == (1, 2)  # confirm + reconcile


async def test_same_id_with_another_body_is_409_recorded_and_changes_nothing(
        service: Service) -> None:
    company, connection = new_id(), new_id()
    body = connection_body("connection.created", company_id=company, connection_id=connection,
                           status="PendingAuth", generated=at(0))
    headers = sign(body)
    await service.client.post("/webhooks/codat", content=body, headers=headers)
    other = connection_body("connection.connected", company_id=company,
                            connection_id=connection, status="Linked", generated=at(1))
    response = await service.deliver(other, msg_id=headers["svix-id"])
    assert response.status_code == 409
    assert (await connection_state(service, connection))["status"] == "PendingAuth"
    [conflict] = await service.rows("SELECT message_id, body FROM delivery_conflicts")
    assert conflict["message_id"] == headers["svix-id"]
    assert bytes(conflict["body"]) == other
    delivery = (await service.get(f"/v1/deliveries/{headers['svix-id']}")).json()
    assert delivery["conflicts"] == 1
    assert await service.count("outbox") == 0


async def test_two_copies_at_the_same_instant_are_applied_once(service: Service) -> None:
    connection = new_id()
    body = connection_body("connection.connected", company_id=new_id(),
                           connection_id=connection, status="Linked", generated=at(0))
    headers = sign(body)
    responses = await asyncio.gather(*[
        service.client.post("/webhooks/codat", content=body, headers=headers) for _ in range(8)])
    assert [r.status_code for r in responses] == [200] * 8
    assert sorted(r.json()["disposition"] for r in responses) == ["duplicate"] * 7 + ["stored"]
    counts = await service.counts()
    assert (counts["deliveries"], counts["connection_history"], counts["outbox"]) == (1, 1, 2)


# --- authentic but unusable --------------------------------------------------------------------

@pytest.mark.parametrize(("body", "outcome", "error"), [
    (b"this is not json", "unparseable", "not JSON"),
    (b"[1, 2, 3]", "unparseable", "not a JSON object"),
    (b'{"id": "e1", "eventType": "connection.created"}', "unparseable", "shape"),
    (b'{"id": "e2", "eventType": "connection.created", "generatedDate": "2026-11-01T00:00:00Z",'
     b' "payload": {"referenceCompany": {"id": "c"}, "connection": {"id": "x", '
     b'"status": "Frobnicated"}}}', "unparseable", "unknown connection status 'Frobnicated'"),
    (b'{"id": "e3", "eventType": "invoices.sparkled", "generatedDate": "2026-11-01T00:00:00Z",'
     b' "payload": {}}', "ignored", "not one we act on"),
])
async def test_authentic_but_unusable_is_stored_and_acknowledged(
        service: Service, body: bytes, outcome: str, error: str) -> None:
    headers = sign(body)
    response = await service.client.post("/webhooks/codat", content=body, headers=headers)
    assert response.status_code == 200
    assert response.json()["outcome"] == outcome
    stored = (await service.get(f"/v1/deliveries/{headers['svix-id']}",
                                includeBody="true")).json()
    assert stored["outcome"] == outcome
    assert error in stored["error"]
    assert stored["body"]["text"] == body.decode()
    counts = await service.counts()
    assert counts == {**EMPTY, "deliveries": 1}


# --- failures --------------------------------------------------------------------------------




async def test_our_own_failure_rolls_back_keeps_the_delivery_and_answers_500(
        service: Service) -> None:
    company, connection = new_id(), new_id()
    await install_failure(service.db, connection)
    body = connection_body("connection.connected", company_id=company, connection_id=connection,
                           status="Linked", generated=at(0))
    headers = sign(body)
    response = await service.client.post("/webhooks/codat", content=body, headers=headers)
    assert response.status_code == 500
    counts = await service.counts()
    assert (counts["deliveries"], counts["connections"], counts["connection_history"],
            counts["outbox"], counts["companies"]) == (1, 0, 0, 0, 0)
    stored = (await service.get(f"/v1/deliveries/{headers['svix-id']}")).json()
    assert stored["outcome"] == "failed"
    assert "injected failure" in stored["error"]

    # Codat retries the same message: a failed delivery is processed again, not swallowed.
    await remove_failure(service.db)
    retry = await service.client.post("/webhooks/codat", content=body, headers=headers)
    assert retry.status_code == 200
    assert retry.json() == {"outcome": "processed", "disposition": "reprocessed"}
    assert (await connection_state(service, connection))["status"] == "Linked"
    stored = (await service.get(f"/v1/deliveries/{headers['svix-id']}")).json()
    assert (stored["outcome"], stored["error"], stored["attempts"]) == ("processed", None, 2)


async def test_one_failing_delivery_does_not_fail_the_others(service: Service) -> None:
    failing, fine = new_id(), [new_id() for _ in range(6)]
    await install_failure(service.db, failing)
    bodies = [connection_body("connection.created", company_id=new_id(), connection_id=c,
                              status="PendingAuth", generated=at(0)) for c in [failing, *fine]]
    try:
        responses = await asyncio.gather(*[service.deliver(b) for b in bodies])
    finally:
        await remove_failure(service.db)  # a PostgreSQL trigger outlives TRUNCATE
    assert [r.status_code for r in responses] == [500] + [200] * 6
    for connection in fine:
        assert (await connection_state(service, connection))["status"] == "PendingAuth"


# --- every published example -------------------------------------------------------------------

def _examples() -> list[str]:
    from tests.factories import EXAMPLES_DIR
    return sorted(p.name for p in EXAMPLES_DIR.glob("*.json")) if EXAMPLES_DIR.is_dir() else []


@pytest.mark.skipif(not _examples(), reason="../shared/codat/webhook-examples is absent")
async def test_every_published_example_is_stored_and_processed(service: Service) -> None:
    from tests.factories import EXAMPLES_DIR
    for name in _examples():
        body = (EXAMPLES_DIR / name).read_bytes()
        response = await service.deliver(body)
        assert response.status_code == 200, (name, response.text)
        assert response.json()["outcome"] == "processed", name


async def test_read_completed_records_each_data_type(service: Service) -> None:
    company, connection = new_id(), new_id()
    body = read_completed_body(company_id=company, connection_id=connection,
                               statuses={"bills": "Complete", "suppliers": "FetchError"},
                               generated=at(0))
    assert (await service.deliver(body)).status_code == 200
    data_types = (await service.get(f"/v1/companies/{company}")).json()["dataTypes"]
    assert {d["dataType"]: d["status"] for d in data_types} == \
        {"bills": "Complete", "suppliers": "FetchError"}


# --- secret rotation, header twins -------------------------------------------------------------

async def test_every_configured_secret_verifies_and_the_one_used_is_recorded(
        service: Service) -> None:
    body = connection_body("connection.created", company_id=new_id(), connection_id=new_id(),
                           status="PendingAuth", generated=at(0))
    first = await service.deliver(body, secret=SECRET_2)
    assert first.status_code == 200
    second_body = body.replace(b"Toft", b"Tuft")
    assert (await service.deliver(second_body)).status_code == 200
    secrets = {r["secret_id"] for r in await service.rows("SELECT secret_id FROM deliveries")}
    assert len(secrets) == 2


async def test_webhook_prefixed_headers_are_accepted(service: Service) -> None:
    body = connection_body("connection.created", company_id=new_id(), connection_id=new_id(),
                           status="PendingAuth", generated=at(0))
    response = await service.deliver(body, prefix="webhook")
    assert response.status_code == 200
    [row] = await service.rows("SELECT headers FROM deliveries")
    headers = orjson.loads(row["headers"])
    assert "webhook-id" in headers
    assert not any("signature" in name for name in headers)  # never the signature


# --- the database cannot be written: 503, never 2xx ----------------------------------------------

async def test_sqlite_locked_by_another_process_is_503_with_retry_after(
        tmp_path: Path, sqlite_template: Path) -> None:
    path = tmp_path / "locked.db"
    shutil.copy(sqlite_template, path)
    settings = make_settings(f"sqlite:///{path}", sqlite_busy_timeout_ms=200)
    _app, lifespan, client = await start_service(settings)
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")  # e.g. an on-call command holding the write lock
        body = connection_body("connection.created", company_id=new_id(),
                               connection_id=new_id(), status="PendingAuth", generated=at(0))
        headers = sign(body)
        response = await client.post("/webhooks/codat", content=body, headers=headers)
        assert response.status_code == 503
        assert response.headers["retry-after"] == str(settings.db_retry_after_seconds)
        holder.execute("ROLLBACK")
        # Codat retries: now it is stored and applied, once.
        retry = await client.post("/webhooks/codat", content=body, headers=headers)
        assert (retry.status_code, retry.json()["disposition"]) == (200, "stored")
    finally:
        holder.close()
        await client.aclose()
        await lifespan.__aexit__(None, None, None)


async def test_postgres_unreachable_is_503_and_not_ready() -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"  # nothing listens there
    _app, lifespan, client = await start_service(make_settings(url))
    try:
        body = connection_body("connection.created", company_id=new_id(),
                               connection_id=new_id(), status="PendingAuth", generated=at(0))
        response = await client.post("/webhooks/codat", content=body, headers=sign(body))
        assert response.status_code == 503
        assert "retry-after" in response.headers
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert "unreachable" in ready.json()["reason"]
        assert (await client.get("/healthz")).status_code == 200  # alive, just not ready
    finally:
        await client.aclose()
        await lifespan.__aexit__(None, None, None)
