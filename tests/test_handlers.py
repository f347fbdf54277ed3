"""Pure, table-driven tests of the handlers: (stored, word) -> verdict and follow-ups."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

import pytest

import handlers
from handlers import assess_readiness, decide, word_of_event
from handlers.readiness import BILL_PAY_DATA_TYPES
from schemas.commands import NOTHING_HEARD, Cause, Command, JobKind, Stored, Word
from schemas.events import (
    CompanyInfo,
    ConnectionEvent,
    ConnectionEventKind,
    ConnectionInfo,
    EventMeta,
)
from schemas.order import order_key
from schemas.state import ConnectionStatus, MoveResult, Source, State

P, L, U, D, X = (State.PENDING_AUTH, State.LINKED, State.UNLINKED, State.DEAUTHORIZED,
                 State.DELETED)
CONFIRM, RECONCILE = JobKind.CONFIRM_CONNECTION, JobKind.RECONCILE_CONNECTION
APPLIED, SUPERSEDED, REJECTED = MoveResult.APPLIED, MoveResult.SUPERSEDED, MoveResult.REJECTED
CONNECTION_ID, COMPANY_ID = "conn-1", "comp-1"


def t(second: int) -> str:
    return f"2026-11-01T12:00:{second:02d}.0000000Z"


def stored(state: State | None, second: int = 0, tiebreak: str = "evt-0") -> Stored:
    return NOTHING_HEARD if state is None else Stored(state, order_key(state, t(second), tiebreak))


def word(state: State, second: int | None = 1, *, source: Source = Source.WEBHOOK,
         cause: str = "evt-1", previous: ConnectionStatus | None = None) -> Word:
    key = None if second is None else order_key(state, t(second), cause)
    return Word(CONNECTION_ID, COMPANY_ID, state, key, source, Cause(cause, "connection.x"),
                previous=previous)


@dataclass(frozen=True)
class Case:
    name: str
    stored: Stored
    word: Word
    result: MoveResult
    skipped: bool = False
    commands: tuple[JobKind, ...] = ()


CASES = [
    # The lifecycle, in order: every move expected.
    Case("created", stored(None), word(P), APPLIED),
    Case("connected", stored(P, 0), word(L, 1), APPLIED, commands=(CONFIRM,)),
    Case("unlinked", stored(L, 1), word(U, 2), APPLIED),
    Case("deauthorized", stored(L, 1), word(D, 2), APPLIED),
    Case("reconnected from Unlinked", stored(U, 2), word(L, 3), APPLIED, commands=(CONFIRM,)),
    Case("reconnected from Deauthorized", stored(D, 2), word(L, 3), APPLIED,
         commands=(CONFIRM,)),
    Case("failed keeps PendingAuth", stored(P, 0), word(P, 1), APPLIED),
    Case("deleted from Linked", stored(L, 0), word(X, 1), APPLIED),
    Case("deleted, first heard of", stored(None), word(X, 1), APPLIED),
    Case("deleted again", stored(X, 0), word(X, 1), APPLIED),
    Case("connected again while Linked: no second confirm", stored(L, 0), word(L, 1), APPLIED),
    # Codat's newest word wins whatever it skips; Codat is asked to confirm.
    Case("PendingAuth -> Deauthorized", stored(P, 0), word(D, 2), APPLIED, True, (RECONCILE,)),
    Case("PendingAuth -> Unlinked", stored(P, 0), word(U, 2), APPLIED, True, (RECONCILE,)),
    Case("Deauthorized -> Unlinked", stored(D, 0), word(U, 2), APPLIED, True, (RECONCILE,)),
    Case("first heard: Linked", stored(None), word(L), APPLIED, True, (CONFIRM, RECONCILE)),
    Case("first heard: Deauthorized", stored(None), word(D), APPLIED, True, (RECONCILE,)),
    # Older than the newest word: superseded, nothing asked.
    Case("older", stored(L, 10), word(U, 9), SUPERSEDED),
    Case("older PendingAuth", stored(L, 10), word(P, 1), SUPERSEDED),
    Case("older than a deletion", stored(X, 10), word(L, 9), SUPERSEDED),
    Case("same instant, smaller tie-break", stored(L, 10, "evt-9"), word(U, 10), SUPERSEDED),
    Case("same instant, greater tie-break", stored(L, 10, "evt-0"), word(U, 10), APPLIED),
    # Newer in time, yet never applied: Codat's clocks disagree. Codat is asked.
    Case("PendingAuth after Linked", stored(L, 10), word(P, 11), REJECTED, commands=(RECONCILE,)),
    Case("Linked after Deleted", stored(X, 10), word(L, 11), REJECTED, commands=(RECONCILE,)),
    # Legacy words: ordered by their message id's time when it parses; oldStatus checks them.
    Case("legacy, consistent", stored(P, 0), word(L, 1, previous=ConnectionStatus.PENDING_AUTH),
         APPLIED, commands=(CONFIRM,)),
    Case("legacy, oldStatus not where it moves from", stored(U, 0),
         word(L, 1, previous=ConnectionStatus.PENDING_AUTH), APPLIED, True, (CONFIRM, RECONCILE)),
    Case("legacy with no order evidence", stored(P, 0), word(L, None), REJECTED,
         commands=(RECONCILE,)),
    Case("legacy with no order evidence, first heard", stored(None), word(P, None), REJECTED,
         commands=(RECONCILE,)),
    # Codat's own answers: what asking would get, so nothing more is asked.
    Case("reconcile skipping states", stored(P, 0), word(D, 2, source=Source.RECONCILE,
                                                          cause="job:7"), APPLIED, True),
    Case("reconcile of a deleted connection that Codat still lists", stored(X, 0),
         word(L, 2, source=Source.RECONCILE, cause="job:7"), REJECTED),
    Case("reconcile finds it Linked", stored(D, 0), word(L, 2, source=Source.RECONCILE,
                                                          cause="job:7"), APPLIED,
         commands=(CONFIRM,)),
    Case("unlink through the API", stored(L, 0), word(U, 2, source=Source.API, cause="api:u"),
         APPLIED),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_decide(case: Case) -> None:
    verdict = decide(case.stored, case.word)
    assert (verdict.result, verdict.skipped) == (case.result, case.skipped)
    assert (verdict.from_state, verdict.to_state) == (case.stored.state, case.word.state)
    assert verdict.source is case.word.source
    assert tuple(c.kind for c in verdict.commands) == case.commands
    for command in verdict.commands:
        assert (command.company_id, command.connection_id) == (COMPANY_ID, CONNECTION_ID)
        assert command.dedupe_key.endswith(f":{CONNECTION_ID}:{case.word.cause.id}")
    assert verdict.applied is (case.result is APPLIED)
    if case.result is not APPLIED or case.skipped:
        assert verdict.reason  # what was not simply applied says why


def test_reasons_name_the_states_and_the_newest_words_instant() -> None:
    assert decide(stored(P, 0), word(U, 2)).reason == "skipped states: PendingAuth -> Unlinked"
    assert decide(stored(None), word(L)).reason == "skipped states: nothing heard -> Linked"
    assert decide(stored(L, 10), word(U, 9)).reason == \
        f"older than the newest word ({t(10)})"
    assert decide(stored(X, 10), word(L, 11)).reason == \
        f"Deleted never becomes Linked (its newest word is of {t(10)})"
    cause_reason = replace(word(U, 2), cause=Cause("api:u", "api.unlink", reason="by hand"))
    assert decide(stored(L, 0), cause_reason).reason == "by hand"


STATES: list[State | None] = [None, *State]


@pytest.mark.parametrize("states", list(itertools.product(STATES, State, State)),
                         ids=lambda s: "-".join(str(x) for x in s))
def test_the_state_two_words_leave_does_not_depend_on_their_order(
        states: tuple[State | None, State, State]) -> None:
    start, a, b = states
    first, second = word(a, 5, cause="evt-a"), word(b, 7, cause="evt-b")

    def after(*words: Word) -> Stored:
        now = stored(start, 1)
        for w in words:
            if decide(now, w).applied:
                now = Stored(w.state, w.key)
        return now
    assert after(first, second) == after(second, first)


def test_a_word_of_an_event_orders_by_generated_date_or_by_its_message_id() -> None:
    meta = EventMeta("evt-1", "connection.connected", None, t(3))
    event = ConnectionEvent(meta, ConnectionEventKind.CONNECTED, CompanyInfo(COMPANY_ID),
                            ConnectionInfo(CONNECTION_ID, ConnectionStatus.LINKED))
    current = word_of_event(event, delivery_id="msg_1", evidence=t(9))
    assert current.key == order_key(L, t(3), "evt-1")  # generatedDate, not the message id
    assert (current.cause.delivery_id, current.source) == ("msg_1", Source.WEBHOOK)
    legacy = replace(event, meta=replace(meta, generated=None),
                     previous_status=ConnectionStatus.PENDING_AUTH)
    assert word_of_event(legacy, delivery_id="m", evidence=t(9)).key == order_key(L, t(9),
                                                                                 "evt-1")
    assert word_of_event(legacy, delivery_id="m", evidence=None).key is None
    deleted = replace(event, kind=ConnectionEventKind.DELETED)
    assert word_of_event(deleted, delivery_id="m", evidence=None).state is X


def test_commands_are_json_safe_and_named_after_their_cause() -> None:
    [command] = decide(stored(P, 0), word(L, 1, cause="evt-9")).commands
    assert command == Command(CONFIRM, f"confirm:{CONNECTION_ID}:evt-9", COMPANY_ID,
                              CONNECTION_ID, {})


# --- readiness ---------------------------------------------------------------------------------

ALL_DONE = dict.fromkeys(BILL_PAY_DATA_TYPES, "Complete")


@pytest.mark.parametrize(("statuses", "ready", "missing", "failed"), [
    ({}, False, BILL_PAY_DATA_TYPES, ()),
    (ALL_DONE, True, (), ()),
    ({**ALL_DONE, "invoices": "FetchError"}, True, (), ()),  # other data types do not count
    ({**ALL_DONE, "bills": "Fetching"}, False, ("bills",), ()),
    ({**ALL_DONE, "bills": "FetchError", "suppliers": "AuthError"}, False,
     ("bills", "suppliers"), ("bills", "suppliers")),
    # Exact spelling: a status that is neither Complete nor a read under way did not deliver.
    ({**ALL_DONE, "company": "complete"}, False, ("company",), ("company",)),
    ({**ALL_DONE, "bills": "NotSupported"}, False, ("bills",), ("bills",)),
    ({k: v for k, v in ALL_DONE.items() if k != "paymentMethods"}, False,
     ("paymentMethods",), ()),
])
def test_assess_readiness(statuses: dict[str, str], ready: bool, missing: tuple[str, ...],
                          failed: tuple[str, ...]) -> None:
    readiness = assess_readiness(statuses)
    assert (readiness.ready, readiness.missing, readiness.failed) == (ready, missing, failed)


def test_bill_pay_data_types_are_the_ones_the_contract_lists() -> None:
    assert set(BILL_PAY_DATA_TYPES) == {"bankAccounts", "bills", "billPayments",
                                        "chartOfAccounts", "company", "paymentMethods",
                                        "suppliers"}


def test_the_handlers_package_exports_only_its_decisions() -> None:
    assert sorted(handlers.__all__) == ["assess_readiness", "decide", "verdict",
                                        "word_of_event"]
