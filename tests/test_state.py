"""The connection state table (schemas/state.py) against CONTRACT sections 2.2 and 6.4: which
moves Codat's lifecycle makes in one step, and which skip states."""

from __future__ import annotations

import itertools

import pytest

from schemas.state import EXPECTED_MOVES, State, skips_states

P, L, U, D, X = (State.PENDING_AUTH, State.LINKED, State.UNLINKED, State.DEAUTHORIZED,
                 State.DELETED)
CURRENTS: list[State | None] = [None, *State]
PAIRS = list(itertools.product(CURRENTS, State))

# The lifecycle written out from the contract, independently of EXPECTED_MOVES: a connection
# starts PendingAuth (connection.created); PendingAuth only links; Linked may be unlinked or
# deauthorized; both come back only to Linked; every state may repeat itself (connection.failed,
# a repeated event) and every state may be deleted; Deleted is the end.
CONTRACT_TABLE: dict[State | None, set[State]] = {
    None: {P, X},
    P: {P, L, X},
    L: {L, U, D, X},
    U: {U, L, X},
    D: {D, L, X},
    X: {X},
}


def test_the_table_covers_every_state_and_only_states() -> None:
    assert set(EXPECTED_MOVES) == set(CURRENTS)
    for targets in EXPECTED_MOVES.values():
        assert targets <= set(State)


def test_the_table_is_the_one_the_contract_describes() -> None:
    assert {k: set(v) for k, v in EXPECTED_MOVES.items()} == CONTRACT_TABLE


@pytest.mark.parametrize("pair", PAIRS, ids=[f"{c or 'unknown'}->{t}" for c, t in PAIRS])
def test_a_move_skips_states_exactly_when_the_table_does_not_list_it(
        pair: tuple[State | None, State]) -> None:
    current, target = pair
    assert skips_states(current, target) is (target not in CONTRACT_TABLE[current])


@pytest.mark.parametrize(("current", "target"), [
    (P, U), (P, D),  # only Linked connections are unlinked or deauthorized: connected missed
    (D, U), (U, D),  # each comes back to Linked first
    (L, P), (U, P), (D, P),  # never back to PendingAuth (decide rejects these words)
    (X, P), (X, L), (X, U), (X, D),  # nothing leaves Deleted (decide rejects these words)
    (None, L), (None, U), (None, D),  # first heard of mid-life: its creation was missed
])
def test_moves_that_skip_states(current: State | None, target: State) -> None:
    assert skips_states(current, target)


@pytest.mark.parametrize(("status", "deleted", "expected"), [
    (None, False, None), ("Linked", False, L), ("PendingAuth", False, P),
    ("Linked", True, X), (None, True, X),
])
def test_state_of_a_stored_connection(status: str | None, deleted: bool,
                                      expected: State | None) -> None:
    assert State.of(status, deleted=deleted) is expected


def test_state_of_an_unknown_status_raises() -> None:
    with pytest.raises(ValueError, match="Frobnicated"):
        State.of("Frobnicated", deleted=False)
