"""What the receiver last saw of connections: a bounded map, the oldest entry dropped first."""

from __future__ import annotations

import pytest

from schemas.commands import ConnectionSnapshot
from schemas.state import State
from service.known import KnownConnections
from tests.factories import at


def _seen(connection_id: str, state: State = State.LINKED) -> ConnectionSnapshot:
    return ConnectionSnapshot(connection_id, "company", exists=True, state=state,
                              last_event_at=at(1))


def test_a_connection_never_seen_is_guessed_absent() -> None:
    snapshot, version = KnownConnections().guess("c1", "company-1")
    assert snapshot == ConnectionSnapshot("c1", "company-1", exists=False, state=None,
                                          last_event_at=None)
    assert version is None


def test_the_last_word_is_what_is_guessed() -> None:
    known = KnownConnections()
    known.note(_seen("c1", State.PENDING_AUTH), 1)
    known.note(_seen("c1", State.LINKED), 2)
    assert known.guess("c1", "company") == (_seen("c1", State.LINKED), 2)
    known.forget("c1")
    assert known.guess("c1", "company")[1] is None
    known.forget("c1")  # forgetting what is not there is fine


def test_the_entry_noted_longest_ago_is_dropped_first() -> None:
    known = KnownConnections(size=2)
    known.note(_seen("c1"), 1)
    known.note(_seen("c2"), 1)
    known.note(_seen("c1"), 2)  # noted again: now the newest
    known.note(_seen("c3"), 1)
    assert len(known) == 2
    assert known.guess("c2", "company")[1] is None
    assert known.guess("c1", "company")[1] == 2
    assert known.guess("c3", "company")[1] == 1


def test_a_size_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        KnownConnections(size=0)
