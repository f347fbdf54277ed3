"""Connection lifecycle events -> moves through the state table, and their follow-ups."""

from __future__ import annotations

from datetime import datetime

from schemas.commands import Command, ConnectionSnapshot, JobKind, Move
from schemas.events import ConnectionEvent, ConnectionEventKind
from schemas.state import IllegalTransition, MoveResult, Source, State, transition


def decide_move(
    snapshot: ConnectionSnapshot,
    target: State,
    *,
    source: Source,
    event_time: datetime | None,
    cause: str,
) -> Move:
    """Decide one move of ``snapshot`` towards ``target``.

    An event older than the last one applied is superseded: late and replayed events never move
    a connection backwards. A move the table does not allow is rejected, and a reconcile is
    queued so that Codat, the source of truth, settles it. ``cause`` names what asked for the
    move (an event id, a job id) and keeps the follow-ups it queues unique.
    """
    current = snapshot.state
    if (event_time is not None and snapshot.last_event_at is not None
            and event_time < snapshot.last_event_at):
        return Move(MoveResult.SUPERSEDED, source, current, target,
                    reason=f"older than the last event applied ({snapshot.last_event_at})")
    try:
        transition(current, target, source=source)
    except IllegalTransition as exc:
        # A rejected reconcile asks nothing more: asking Codat again would get the same answer,
        # and would ask again, for ever (e.g. Codat still lists a connection we saw deleted).
        follow_up = () if source is Source.RECONCILE else (_reconcile(snapshot, cause),)
        return Move(MoveResult.REJECTED, source, current, target, follow_up, reason=str(exc))
    commands: list[Command] = []
    if target is State.LINKED and current is not State.LINKED:
        commands.append(Command(JobKind.CONFIRM_CONNECTION, f"confirm:{snapshot.id}:{cause}",
                                snapshot.company_id, snapshot.id))
    return Move(MoveResult.APPLIED, source, current, target, tuple(commands))


def decide_connection_event(event: ConnectionEvent, snapshot: ConnectionSnapshot) -> Move:
    """Decide what a connection webhook does to the connection it names."""
    target = (State.DELETED if event.kind is ConnectionEventKind.DELETED
              else State(event.connection.status.value))
    cause = event.meta.event_id
    if event.legacy and snapshot.state is not None and event.previous_status is not None \
            and State(event.previous_status.value) != snapshot.state and target != snapshot.state:
        # A legacy body has no event time; its oldStatus is the only guard against a late one.
        return Move(MoveResult.REJECTED, Source.WEBHOOK, snapshot.state, target,
                    (_reconcile(snapshot, cause),),
                    reason=f"legacy event moves from {event.previous_status}, "
                           f"but the connection is {snapshot.state}")
    move = decide_move(snapshot, target, source=Source.WEBHOOK,
                       event_time=event.meta.generated_at, cause=cause)
    if move.applied and not snapshot.exists and event.kind not in (
            ConnectionEventKind.CREATED, ConnectionEventKind.DELETED):
        # First we hear of it, mid-life: ask Codat for the whole connection.
        return Move(move.result, move.source, move.from_state, move.to_state,
                    (*move.commands, _reconcile(snapshot, cause)), move.reason)
    return move


def _reconcile(snapshot: ConnectionSnapshot, cause: str) -> Command:
    return Command(JobKind.RECONCILE_CONNECTION, f"reconcile:{snapshot.id}:{cause}",
                   snapshot.company_id, snapshot.id)
