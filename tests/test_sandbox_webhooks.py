"""The Link page, the SMB controls and signed webhook deliveries to a real receiver
(uvicorn on 127.0.0.1, verifying every body with svix): retries, timeouts, pause/resume,
duplicates and resends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.test_sandbox_fixtures import (
    BILL_PAY_TYPES,
    FAST_RETRIES,
    Harness,
    Receiver,
    eventually,
    make_config,
    running,
    serving,
)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with serving(Receiver()) as started:
        yield started


@pytest.fixture
async def sb(receiver: Receiver) -> AsyncIterator[Harness]:
    async with running(make_config(receiver.url)) as harness:
        yield harness


async def message(sb: Harness, event_type: str) -> dict[str, Any]:
    """The sandbox's record of the last message of ``event_type``."""
    found = [m for m in await sb.messages() if m["eventType"] == event_type]
    assert found, f"no {event_type} message"
    return found[-1]


async def settled(sb: Harness, count: int) -> list[dict[str, Any]]:
    """Wait until ``count`` messages exist and none is still being delivered."""

    async def done() -> list[dict[str, Any]] | None:
        messages = await sb.messages()
        if len(messages) == count and all(m["state"] != "scheduled" for m in messages):
            return messages
        return None

    result: list[dict[str, Any]] = await eventually(done)
    return result


# --- the Link page ------------------------------------------------------------------------

async def test_the_link_page_renders_with_authorize_and_decline_buttons(sb: Harness) -> None:
    company = await sb.create_company("Toft stores")
    connection = await sb.create_connection(company["id"])
    page = await sb.client.get(connection["linkUrl"])
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "Connect Toft stores to QuickBooks Online" in page.text
    base = f"/link/companies/{company['id']}/connections/{connection['id']}"
    assert f'action="{base}/authorize"' in page.text
    assert f'action="{base}/decline"' in page.text
    redirect = await sb.client.get(company["redirect"])
    assert redirect.status_code == 200 and connection["linkUrl"] in redirect.text
    missing = await sb.client.get(f"/link/companies/{company['id']}/connections/nope/start")
    assert missing.status_code == 404


async def test_authorizing_links_then_delivers_connected_and_the_initial_read(
        sb: Harness, receiver: Receiver) -> None:
    company = await sb.create_company("Toft stores", tags={"uid": "c-1"})
    connection = await sb.create_connection(company["id"])
    action = connection["linkUrl"].removesuffix("/start") + "/authorize"
    result = await sb.client.post(action, data={"choice": "authorize"})
    assert result.status_code == 200 and "Connected" in result.text
    now = (await sb.codat(
        "GET", f"/companies/{company['id']}/connections/{connection['id']}")).json()
    assert now["status"] == "Linked" and now["lastSync"]

    await eventually(lambda: receiver.first("read.completed.initial"))
    events = receiver.events()  # deliveries run concurrently, as Codat's do: no total order
    assert sorted(events) == ["company.created", "connection.connected", "connection.created",
                              "read.completed.initial"]
    assert events.index("connection.connected") < events.index("read.completed.initial")
    assert all(d.verified for d in receiver.deliveries)
    connected = receiver.first("connection.connected")
    assert connected is not None
    assert connected.headers["content-type"] == "application/json"
    assert connected.message_id == (await message(sb, "connection.connected"))["id"]
    assert connected.message_id.startswith("msg_")
    payload = connected.json["payload"]
    assert payload["connection"]["id"] == connection["id"]
    assert payload["connection"]["status"] == "Linked"
    assert payload["referenceCompany"]["tags"] == {"uid": "c-1"}
    read = receiver.first("read.completed.initial")
    assert read is not None
    types = read.json["payload"]["dataTypes"]
    assert {t["dataType"] for t in types} == BILL_PAY_TYPES
    assert {(t["connectionId"], t["status"]) for t in types} == {(connection["id"], "Complete")}
    assert read.json["generatedDate"] >= connected.json["generatedDate"]


async def test_authorizing_a_linked_connection_again_is_harmless(sb: Harness) -> None:
    company_id, connection_id = await sb.linked()
    before = await sb.event_types()
    again = await sb.smb("authorize", company_id, connection_id)
    assert again.status_code == 200
    assert again.json()["event"] is None
    page = await sb.client.post(f"/link/companies/{company_id}/connections/{connection_id}"
                                "/authorize")
    assert page.status_code == 200
    assert await sb.event_types() == before


