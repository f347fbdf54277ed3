"""Words about a connection -> verdicts: Codat's newest word wins, the table classifies it."""

from __future__ import annotations

from schemas.commands import Cause, Command, JobKind, Stored, Verdict, Word
from schemas.events import ConnectionEvent, ConnectionEventKind
from schemas.order import instant_in, later_in_time, order_key
from schemas.state import MoveResult, Source, State, skips_states


def word_of_event(event: ConnectionEvent, *, delivery_id: str | None,
                  evidence: str | None) -> Word:
    """What a connection webhook says. ``evidence`` is the instant that orders it: its
    ``generatedDate``, or for a legacy body (which has none) the creation time inside its svix
    message id, None when that does not parse."""
    meta = event.meta
    state = (State.DELETED if event.kind is ConnectionEventKind.DELETED
             else State(event.connection.status.value))
    instant = meta.generated if meta.generated is not None else evidence
    key = None if instant is None else order_key(state, instant, meta.event_id)
    cause = Cause(meta.event_id, meta.event_type, delivery_id, meta.generated_at)
    return Word(event.connection.id, event.company.id, state, key, Source.WEBHOOK, cause,
                event.connection, event.company, event.previous_status)


def decide(stored: Stored, word: Word) -> Verdict:
    """What ``word`` does to a connection stored as ``stored``.

    The newest word (by order key) is applied, whatever the move: Codat said it. A move that
    skips states (or a legacy word whose oldStatus is not the state it moves from) means words
    were missed, so a reconcile asks Codat to confirm. A word that is not the newest changes
    nothing: *superseded* when it is simply older; *rejected* when it is newer in time but can
    never be applied (back to PendingAuth, out of Deleted; most likely Codat's clocks disagree),
    and then Codat is asked too. A legacy word with no order evidence is never applied either.
    The verdict depends only on ``stored`` and ``word``, so the state a set of words leaves is the
    same whatever order they come in.
    """
    current, target = stored.state, word.state
    if word.key is None:
        return verdict(word, MoveResult.REJECTED, current,
                       reason="no order evidence: a legacy event whose message id carries no "
                              "usable time")
    if stored.key is None or word.key > stored.key:
        skipped = skips_states(current, target)
        inconsistent = (word.previous is not None and current is not None
                        and State(word.previous.value) is not current)
        reason = None
        if skipped:
            reason = f"skipped states: {current or 'nothing heard'} -> {target}"
        elif inconsistent:
            reason = f"legacy oldStatus is {word.previous}, but the connection was {current}"
        return verdict(word, MoveResult.APPLIED, current, skipped=skipped or inconsistent,
                       reason=reason)
    assert stored.key is not None
    if later_in_time(word.key, stored.key):
        return verdict(word, MoveResult.REJECTED, current,
                       reason=f"{current} never becomes {target} (its newest word is of "
                              f"{instant_in(stored.key)})")
    return verdict(word, MoveResult.SUPERSEDED, current,
                   reason=f"older than the newest word ({instant_in(stored.key)})")


def verdict(word: Word, result: MoveResult, from_state: State | None, *, skipped: bool = False,
            reason: str | None = None) -> Verdict:
    """The verdict on ``word`` with its follow-ups: becoming Linked confirms the connection; a
    skip or a rejection asks Codat (a reconcile), unless the word is Codat's answer already (an
    onboarding call, a reconcile)."""
    commands: list[Command] = []
    if result is MoveResult.APPLIED and word.state is State.LINKED \
            and from_state is not State.LINKED:
        commands.append(_command(JobKind.CONFIRM_CONNECTION, "confirm", word))
    if (skipped or result is MoveResult.REJECTED) and word.source is Source.WEBHOOK:
        commands.append(_command(JobKind.RECONCILE_CONNECTION, "reconcile", word))
    return Verdict(result, word.source, from_state, word.state, skipped, tuple(commands),
                   "; ".join(r for r in (word.cause.reason, reason) if r) or None)


def _command(kind: JobKind, name: str, word: Word) -> Command:
    return Command(kind, f"{name}:{word.connection_id}:{word.cause.id}", word.company_id,
                   word.connection_id)
