"""The connection state table (schemas/state.py) against CONTRACT sections 2.2 and 6.4."""

from __future__ import annotations

import itertools

import pytest

from schemas.state import (
    ALLOWED_MOVES,
    AUTHORITATIVE_MOVES,
    IllegalTransition,
    Source,
    State,
    transition,
)

P, L, U, D, X = (State.PENDING_AUTH, State.LINKED, State.UNLINKED, State.DEAUTHORIZED,
                 State.DELETED)
CURRENTS: list[State | None] = [None, *State]
PAIRS = list(itertools.product(CURRENTS, State))


def _id(pair: tuple[State | None, State]) -> str:
    current, target = pair
    return f"{current or 'unknown'}->{target}"


# The table written out from the contract, independently of ALLOWED_MOVES: an unknown connection
# may start anywhere (Codat is the source of truth); PendingAuth only links; Linked may be
# unlinked or deauthorized; both come back only to Linked; Deleted is terminal; every state may
# repeat itself and every live state may be deleted.
CONTRACT_TABLE: dict[State | None, set[State]] = {
    None: {P, L, U, D, X},
    P: {P, L, X},
    L: {L, U, D, X},
    U: {U, L, X},
    D: {D, L, X},
    X: {X},
}


def test_the_table_covers_every_state_and_only_states() -> None:
    assert set(ALLOWED_MOVES) == set(CURRENTS)
    assert set(AUTHORITATIVE_MOVES) == set(CURRENTS)
    for targets in [*ALLOWED_MOVES.values(), *AUTHORITATIVE_MOVES.values()]:
        assert targets <= set(State)


def test_the_table_is_the_one_the_contract_describes() -> None:
    assert {k: set(v) for k, v in ALLOWED_MOVES.items()} == CONTRACT_TABLE


@pytest.mark.parametrize("source", [Source.WEBHOOK, Source.API])
@pytest.mark.parametrize("pair", PAIRS, ids=[_id(p) for p in PAIRS])
def test_transition_follows_the_allowed_moves(pair: tuple[State | None, State],
                                              source: Source) -> None:
    current, target = pair
    if target in ALLOWED_MOVES[current]:
        assert transition(current, target, source=source) is target
        return
    with pytest.raises(IllegalTransition) as caught:
        transition(current, target, source=source)
    assert caught.value.current is current
    assert caught.value.target is target
    assert str(current) in str(caught.value)
    assert str(target) in str(caught.value)


def test_webhook_is_the_default_source() -> None:
    with pytest.raises(IllegalTransition):
        transition(P, U)
    assert transition(U, P, source=Source.RECONCILE) is P  # only when asked for


@pytest.mark.parametrize("pair", PAIRS, ids=[_id(p) for p in PAIRS])
def test_a_reconcile_may_move_anywhere_except_out_of_deleted(
        pair: tuple[State | None, State]) -> None:
    current, target = pair
    if current is X and target is not X:
        with pytest.raises(IllegalTransition) as caught:
            transition(current, target, source=Source.RECONCILE)
        assert "Deleted" in str(caught.value) and str(target) in str(caught.value)
    else:
        assert transition(current, target, source=Source.RECONCILE) is target


@pytest.mark.parametrize(("current", "target"), [
    (None, P),  # connection.created: none -> PendingAuth
    (P, L),  # connection.connected
    (L, U),  # connection.disconnected, we unlinked it
    (L, D),  # connection.disconnected, access revoked
    (U, L),  # connection.reconnected
    (D, L),  # connection.reconnected
    (P, P),  # connection.failed: no status change
    (L, X), (P, X), (U, X), (D, X),  # connection.deleted
    (X, X),  # deleted again: harmless
    (None, L), (None, D), (None, X),  # first heard of mid-life
])
def test_contract_moves_are_allowed(current: State | None, target: State) -> None:
    assert transition(current, target) is target


@pytest.mark.parametrize(("current", "target"), [
    (P, U), (P, D),  # only Linked connections can be unlinked or deauthorized
    (D, U),  # "Only Linked data connections can be unlinked"
    (U, D),
    (L, P), (U, P), (D, P),  # never back to PendingAuth
    (X, P), (X, L), (X, U), (X, D),  # deletion is irreversible
])
def test_moves_the_contract_rules_out_are_rejected(current: State, target: State) -> None:
    with pytest.raises(IllegalTransition, match=f"from {current} to {target}"):
        transition(current, target)


def test_an_unknown_state_is_named_as_unknown_in_the_message() -> None:
    assert str(IllegalTransition(None, L)) == "a connection cannot move from unknown to Linked"


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
