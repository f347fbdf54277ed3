"""Generated Codat histories for the property tests of the newest-word rule, and what they must
leave: every connection in the state of its newest word, whatever the delivery order.

A history is what Codat would send about a few companies' connections: each connection walks
Codat's lifecycle (created, failed, connected, disconnected to Unlinked or Deauthorized,
reconnected, deleted), some as legacy ``DataConnectionStatusChanged`` bodies ordered only by
their svix message id's time (4 ms), some companies deleted at the end. Deliveries are those
events in an order Hypothesis picks, with Codat's retries (the same message again) and Portal
resends (the same event under a new message id).
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from hypothesis import strategies as st

from schemas.order import instant_of, message_instant, new_message_id, order_key
from schemas.state import State
from service.db import Database, sql
from tests.factories import company_body, connection_body, legacy_body

P, L, U, D, X = (State.PENDING_AUTH, State.LINKED, State.UNLINKED, State.DEAUTHORIZED,
                 State.DELETED)
_STEPS: dict[State, list[tuple[str, State]]] = {
    P: [("connection.failed", P), ("connection.connected", L), ("connection.deleted", X)],
    L: [("connection.disconnected", U), ("connection.disconnected", D),
        ("connection.deleted", X)],
    U: [("connection.reconnected", L), ("connection.deleted", X)],
    D: [("connection.reconnected", L), ("connection.deleted", X)],
}
MS = 10_000  # ticks (100 ns, generatedDate's last digit) in a millisecond
_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Message:
    """One message as Svix would send it: its id stays the same on every retry."""

    message_id: str
    body: bytes
    connection_id: str | None
    event_id: str
    key: str | None  # the order key the receiver must give it (None: company.deleted)
    state: State  # the state it says its connection is in


@dataclass
class History:
    messages: list[Message]
    # connection -> (company, the state of its last event in Codat's lifecycle)
    truth: dict[str, tuple[str, State]]
    deleted_companies: dict[str, str] = field(default_factory=dict)  # company -> its key

    def expected_states(self) -> dict[str, State]:
        """The state of each connection's newest word (company.deleted a word of each of its
        connections): what the receiver must store, whatever the order."""
        newest: dict[str, tuple[str, State]] = {}
        for m in self.messages:
            if m.connection_id is not None and m.key is not None:
                current = newest.get(m.connection_id)
                if current is None or m.key > current[0]:
                    newest[m.connection_id] = (m.key, m.state)
        for connection, (company, _) in self.truth.items():
            key = self.deleted_companies.get(company)
            if key is not None and key > newest[connection][0]:
                newest[connection] = (key, X)
        return {c: s for c, (_, s) in newest.items()}


def _moment(ticks: int) -> tuple[datetime, str]:
    moment = _EPOCH + timedelta(microseconds=ticks // 10)
    return moment, instant_of(moment, ticks % 10)


def _with_generated(body: bytes, instant: str) -> bytes:
    document = orjson.loads(body)
    document["generatedDate"] = instant
    return orjson.dumps(document)


@st.composite
def histories(draw: st.DrawFn, *, legacy: bool = True, max_companies: int = 3) -> History:
    """A few companies' connections, each through Codat's lifecycle (see the module docstring);
    times are in the last day (a legacy message id must be younger than 90 days)."""
    start = (datetime.now(UTC) - timedelta(days=1) - _EPOCH) // timedelta(microseconds=1) * 10
    messages: list[Message] = []
    truth: dict[str, tuple[str, State]] = {}
    deleted: dict[str, str] = {}
    for _ in range(draw(st.integers(1, max_companies))):
        company = str(uuid.uuid4())
        end = start
        for _ in range(draw(st.integers(1, 3))):
            connection = str(uuid.uuid4())
            old_style = legacy and draw(st.integers(0, 3)) == 0
            # Legacy words are ordered by 4 ms slots: keep their events 10 ms apart or more.
            gap = st.integers(10 * MS, 500 * MS) if old_style else st.integers(1, 50 * MS)
            ticks = start + draw(st.integers(0, 1000 * MS))
            state, steps = P, [("connection.created", P)]
            for _ in range(draw(st.integers(1, 5))):
                step = draw(st.sampled_from(_STEPS[state]))
                steps.append(step)
                state = step[1]
                if state is X:
                    break
            previous: State | None = None
            for event_type, target in steps:
                ticks += draw(gap)
                moment, instant = _moment(ticks)
                event_id = str(uuid.uuid4())
                as_legacy = old_style and target is not X and event_type != "connection.failed" \
                    and draw(st.booleans())
                message_id = new_message_id(moment)
                if as_legacy:
                    body = legacy_body(company_id=company, connection_id=connection,
                                       new_status=target.value, alert_id=event_id,
                                       old_status=(previous or P).value)
                    evidence = message_instant(message_id, int(datetime.now(UTC).timestamp()))
                    assert evidence is not None
                    key = order_key(target, evidence, event_id)
                else:
                    status = "Linked" if target is X else target.value
                    body = _with_generated(connection_body(
                        event_type, company_id=company, connection_id=connection, status=status,
                        generated=moment, event_id=event_id), instant)
                    key = order_key(target, instant, event_id)
                messages.append(Message(message_id, body, connection, event_id, key, target))
                previous = target
            truth[connection] = (company, state)
            end = max(end, ticks)
        if draw(st.integers(0, 3)) == 0:
            moment, instant = _moment(end + draw(st.integers(1, 100 * MS)))
            event_id = str(uuid.uuid4())
            body = _with_generated(company_body("company.deleted", company_id=company,
                                                generated=moment, event_id=event_id), instant)
            messages.append(Message(new_message_id(moment), body, None, event_id, None, X))
            deleted[company] = order_key(X, instant, event_id)
    return History(messages, truth, deleted)


@st.composite
def deliveries(draw: st.DrawFn, history: History) -> list[Message]:
    """The history's messages in an order Hypothesis picks, with Codat's retries (the same
    message again, ~15%) and events published again as new messages (~5%). Only current-format
    events: a legacy event's only time is its message's, and Svix's retries, resends and
    recoveries all keep the message id (a legacy body under a new id would say it is newer)."""
    sent = list(history.messages)
    for message in history.messages:
        roll = draw(st.integers(0, 19))
        if roll < 3:
            sent.append(message)
        elif roll == 3 and not message.body.startswith(b'{"ClientId"'):
            sent.append(Message(new_message_id(), message.body, message.connection_id,
                                message.event_id, message.key, message.state))
    return list(draw(st.permutations(sent)))


# --- what must hold afterwards -----------------------------------------------------------------

async def rows(db: Database, query: str) -> list[dict[str, Any]]:
    statement = sql(query)
    return [dict(r) for r in await db.read(lambda tx: tx.fetch(statement))]


def state_of(row: dict[str, Any]) -> State | None:
    return X if row["deleted"] else (None if row["status"] is None else State(row["status"]))


async def assert_newest_word_holds(db: Database, history: History) -> None:
    """Every connection in the state of its newest word; every word one history row; the
    follow-up jobs exactly those the rows imply; every company's count of Linked connections
    true, and none ready without one."""
    expected = history.expected_states()
    for connection, (_, last) in history.truth.items():  # the generator's own sanity
        company = history.truth[connection][0]
        assert expected[connection] is (X if company in history.deleted_companies else last)
    stored = {r["id"]: state_of(r) for r in await rows(
        db, "SELECT id, status, deleted FROM connections")}
    wrong = {c: (stored.get(c), s) for c, s in expected.items() if stored.get(c) is not s}
    assert not wrong, f"(stored, newest word) differ: {wrong}"

    history_rows = await rows(db, "SELECT connection_id, company_id, event_id, event_type, "
                                  "from_state, to_state, result, skipped, source "
                                  "FROM connection_history")
    recorded = Counter((h["connection_id"], h["event_id"]) for h in history_rows)
    words = Counter((m.connection_id, m.event_id) for m in history.messages
                    if m.connection_id is not None)
    for connection, (company, _) in history.truth.items():
        deletion = history.deleted_companies.get(company)
        if deletion is not None:
            words[(connection, deletion.split(" ", 2)[2])] += 1
    assert recorded == words, (f"missing {list((words - recorded).items())[:3]}, "
                               f"extra {list((recorded - words).items())[:3]}")

    implied = set()
    for h in history_rows:
        cause = h["event_id"]
        if h["result"] == "applied" and h["to_state"] == "Linked" \
                and h["from_state"] != "Linked":
            implied.add(f"confirm:{h['connection_id']}:{cause}")
        if h["source"] == "webhook" and (h["skipped"] or h["result"] == "rejected"):
            implied.add(f"reconcile:{h['connection_id']}:{cause}")
    jobs = [r["dedupe_key"] for r in await rows(db, "SELECT dedupe_key FROM outbox")]
    assert sorted(jobs) == sorted(implied)

    await assert_readiness_holds(db)


async def assert_readiness_holds(db: Database) -> None:
    counted = {r["id"]: (int(r["linked_count"]), bool(r["bill_pay_ready"])) for r in await rows(
        db, "SELECT id, linked_count, bill_pay_ready FROM companies")}
    linked = Counter(r["company_id"] for r in await rows(
        db, "SELECT company_id FROM connections WHERE status = 'Linked' AND deleted = FALSE"))
    for company, (count, ready) in counted.items():
        assert count == linked[company], (company, count, linked[company])
        assert not ready or count > 0, f"company {company} ready with no Linked connection"
