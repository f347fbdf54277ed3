"""Pure, table-driven tests of the handlers: (snapshot, event) -> (result, from, to, commands)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

import pytest

import handlers
from handlers import assess_readiness, decide_connection_event, decide_move
from handlers.readiness import BILL_PAY_DATA_TYPES
from schemas.commands import Command, ConnectionSnapshot, JobKind, Move
from schemas.events import (
    CompanyInfo,
    ConnectionEvent,
    ConnectionEventKind,
    ConnectionInfo,
    EventMeta,
)
from schemas.state import ConnectionStatus, MoveResult, Source, State
from tests.factories import at

P, L, U, D, X = (State.PENDING_AUTH, State.LINKED, State.UNLINKED, State.DEAUTHORIZED,
                 State.DELETED)
K = ConnectionEventKind
CONFIRM, RECONCILE = JobKind.CONFIRM_CONNECTION, JobKind.RECONCILE_CONNECTION
CONNECTION_ID, COMPANY_ID = "conn-1", "comp-1"


def snapshot(state: State | None = None, last_event: float | None = None, *,
             exists: bool | None = None) -> ConnectionSnapshot:
    """A stored connection; ``exists`` defaults to "we know its status"."""
    return ConnectionSnapshot(
        id=CONNECTION_ID, company_id=COMPANY_ID,
        exists=state is not None if exists is None else exists, state=state,
        last_event_at=None if last_event is None else at(last_event))


def event(kind: ConnectionEventKind, status: str, when: float | None = 0, *,
          event_id: str = "evt-1", previous: str | None = None) -> ConnectionEvent:
    """A connection event; ``when=None`` with ``previous`` makes a legacy body."""
    meta = EventMeta(event_id, "DataConnectionStatusChanged" if when is None
                     else f"connection.{kind}", None if when is None else at(when))
    return ConnectionEvent(meta, kind, CompanyInfo(COMPANY_ID),
                           ConnectionInfo(CONNECTION_ID, ConnectionStatus(status)),
                           None if previous is None else ConnectionStatus(previous))


@dataclass(frozen=True)
class Case:
    name: str
    snapshot: ConnectionSnapshot
    event: ConnectionEvent
    result: MoveResult
    from_state: State | None
    to_state: State
    commands: tuple[JobKind, ...] = ()


APPLIED, SUPERSEDED, REJECTED = MoveResult.APPLIED, MoveResult.SUPERSEDED, MoveResult.REJECTED

CASES = [
    # The lifecycle, in order.
    Case("created, known PendingAuth placeholder", snapshot(None, exists=False),
         event(K.CREATED, "PendingAuth"), APPLIED, None, P),
    Case("connected", snapshot(P, 0), event(K.CONNECTED, "Linked", 1), APPLIED, P, L, (CONFIRM,)),
    Case("disconnected: unlinked", snapshot(L, 1), event(K.DISCONNECTED, "Unlinked", 2),
         APPLIED, L, U),
    Case("disconnected: deauthorized", snapshot(L, 1), event(K.DISCONNECTED, "Deauthorized", 2),
         APPLIED, L, D),
    Case("reconnected from Unlinked", snapshot(U, 2), event(K.RECONNECTED, "Linked", 3),
         APPLIED, U, L, (CONFIRM,)),
    Case("reconnected from Deauthorized", snapshot(D, 2), event(K.RECONNECTED, "Linked", 3),
         APPLIED, D, L, (CONFIRM,)),
    Case("failed keeps PendingAuth", snapshot(P, 0), event(K.FAILED, "PendingAuth", 1),
         APPLIED, P, P),
    Case("deleted from Linked", snapshot(L, 0), event(K.DELETED, "Linked", 1), APPLIED, L, X),
    Case("deleted from PendingAuth", snapshot(P, 0), event(K.DELETED, "PendingAuth", 1),
         APPLIED, P, X),
    Case("deleted again", snapshot(X, 0), event(K.DELETED, "Linked", 1), APPLIED, X, X),
    # Becoming Linked confirms; staying Linked does not.
    Case("reconnected while already Linked", snapshot(L, 0), event(K.RECONNECTED, "Linked", 1),
         APPLIED, L, L),
    Case("connected while already Linked", snapshot(L, 0), event(K.CONNECTED, "Linked", 1),
         APPLIED, L, L),
    # Order: an older event is superseded; the same instant is not.
    Case("older than the last event", snapshot(L, 10), event(K.CREATED, "PendingAuth", 1),
         SUPERSEDED, L, P),
    Case("one second older", snapshot(U, 10), event(K.RECONNECTED, "Linked", 9),
         SUPERSEDED, U, L),
    Case("same instant as the last event", snapshot(L, 10),
         event(K.DISCONNECTED, "Unlinked", 10), APPLIED, L, U),
    Case("older and also illegal: superseded, no reconcile", snapshot(P, 10),
         event(K.DISCONNECTED, "Unlinked", 5), SUPERSEDED, P, U),
    Case("no stored time: never superseded", snapshot(P, None),
         event(K.CONNECTED, "Linked", -10_000), APPLIED, P, L, (CONFIRM,)),
    # Moves the table forbids: rejected, and Codat is asked.
    Case("PendingAuth -> Unlinked", snapshot(P, 0), event(K.DISCONNECTED, "Unlinked", 1),
         REJECTED, P, U, (RECONCILE,)),
    Case("Deauthorized -> Unlinked", snapshot(D, 0), event(K.DISCONNECTED, "Unlinked", 1),
         REJECTED, D, U, (RECONCILE,)),
    Case("Linked -> PendingAuth", snapshot(L, 0), event(K.CREATED, "PendingAuth", 1),
         REJECTED, L, P, (RECONCILE,)),
    Case("Deleted -> Linked", snapshot(X, 0), event(K.RECONNECTED, "Linked", 1),
         REJECTED, X, L, (RECONCILE,)),
    # First heard of mid-life: applied, and the whole connection is fetched from Codat.
    Case("unknown, connected", snapshot(None, exists=False), event(K.CONNECTED, "Linked"),
         APPLIED, None, L, (CONFIRM, RECONCILE)),
    Case("unknown, deauthorized", snapshot(None, exists=False),
         event(K.DISCONNECTED, "Deauthorized"), APPLIED, None, D, (RECONCILE,)),
    Case("unknown, failed", snapshot(None, exists=False), event(K.FAILED, "PendingAuth"),
         APPLIED, None, P, (RECONCILE,)),
    # Deleted at Codat: asking Codat about it would only get a 404.
    Case("unknown, deleted", snapshot(None, exists=False), event(K.DELETED, "Linked"),
         APPLIED, None, X, ()),
    Case("known connection, nothing extra", snapshot(D, 0, exists=True),
         event(K.DISCONNECTED, "Deauthorized", 1), APPLIED, D, D),
    # Legacy bodies: no event time; oldStatus is the guard.
    Case("legacy, oldStatus matches", snapshot(P, 5), event(K.CONNECTED, "Linked", None,
                                                           previous="PendingAuth"),
         APPLIED, P, L, (CONFIRM,)),
    Case("legacy, oldStatus stale", snapshot(U, 5), event(K.CONNECTED, "Linked", None,
                                                         previous="PendingAuth"),
         REJECTED, U, L, (RECONCILE,)),
    Case("legacy, oldStatus stale but already there", snapshot(L, 5),
         event(K.CONNECTED, "Linked", None, previous="PendingAuth"), APPLIED, L, L),
    Case("legacy, matching oldStatus but illegal move", snapshot(P, 5),
         event(K.DISCONNECTED, "Unlinked", None, previous="PendingAuth"),
         REJECTED, P, U, (RECONCILE,)),
    Case("legacy, unknown connection", snapshot(None, exists=False),
         event(K.DISCONNECTED, "Unlinked", None, previous="Linked"),
         APPLIED, None, U, (RECONCILE,)),
    Case("legacy, no oldStatus", snapshot(L, 5), event(K.DISCONNECTED, "Unlinked", None),
         APPLIED, L, U),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_decide_connection_event(case: Case) -> None:
    move = decide_connection_event(case.event, case.snapshot)
    assert (move.result, move.from_state, move.to_state) == \
        (case.result, case.from_state, case.to_state)
    assert tuple(c.kind for c in move.commands) == case.commands
    assert move.source is Source.WEBHOOK
    assert move.applied is (case.result is APPLIED)
    for command in move.commands:
        assert (command.company_id, command.connection_id) == (COMPANY_ID, CONNECTION_ID)
    if case.result is not APPLIED:
        assert move.reason  # superseded and rejected moves say why


def test_a_rejected_move_names_both_states() -> None:
    move = decide_connection_event(event(K.DISCONNECTED, "Unlinked", 1), snapshot(P, 0))
    assert move.reason is not None
    assert "PendingAuth" in move.reason and "Unlinked" in move.reason


def test_a_stale_legacy_move_names_the_states() -> None:
    move = decide_connection_event(event(K.CONNECTED, "Linked", None, previous="PendingAuth"),
                                   snapshot(U, 0))
    assert move.reason is not None
    assert "PendingAuth" in move.reason and "Unlinked" in move.reason


def test_a_superseded_move_names_the_last_event_time() -> None:
    move = decide_connection_event(event(K.CREATED, "PendingAuth", 1), snapshot(L, 10))
    assert move.reason is not None and str(at(10)) in move.reason


# --- dedupe keys -------------------------------------------------------------------------------

def _keys(move: Move) -> list[str]:
    return [c.dedupe_key for c in move.commands]


@pytest.mark.parametrize(("snap", "evt"), [
    (snapshot(None, exists=False), event(K.CONNECTED, "Linked")),  # confirm + reconcile
    (snapshot(P, 0), event(K.DISCONNECTED, "Unlinked", 1)),  # reconcile (rejected)
    (snapshot(U, 0), event(K.CONNECTED, "Linked", None, previous="PendingAuth")),  # legacy
])
def test_dedupe_keys_are_stable_for_the_same_event(snap: ConnectionSnapshot,
                                                   evt: ConnectionEvent) -> None:
    first, again = decide_connection_event(evt, snap), decide_connection_event(evt, snap)
    assert first.commands and first.commands == again.commands
    keys = _keys(first)
    assert len(set(keys)) == len(keys)  # one key per command
    assert all(CONNECTION_ID in k and evt.meta.event_id in k for k in keys)
    other = decide_connection_event(replace(evt, meta=replace(evt.meta, event_id="evt-2")),
                                    snap)
    assert set(_keys(other)).isdisjoint(keys)  # another event asks again


def test_dedupe_keys_differ_between_connections() -> None:
    evt = event(K.CONNECTED, "Linked", 1)
    mine = decide_connection_event(evt, snapshot(P, 0))
    theirs = decide_connection_event(evt, ConnectionSnapshot("conn-2", COMPANY_ID, True, P, None))
    assert mine.commands[0].dedupe_key != theirs.commands[0].dedupe_key
    assert theirs.commands[0].connection_id == "conn-2"


# --- decide_move directly (the API and reconcile paths) -----------------------------------------

@pytest.mark.parametrize(
    ("source", "current", "target", "result", "commands"), [
        (Source.RECONCILE, U, P, APPLIED, ()),  # Codat says so: applied
        (Source.WEBHOOK, U, P, REJECTED, (RECONCILE,)),
        (Source.API, U, P, REJECTED, (RECONCILE,)),
        (Source.RECONCILE, D, L, APPLIED, (CONFIRM,)),
        (Source.RECONCILE, L, L, APPLIED, ()),
        # Never out of Deleted, and a rejected reconcile asks Codat nothing more (no loop).
        (Source.RECONCILE, X, L, REJECTED, ()),
        (Source.RECONCILE, None, L, APPLIED, (CONFIRM,)),
        (Source.API, L, U, APPLIED, ()),
    ])
def test_decide_move(source: Source, current: State | None, target: State,
                     result: MoveResult, commands: tuple[JobKind, ...]) -> None:
    move = decide_move(snapshot(current, 0), target, source=source, event_time=at(1),
                       cause="job-7")
    assert (move.result, move.source, move.from_state, move.to_state) == \
        (result, source, current, target)
    assert tuple(c.kind for c in move.commands) == commands
    assert all(c.dedupe_key.endswith(":job-7") for c in move.commands)


@pytest.mark.parametrize(("event_time", "result"), [
    (at(9), SUPERSEDED), (at(10), APPLIED), (at(11), APPLIED), (None, APPLIED)])
def test_decide_move_compares_with_the_last_event(event_time: datetime | None,
                                                  result: MoveResult) -> None:
    move = decide_move(snapshot(L, 10), U, source=Source.WEBHOOK, event_time=event_time,
                       cause="c")
    assert move.result is result


def test_commands_are_json_safe_and_named_after_their_cause() -> None:
    [command] = decide_move(snapshot(P, 0), L, source=Source.WEBHOOK, event_time=at(1),
                            cause="evt-9").commands
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
    assert sorted(handlers.__all__) == ["assess_readiness", "decide_connection_event",
                                        "decide_move"]
