"""What one source says of a connection (a word), what was made of it (a verdict), and the
follow-up commands it asks the outbox to run."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from schemas.events import CompanyInfo, ConnectionInfo
from schemas.state import ConnectionStatus, MoveResult, Source, State


class JobKind(StrEnum):
    """Follow-up work run by the outbox worker."""

    CONFIRM_CONNECTION = "confirm_connection"  # fetch a newly Linked connection, prepare Bill Pay
    RECONCILE_CONNECTION = "reconcile_connection"  # fetch a connection and apply what Codat says
    REFRESH_READINESS = "refresh_readiness"  # recompute Bill Pay readiness after a read
    PUSH_CHANGE = "push_change"  # POST one change of the feed to one subscriber


# The kinds that call Codat: they wait while Codat's rate limit is reached; a push does not.
CODAT_JOBS: frozenset[JobKind] = frozenset({JobKind.CONFIRM_CONNECTION,
                                            JobKind.RECONCILE_CONNECTION,
                                            JobKind.REFRESH_READINESS})
# The other kinds, as SQL. An index of the outbox holds only their jobs (they are few: a push
# per change and subscriber), so that a claim while Codat calls wait reads those alone, however
# many Codat jobs are pending; the claim's condition is this very text, which is how both
# databases know that index applies.
NOT_CODAT_JOBS_SQL = "kind IN ({})".format(
    ", ".join(f"'{kind.value}'" for kind in JobKind if kind not in CODAT_JOBS))


@dataclass(frozen=True, slots=True)
class Command:
    """One outbox job to enqueue; ``dedupe_key`` makes the same cause enqueue it once."""

    kind: JobKind
    dedupe_key: str
    company_id: str | None
    connection_id: str | None
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Cause:
    """What said a word, for its history row. ``id`` names it (an event id, ``job:<id>``,
    ``api:...``): one history row per (connection, id, type), and its follow-ups' dedupe keys."""

    id: str
    type: str
    delivery_id: str | None = None
    time: datetime | None = None  # the word's instant, to the microsecond (for display)
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Word:
    """What one source says a connection's state was at one instant.

    ``key`` orders it among every other word about the connection (:mod:`schemas.order`); None
    when nothing orders it (a legacy event whose message id carries no usable time).
    """

    connection_id: str
    company_id: str
    state: State
    key: str | None
    source: Source
    cause: Cause
    info: ConnectionInfo | None = None  # what it says of the connection besides its state
    company: CompanyInfo | None = None  # what it says of the company
    # A legacy body's oldStatus: the status it says the connection moved from.
    previous: ConnectionStatus | None = None

    @property
    def errors(self) -> list[dict[str, Any]] | None:
        """The connection's errors to store: a word that reports none clears the old ones."""
        if self.info is not None and self.info.errors is not None:
            return self.info.errors
        return None if self.state is State.DELETED else []


@dataclass(frozen=True, slots=True)
class Stored:
    """A connection as stored: its state and the key of the newest word applied to it."""

    state: State | None
    key: str | None


NOTHING_HEARD = Stored(None, None)


@dataclass(frozen=True, slots=True)
class Verdict:
    """What became of one word."""

    result: MoveResult
    source: Source
    from_state: State | None  # the state the connection was in when the word arrived
    to_state: State  # the state the word asked for; the connection's now only when applied
    skipped: bool = False  # applied, but not one step of Codat's lifecycle: Codat is asked
    commands: tuple[Command, ...] = ()
    reason: str | None = None

    @property
    def applied(self) -> bool:
        return self.result is MoveResult.APPLIED

    @property
    def changed(self) -> bool:
        """The connection's state is not what it was."""
        return self.applied and self.from_state is not self.to_state