async def test_declining_sends_connection_failed_and_keeps_pending_auth(
        sb: Harness, receiver: Receiver) -> None:
    company = await sb.create_company()
    connection = await sb.create_connection(company["id"])
    page = await sb.client.post(connection["linkUrl"].removesuffix("/start") + "/decline")
    assert page.status_code == 200 and "declined" in page.text
    failed = await eventually(lambda: receiver.first("connection.failed"))
    body = failed.json["payload"]["connection"]
    assert body["status"] == "PendingAuth"
    [error] = body["dataConnectionErrors"]
    assert (error["statusCode"], error["statusText"], error["errorMessage"],
            error["status"]) == ("403", "User cancelled linking", "User cancelled", "Active")
    current = (await sb.codat(
        "GET", f"/companies/{company['id']}/connections/{connection['id']}")).json()
    assert current["status"] == "PendingAuth"
    linked = await sb.smb("authorize", company["id"], connection["id"])
    assert linked.json()["event"] == "connection.connected"
    assert linked.json()["connection"]["dataConnectionErrors"][0]["status"] == "Resolved"
    refused = await sb.smb("decline", company["id"], connection["id"])
    assert refused.status_code == 409


async def test_deauthorizing_then_relinking(sb: Harness, receiver: Receiver) -> None:
    company_id, connection_id = await sb.linked()
    answer = await sb.smb("deauthorize", company_id, connection_id)
    assert answer.status_code == 200
    assert answer.json()["event"] == "connection.disconnected"
    assert answer.json()["connection"]["status"] == "Deauthorized"
    disconnected = await eventually(lambda: receiver.first("connection.disconnected"))
    body = disconnected.json["payload"]["connection"]
    assert body["status"] == "Deauthorized"
    [error] = body["dataConnectionErrors"]
    assert error["statusCode"] == "401"
    assert error["errorMessage"] == "The integration de-authorized access to the connection."
    assert (await sb.smb("deauthorize", company_id, connection_id)).status_code == 409

    relinked = await sb.smb("authorize", company_id, connection_id)
    assert relinked.json()["event"] == "connection.reconnected"
    await eventually(lambda: receiver.first("read.completed"))
    assert sorted(receiver.events()[-3:-1]) == ["connection.disconnected",
                                                "connection.reconnected"]
    assert receiver.events()[-1] == "read.completed"
    assert receiver.events().count("read.completed.initial") == 1


async def test_an_unlinked_connection_can_be_relinked(sb: Harness, receiver: Receiver) -> None:
    company_id, connection_id = await sb.linked()
    await sb.codat("PATCH", f"/companies/{company_id}/connections/{connection_id}",
                   json={"status": "Unlinked"})
    relinked = await sb.smb("authorize", company_id, connection_id)
    assert relinked.json()["connection"]["status"] == "Linked"
    reconnected = await eventually(lambda: receiver.first("connection.reconnected"))
    assert reconnected.json["payload"]["connection"]["status"] == "Linked"


async def test_controls_answer_404_for_unknown_connections(sb: Harness) -> None:
    company = await sb.create_company()
    for action in ("authorize", "decline", "deauthorize"):
        assert (await sb.smb(action, company["id"], "nope")).status_code == 404


# --- retries ------------------------------------------------------------------------------

async def test_failed_attempts_are_retried_with_the_same_id_and_fresh_signatures(
        sb: Harness, receiver: Receiver) -> None:
    receiver.fail_next = 2
    await sb.create_company()
    [record] = await settled(sb, 1)
    assert record["state"] == "delivered"
    assert [a["statusCode"] for a in record["attempts"]] == [500, 500, 204]
    assert [a["trigger"] for a in record["attempts"]] == ["first", "retry", "retry"]
    assert len(receiver.deliveries) == 3
    assert {d.message_id for d in receiver.deliveries} == {record["id"]}
    assert all(d.verified for d in receiver.deliveries)
    assert len({d.body for d in receiver.deliveries}) == 1


async def test_a_message_fails_when_the_schedule_runs_out(sb: Harness,
                                                          receiver: Receiver) -> None:
    receiver.fail_next = 100
    await sb.create_company()
    [record] = await settled(sb, 1)
    assert record["state"] == "failed"
    assert len(record["attempts"]) == len(FAST_RETRIES)
    assert all(not a["ok"] for a in record["attempts"])


