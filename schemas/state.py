"""A connection's states, and the table that classifies its moves.

A connection's *state* is its Codat status, or ``Deleted`` once Codat deleted it (deletion is
terminal: Codat says it is irreversible). ``None`` is the state of a connection we have heard
nothing of.

The table does not decide whether a move happens: Codat's newest word always does (see
:mod:`schemas.order` and :func:`handlers.decide`). It says whether a move is one Codat's lifecycle
makes in one step (*expected*) or one that skips states, which means we missed events: the move
is applied all the same, and Codat is asked to confirm it.
"""

from __future__ import annotations

from enum import StrEnum


class ConnectionStatus(StrEnum):
    """Codat's ``Connection.status`` values (exact spelling, contract section 2.2)."""

    PENDING_AUTH = "PendingAuth"  # created, the SMB has not finished authorizing
    LINKED = "Linked"  # reads and writes work
    UNLINKED = "Unlinked"  # we severed it (unlink endpoint or Portal); can be re-linked
    DEAUTHORIZED = "Deauthorized"  # access revoked or token expired; can be re-linked


class State(StrEnum):
    """A connection's lifecycle state: a Codat status, or Deleted."""

    PENDING_AUTH = "PendingAuth"
    LINKED = "Linked"
    UNLINKED = "Unlinked"
    DEAUTHORIZED = "Deauthorized"
    DELETED = "Deleted"

    @classmethod
    def of(cls, status: str | None, *, deleted: bool) -> State | None:
        """The state of a stored connection (``None`` for a connection with no known status)."""
        if deleted:
            return cls.DELETED
        return None if status is None else cls(status)


class Source(StrEnum):
    """Where a word about a connection came from, as recorded in the history."""

    WEBHOOK = "webhook"
    API = "api"  # Codat's answer to an onboarding call
    RECONCILE = "reconcile"  # Codat's answer to a follow-up job asking for the connection


class MoveResult(StrEnum):
    """What happened to a word, as recorded in the history."""

    APPLIED = "applied"  # the newest word: the connection is in its state now
    SUPERSEDED = "superseded"  # older than the newest word seen: changes nothing
    # Never applied, whatever its time: a PendingAuth word after anything else was heard, any
    # word after Deleted, a legacy word with nothing to order it by. Codat is asked.
    REJECTED = "rejected"


P, L, U, D, X = (State.PENDING_AUTH, State.LINKED, State.UNLINKED, State.DEAUTHORIZED,
                 State.DELETED)

# The moves Codat's lifecycle makes in one step (contract section 6.4). Same-state moves are
# expected: connection.failed while PendingAuth, a repeated reconnected. A connection first heard
# of through anything but its creation (or its deletion, after which there is nothing to ask)
# skipped its start.
EXPECTED_MOVES: dict[State | None, frozenset[State]] = {
    None: frozenset({P, X}),
    P: frozenset({P, L, X}),
    L: frozenset({L, U, D, X}),
    U: frozenset({U, L, X}),
    D: frozenset({D, L, X}),
    X: frozenset({X}),
}


def skips_states(current: State | None, target: State) -> bool:
    """True when a move from ``current`` to ``target`` is not one step of Codat's lifecycle."""
    return target not in EXPECTED_MOVES[current]
