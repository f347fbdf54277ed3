"""What this process last saw of connections: the guess the delivery path decides from.

On PostgreSQL a batch of connection events is decided in Python and written by one statement
(:func:`service.store.commit_connection_events`). Deciding needs each connection's state;
reading it first would cost a round trip per batch. Instead the receiver guesses, from what its
own commits last returned, and the statement checks every guess against the row's ``version``:
a wrong guess (another replica moved the connection, this process never saw it, the entry was
evicted) writes nothing and comes back with what the row holds, to decide again from. So an
entry here is never trusted, only checked: a stale one costs a round trip, not a wrong move.
"""

from __future__ import annotations

from schemas.commands import ConnectionSnapshot

# Entries kept: about 400 bytes each with their ids, so at most ~20 MB. A connection's events come
# close together while it is being linked, so recent ones are what matters; the oldest go first.
DEFAULT_SIZE = 50_000


class KnownConnections:
    """A bounded map of connection id -> (snapshot, version) as the database last said."""

    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        if size < 1:
            raise ValueError("size must be at least 1")
        self._size = size
        self._entries: dict[str, tuple[ConnectionSnapshot, int | None]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def guess(self, connection_id: str, company_id: str) -> tuple[ConnectionSnapshot, int | None]:
        """The connection as last seen, or, never seen, as if it did not exist yet (what a
        ``connection.created`` finds), with its version (None: no row)."""
        entry = self._entries.get(connection_id)
        if entry is not None:
            return entry
        return ConnectionSnapshot(connection_id, company_id, exists=False, state=None,
                                  last_event_at=None), None

    def note(self, snapshot: ConnectionSnapshot, version: int | None) -> None:
        """What the database just said of a connection (version None: no such row)."""
        entries = self._entries
        entries.pop(snapshot.id, None)  # re-inserted last: dicts keep insertion order
        entries[snapshot.id] = (snapshot, version)
        if len(entries) > self._size:
            del entries[next(iter(entries))]

    def forget(self, connection_id: str) -> None:
        self._entries.pop(connection_id, None)
