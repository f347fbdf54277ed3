"""Why a company is not ready for Bill Pay, in words (a pure function of the company's JSON),
and the timeline's cursor."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from service.queries import BadQuery
from service.story import Entry, decode_cursor, encode_cursor, why_not_ready


def company(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "billPayReady": False, "billPayCheckedAt": "2026-11-25T10:00:00Z",
        "billPayDetail": {"mode": "async", "missing": [], "failed": []}, "dataTypes": [],
        "dataConnections": [{"id": "c1", "status": "Linked", "deleted": False}]}
    return base | overrides


def test_a_ready_company_has_no_reason() -> None:
    assert why_not_ready(company(billPayReady=True)) == []


def test_each_missing_data_type_says_its_status_and_connection() -> None:
    reasons = why_not_ready(company(
        billPayDetail={"mode": "async", "missing": ["bills", "suppliers"], "failed": ["bills"]},
        dataTypes=[{"dataType": "bills", "status": "FetchError", "connectionId": "c1",
                    "lastReadAt": "2026-11-25T09:00:00Z"}]))
    assert reasons == ["bills: FetchError (connection c1, last read 2026-11-25T09:00:00Z)",
                       "suppliers: never read"]


def test_no_linked_connection_names_the_connections_and_their_states() -> None:
    reasons = why_not_ready(company(
        billPayDetail={"mode": "async", "missing": ["a Linked connection"]},
        dataConnections=[{"id": "c1", "status": "Deauthorized", "deleted": False},
                         {"id": "c2", "status": "Linked", "deleted": True}]))
    assert reasons == ["no Linked connection (connections: c1 is Deauthorized)"]


def test_sync_mode_and_a_company_never_checked() -> None:
    assert why_not_ready(company(billPayDetail={"mode": "sync", "missing": ["bankAccounts"]})) \
        == ["bankAccounts: none Bill Pay can pay from (checked at Codat)"]
    assert why_not_ready(company(billPayCheckedAt=None, billPayDetail=None)) == \
        ["readiness not checked yet (the confirm job has not run)"]


def test_the_timeline_cursor_round_trips_and_refuses_junk() -> None:
    entry = Entry(datetime(2026, 11, 25, 10, 0, 1, 5, tzinfo=UTC), "job", "j1", {})
    assert decode_cursor(encode_cursor(entry)) == entry.order
    for junk in ("x", "bm90IGpzb24", encode_cursor(entry)[:-3]):
        with pytest.raises(BadQuery):
            decode_cursor(junk)
