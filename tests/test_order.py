"""Order keys (schemas/order.py): instants at full precision, ranks, tie-breaks, and the time
inside a svix message id."""

from __future__ import annotations

import struct
from datetime import UTC, datetime, timedelta

import pytest
from ksuid import KsuidMs

from schemas.order import (
    MESSAGE_AGE_LIMIT,
    instant_in,
    later_in_time,
    message_instant,
    new_message_id,
    order_key,
    parse_instant,
)
from schemas.state import State


@pytest.mark.parametrize(("text", "instant"), [
    ("2022-10-27T10:22:43.6464237Z", "2022-10-27T10:22:43.6464237Z"),  # Codat's 7 digits
    ("2022-10-27T10:22:43.646423Z", "2022-10-27T10:22:43.6464230Z"),
    ("2024-08-08T17:10:34.015Z", "2024-08-08T17:10:34.0150000Z"),
    ("2022-10-27T09:53:29Z", "2022-10-27T09:53:29.0000000Z"),
    ("2021-11-15T01:00:00", "2021-11-15T01:00:00.0000000Z"),  # no zone: UTC
    ("2022-10-27T12:22:43.6464237+02:00", "2022-10-27T10:22:43.6464237Z"),
    ("2022-10-27T00:30:00.1234567-01:45", "2022-10-27T02:15:00.1234567Z"),
    ("2022-10-27T10:22:43.123456789Z", "2022-10-27T10:22:43.1234567Z"),  # beyond 100 ns: cut
    ("2021-11-15", "2021-11-15T00:00:00.0000000Z"),  # a date alone
])
def test_instants_keep_every_digit_codat_sends(text: str, instant: str) -> None:
    parsed, moment = parse_instant(text)
    assert parsed == instant
    assert moment.tzinfo is UTC
    assert moment == datetime.fromisoformat(instant[:26] + "+00:00")  # to the microsecond


def test_two_instants_100_ns_apart_do_not_tie() -> None:
    first, _ = parse_instant("2026-11-01T12:00:00.1234567Z")
    second, _ = parse_instant("2026-11-01T12:00:00.1234568Z")
    assert first < second


@pytest.mark.parametrize("text", [
    "9999-12-31T23:59:59-23:59",  # year 10000 in UTC
    "0001-01-01T00:00:00+01:00",  # before year 1 in UTC
    "2026-13-01T00:00:00Z",
    "2026-02-30T00:00:00Z",
    "not a date",
    "",
])
def test_a_date_time_utc_cannot_hold_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        parse_instant(text)


def test_keys_order_by_rank_then_instant_then_tiebreak() -> None:
    instant = "2026-11-01T12:00:00.0000000Z"
    later = "2026-11-01T12:00:00.0000001Z"
    pending_late = order_key(State.PENDING_AUTH, "2099-01-01T00:00:00.0000000Z", "e")
    linked = order_key(State.LINKED, instant, "e")
    assert pending_late < linked  # nothing returns to PendingAuth
    assert order_key(State.DEAUTHORIZED, instant, "e") == order_key(State.LINKED, instant, "e")[
        :1] + linked[1:]  # Linked, Unlinked, Deauthorized share a rank
    assert linked < order_key(State.UNLINKED, later, "a")
    assert order_key(State.LINKED, instant, "a") < order_key(State.LINKED, instant, "b")
    deleted_early = order_key(State.DELETED, "2000-01-01T00:00:00.0000000Z", "e")
    assert linked < deleted_early  # nothing leaves Deleted
    assert later_in_time(pending_late, linked) and not later_in_time(linked, pending_late)
    assert instant_in(linked) == instant


# --- svix message ids ---------------------------------------------------------------------------

NOW = datetime(2026, 11, 29, 12, 0, 0, 123456, tzinfo=UTC)


def test_a_minted_id_reads_back_to_its_creation_time_in_4_ms_units() -> None:
    message_id = new_message_id(NOW)
    assert message_id.startswith("msg_") and len(message_id) == 31
    instant = message_instant(message_id, int(NOW.timestamp()))
    assert instant == "2026-11-29T12:00:00.1200000Z"  # 123 ms -> 120 ms (4 ms units)


def test_ids_of_one_4ms_slot_share_their_time() -> None:
    first = message_instant(new_message_id(NOW), int(NOW.timestamp()))
    second = message_instant(new_message_id(NOW + timedelta(microseconds=500)),
                             int(NOW.timestamp()))
    assert first == second


@pytest.mark.parametrize("message_id", [
    "msg_p5jXN8AQM9LWM0D4loKWxJek",  # Codat's and Svix's documented example: 24 characters
    "msg_" + "z" * 27,  # above 2**160
    "msg_" + "0" * 26 + "!",
    "msg_" + "a" * 28,
    "evt_2Bp1Ws4yE5aTKhiWe4x1yqTbFaP",  # not a message id
    "",
])
def test_an_id_that_does_not_parse_gives_no_time(message_id: str) -> None:
    assert message_instant(message_id, int(NOW.timestamp())) is None


def test_a_quarter_millisecond_byte_above_249_gives_no_time() -> None:
    raw = struct.pack(">LB", int(NOW.timestamp()) - 1_400_000_000, 250) + bytes(15)
    message_id = "msg_" + str(KsuidMs.from_bytes(raw))
    assert message_instant(message_id, int(NOW.timestamp())) is None


def test_an_id_whose_time_the_attempt_makes_implausible_gives_no_time() -> None:
    attempt = int(NOW.timestamp())
    assert message_instant(new_message_id(NOW + timedelta(minutes=6)), attempt) is None
    assert message_instant(new_message_id(NOW - MESSAGE_AGE_LIMIT - timedelta(days=1)),
                           attempt) is None
    assert message_instant(new_message_id(NOW - timedelta(days=30)), attempt) is not None
