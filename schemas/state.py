"""The connection state machine: statuses, the allowed moves, and the function that applies them.

A connection's *state* is its Codat status, or ``Deleted`` once Codat deleted it (deletion is
terminal: Codat says it is irreversible). ``None`` is the state of a connection we have never
seen, from which any move is allowed because Codat is the source of truth.
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
    """Where a move came from, as recorded in the history."""

    WEBHOOK = "webhook"
    API = "api"
    RECONCILE = "reconcile"


class MoveResult(StrEnum):
    """What happened to an event, as recorded in the history."""

    APPLIED = "applied"  # the connection moved (or stayed, for a same-state event)
    SUPERSEDED = "superseded"  # older than the last event applied: ignored, never moves backwards
    REJECTED = "rejected"  # a move the table does not allow: ignored, and a reconcile is queued


# The allowed moves. Same-state moves are allowed: a repeated event (connection.failed while
# PendingAuth, connection.reconnected after connection.connected) changes nothing but its time.
ALLOWED_MOVES: dict[State | None, frozenset[State]] = {
    None: frozenset(State),
    State.PENDING_AUTH: frozenset({State.PENDING_AUTH, State.LINKED, State.DELETED}),
    State.LINKED: frozenset({State.LINKED, State.UNLINKED, State.DEAUTHORIZED, State.DELETED}),
    State.UNLINKED: frozenset({State.UNLINKED, State.LINKED, State.DELETED}),
    State.DEAUTHORIZED: frozenset({State.DEAUTHORIZED, State.LINKED, State.DELETED}),
    State.DELETED: frozenset({State.DELETED}),
}

# A reconcile applies what Codat says now: Codat is the source of truth, so any move is allowed
# except out of Deleted (Codat answers 404 for a deleted connection, it never comes back).
AUTHORITATIVE_MOVES: dict[State | None, frozenset[State]] = {
    state: (frozenset({State.DELETED}) if state is State.DELETED else frozenset(State))
    for state in [None, *State]
}


class IllegalTransition(Exception):
    """A move the state table does not allow."""

    def __init__(self, current: State | None, target: State) -> None:
        super().__init__(f"a connection cannot move from {current or 'unknown'} to {target}")
        self.current = current
        self.target = target


def transition(current: State | None, target: State, *, source: Source = Source.WEBHOOK) -> State:
    """Return ``target`` if the move from ``current`` is allowed for ``source``, else raise."""
    table = AUTHORITATIVE_MOVES if source is Source.RECONCILE else ALLOWED_MOVES
    if target not in table[current]:
        raise IllegalTransition(current, target)
    return target