async def test_a_slow_answer_counts_as_failed_and_is_retried(receiver: Receiver) -> None:
    receiver.slow_next, receiver.slow_seconds = 1, 0.5
    async with running(make_config(receiver.url, delivery_timeout=0.2)) as sb:
        await sb.create_company()
        [record] = await settled(sb, 1)
    first, second = record["attempts"]
    assert first["statusCode"] is None and "no answer within 0.2s" in first["error"]
    assert second["statusCode"] == 204
    assert record["state"] == "delivered"


async def test_an_unreachable_receiver_is_recorded_as_errors() -> None:
    async with running(make_config("http://127.0.0.1:9/unreachable",
                                   retry_schedule=(0, 0.01))) as sb:
        await sb.create_company()
        [record] = await settled(sb, 1)
    assert record["state"] == "failed"
    assert all(a["error"] and a["statusCode"] is None for a in record["attempts"])


async def test_without_a_webhook_url_messages_are_recorded_but_not_sent() -> None:
    async with running(make_config(None)) as sb:
        await sb.create_company()
        [record] = await sb.messages()
    assert (record["state"], record["attempts"]) == ("skipped", [])


# --- pause, resume, duplicates, resend ----------------------------------------------------

async def test_pause_then_resume_in_reverse_with_duplicates(sb: Harness,
                                                            receiver: Receiver) -> None:
    assert (await sb.client.post("/_sandbox/webhooks/pause")).json() == {"paused": True}
    company = await sb.create_company()
    connection = await sb.create_connection(company["id"])
    await sb.smb("decline", company["id"], connection["id"])
    held = (await sb.client.get("/_sandbox/webhooks")).json()
    assert held["paused"] is True and len(held["held"]) == 3
    assert {m["state"] for m in held["messages"]} == {"held"}
    assert receiver.deliveries == []

    resumed = await sb.control("/webhooks/resume", {"order": "reverse", "duplicates": 1})
    order = resumed.json()["messages"]
    assert order == held["held"][::-1]
    await eventually(lambda: len(receiver.deliveries) == 6)
    assert [d.message_id for d in receiver.deliveries] == order + order
    assert receiver.events()[:3] == ["connection.failed", "connection.created",
                                     "company.created"]
    assert all(d.verified for d in receiver.deliveries)
    messages = await settled(sb, 3)
    assert {m["state"] for m in messages} == {"delivered"}
    assert all([a["trigger"] for a in m["attempts"]] == ["first", "duplicate"]
               for m in messages)


async def test_resume_shuffle_sends_each_held_message_once(sb: Harness,
                                                           receiver: Receiver) -> None:
    await sb.client.post("/_sandbox/webhooks/pause")
    for i in range(4):
        await sb.create_company(f"Company {i}")
    resumed = await sb.control("/webhooks/resume", {"order": "shuffle"})
    order = resumed.json()["messages"]
    await eventually(lambda: len(receiver.deliveries) == 4)
    assert [d.message_id for d in receiver.deliveries] == order
    assert sorted(order) == sorted(m["id"] for m in await sb.messages())


async def test_resume_refuses_a_bad_order(sb: Harness) -> None:
    for body in ({"order": "lifo"}, {"duplicates": -1}, [1]):
        assert (await sb.control("/webhooks/resume", body)).status_code == 400


async def test_a_failed_first_attempt_after_resume_keeps_retrying(sb: Harness,
                                                                  receiver: Receiver) -> None:
    await sb.client.post("/_sandbox/webhooks/pause")
    await sb.create_company()
    receiver.fail_next = 1
    await sb.control("/webhooks/resume", {"order": "fifo"})
    [record] = await settled(sb, 1)
    assert [a["statusCode"] for a in record["attempts"]] == [500, 204]
    assert record["state"] == "delivered"


async def test_resend_delivers_a_sent_message_again_with_the_same_id(
        sb: Harness, receiver: Receiver) -> None:
    await sb.create_company()
    [record] = await settled(sb, 1)
    answer = await sb.client.post(f"/_sandbox/webhooks/{record['id']}/resend")
    assert answer.status_code == 202
    await eventually(lambda: len(receiver.deliveries) == 2)
    first, again = receiver.deliveries
    assert first.message_id == again.message_id == record["id"]
    assert first.body == again.body
    assert again.verified
    assert (await sb.client.post("/_sandbox/webhooks/msg_nope/resend")).status_code == 404


async def test_a_held_message_cannot_be_resent(sb: Harness) -> None:
    await sb.client.post("/_sandbox/webhooks/pause")
    await sb.create_company()
    [record] = await sb.messages()
    answer = await sb.client.post(f"/_sandbox/webhooks/{record['id']}/resend")
    assert answer.status_code == 409
