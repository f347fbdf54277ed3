"""The delivery path on PostgreSQL: a batch of connection events in ONE statement.

Round trips are what bound a receiver on PostgreSQL, so the connection events queued while the
previous batch was written go as one statement that commits on its own (no BEGIN, no COMMIT to
wait for) and writes, for each event whose message id is new: the delivery row, the company, the
connection, its history row, its company's count of Linked connections and its follow-up jobs.

Nothing is read first and nothing is guessed, because the rule is commutative: a connection
holds Codat's newest word (:mod:`schemas.order`). The connection upsert writes a word only where
its key is greater than the stored one, and always returns the row as it now is, under its row
lock, so each word's verdict is decided from the connection's newest version, whatever other
replicas committed meanwhile. The verdict (:func:`handlers.decide`) is written here in SQL over
the same table (:data:`schemas.state.EXPECTED_MOVES`); ``tests/test_batch.py`` holds the two
equal over every input.

What the statement leaves to :func:`service.ingest.ingest` (None for it; nothing written): a
message stored before (unless a plain duplicate, answered from what was found), a connection of
a deleted company, a legacy event with no order evidence, any event but a connection's, and a
batch the statement failed on (each of its events is then tried alone, so that one bad event
fails alone).
"""

from __future__ import annotations

import asyncio
import base64
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from handlers import verdict, word_of_event
from schemas.changes import NO_LINKED_CONNECTION, ChangeType
from schemas.commands import Verdict, Word
from schemas.events import ConnectionEvent, Event
from schemas.state import EXPECTED_MOVES, MoveResult, State
from service.db import Tx, is_unavailable, sql, to_json, utcnow
from service.errors import Contended
from service.feed import CHANNEL
from service.logs import get_logger
from service.store import DEFAULT_MAX_ATTEMPTS, DeliveryFacts, NewDelivery

log = get_logger("batch")

# (column, type) of each event's row, in the order :func:`_row` makes them.
_COLUMNS = tuple((c.split()[0], c.split()[1]) for c in """
    message_id text, msg_timestamp bigint, d_event_id text, d_event_type text,
    d_company_id text, d_connection_id text, body text, body_sha256 text, headers text,
    secret_id text, received_at timestamptz, outcome text, error text,
    id text, company_id text, name text, description text, tags text,
    state text, key text, source text, cause_id text, cause_type text, delivery_id text,
    event_time timestamptz, cause_reason text, previous text, status text, deleted boolean,
    platform_key text, platform_name text, source_type text, integration_id text,
    source_id text, link_url text, created timestamptz, last_sync timestamptz, errors text,
    ord bigint""".replace("\n", " ").split(","))

_EXPECTED = ", ".join(f"({'NULL' if f is None else repr(f.value)}, {t.value!r})"
                      for f, targets in EXPECTED_MOVES.items() for t in sorted(targets))
_NEWER = "(c.event_key IS NULL OR excluded.event_key > c.event_key)"


def _if_newer(column: str, value: str) -> str:
    return f"{column} = CASE WHEN {_NEWER} THEN {value} ELSE c.{column} END"


_DETAILS = ("platform_key", "platform_name", "source_type", "integration_id", "source_id",
            "link_url", "created", "last_sync", "errors")
# The verdict's own reason, as handlers.decide words it.
_REASON = """CASE w.result
    WHEN 'applied' THEN CASE
        WHEN w.skips THEN 'skipped states: ' || COALESCE(w.from_state, 'nothing heard')
            || ' -> ' || w.state
        WHEN w.inconsistent THEN 'legacy oldStatus is ' || w.previous
            || ', but the connection was ' || w.from_state END
    WHEN 'rejected' THEN w.from_state || ' never becomes ' || w.state
        || ' (its newest word is of ' || substr(w.stored_key, 3, 28) || ')'
    ELSE 'older than the newest word (' || substr(w.stored_key, 3, 28) || ')' END"""
# A company's details are refreshed by a word no older than the one that last refreshed them.
_REFRESH = """((co.last_event_at IS NULL OR excluded.last_event_at IS NULL
        OR excluded.last_event_at >= co.last_event_at)
    AND ((excluded.name IS NOT NULL AND co.name IS DISTINCT FROM excluded.name)
        OR (excluded.description IS NOT NULL
            AND co.description IS DISTINCT FROM excluded.description)
        OR (excluded.tags IS NOT NULL
            AND CAST(co.tags AS TEXT) IS DISTINCT FROM CAST(excluded.tags AS TEXT))))"""
_UNREADY = "co.bill_pay_ready AND co.linked_count + excluded.linked_count <= 0"
_CAUSE = """json_build_object('source', r.source, 'eventId', r.cause_id,
    'eventType', r.cause_type, 'deliveryId', r.delivery_id)"""

_STATEMENT = sql(f"""
WITH m AS (
    SELECT * FROM json_to_recordset($2::json)
        AS m({', '.join(f'{c} {t}' for c, t in _COLUMNS)})
), locked AS (
    -- Each stored company of the batch, KEY SHARE locked before any connection is written, and
    -- its company.deleted key as it is once locked: a company.deleted under way (it holds the
    -- company FOR UPDATE while it lists the connections, see store.delete_company) is waited
    -- for and seen here, or waits for this statement and then finds its connections.
    SELECT co.id, co.deleted_key FROM companies co
    WHERE co.id IN (SELECT company_id FROM m) ORDER BY co.id FOR KEY SHARE
), seen AS (
    -- What the snapshot holds of each message and company.
    SELECT m.ord, s.body_sha256 AS stored_sha256, s.outcome AS stored_outcome,
        co.id IS NOT NULL AS company_known, lk.deleted_key, co.name AS co_name,
        co.description AS co_description, CAST(co.tags AS TEXT) AS co_tags,
        co.last_event_at AS co_last_event_at
    FROM m LEFT JOIN deliveries s ON s.message_id = m.message_id
    LEFT JOIN companies co ON co.id = m.company_id LEFT JOIN locked lk ON lk.id = m.company_id
), fresh AS (
    INSERT INTO deliveries (message_id, msg_timestamp, event_id, event_type, company_id,
        connection_id, body, body_sha256, headers, secret_id, received_at, processed_at,
        outcome, error, attempts)
    SELECT m.message_id, m.msg_timestamp, m.d_event_id, m.d_event_type, m.d_company_id,
        m.d_connection_id, decode(m.body, 'base64'), m.body_sha256, m.headers::json,
        m.secret_id, m.received_at, m.received_at, m.outcome, m.error, 1
    FROM m JOIN seen ON seen.ord = m.ord
    WHERE seen.stored_sha256 IS NULL AND seen.deleted_key IS NULL
    ON CONFLICT (message_id) DO NOTHING
    RETURNING message_id
), go AS (
    -- Stored now, and a word not recorded before (the same event under another message id
    -- writes nothing more, as on the row path).
    SELECT m.* FROM m WHERE m.message_id IN (SELECT message_id FROM fresh)
        AND NOT EXISTS (SELECT 1 FROM connection_history h WHERE h.connection_id = m.id
            AND h.event_id = m.cause_id AND h.event_type = m.cause_type)
), up AS (
    -- Set if newer; the row comes back as it now is, its newest version, locked.
    INSERT INTO connections AS c (id, company_id, status, deleted, deleted_at, event_key,
        last_event_at, last_event_id, previous_state, version, created_at, updated_at,
        {', '.join(_DETAILS)})
    SELECT id, company_id, status, deleted, CASE WHEN deleted THEN $1::timestamptz END, key,
        event_time, cause_id, NULL, 1, $1, $1, {', '.join(_DETAILS[:-1])}, errors::json
    FROM go ORDER BY id
    ON CONFLICT (id) DO UPDATE SET
        {_if_newer('status', 'COALESCE(excluded.status, c.status)')},
        {_if_newer('deleted', 'excluded.deleted')},
        {_if_newer('deleted_at', 'CASE WHEN excluded.deleted THEN COALESCE(c.deleted_at, $1) END')},
        {_if_newer('event_key', 'excluded.event_key')},
        {_if_newer('last_event_at', 'excluded.last_event_at')},
        {_if_newer('last_event_id', 'excluded.last_event_id')},
        {_if_newer('previous_state', "CASE WHEN c.deleted THEN 'Deleted' ELSE c.status END")},
        {_if_newer('version', 'c.version + 1')},
        {_if_newer('updated_at', '$1')},
        {', '.join(_if_newer(d, f'COALESCE(excluded.{d}, c.{d})') for d in _DETAILS)}
    RETURNING c.id, c.status, c.deleted, c.event_key, c.previous_state, c.version
), v AS (
    SELECT go.*, u.event_key = go.key AS won, u.event_key AS stored_key,
        CASE WHEN u.event_key = go.key THEN CASE WHEN u.version > 1 THEN u.previous_state END
            WHEN u.deleted THEN 'Deleted' ELSE u.status END AS from_state
    FROM go JOIN up u ON u.id = go.id
), w AS (
    SELECT v.*,
        CASE WHEN v.won THEN 'applied'
            WHEN substr(v.key, 3) > substr(v.stored_key, 3) THEN 'rejected'
            ELSE 'superseded' END AS result,
        v.won AND NOT EXISTS (SELECT 1 FROM (VALUES {_EXPECTED}) e(f, t)
            WHERE e.f IS NOT DISTINCT FROM v.from_state AND e.t = v.state) AS skips,
        v.won AND v.previous IS NOT NULL AND v.from_state IS NOT NULL
            AND v.previous <> v.from_state AS inconsistent
    FROM v
), history AS (
    INSERT INTO connection_history (connection_id, company_id, from_state, to_state, result,
        skipped, source, event_id, event_type, delivery_id, event_time, event_key, recorded_at,
        reason)
    SELECT w.id, w.company_id, w.from_state, w.state, w.result, w.skips OR w.inconsistent,
        w.source, w.cause_id, w.cause_type, w.delivery_id, w.event_time, w.key, $1,
        NULLIF(concat_ws('; ', w.cause_reason, {_REASON}), '')
    FROM w
    ON CONFLICT (connection_id, event_id, event_type) DO NOTHING
    RETURNING connection_id
), r AS (
    -- Recorded now (a word recorded before is a replay: nothing more of it is written).
    SELECT w.*, {_REASON} AS reason,
        CASE WHEN w.result = 'applied' THEN (w.state = 'Linked')::int
            - COALESCE(w.from_state = 'Linked', FALSE)::int ELSE 0 END AS delta
    FROM w WHERE w.id IN (SELECT connection_id FROM history)
), said AS (
    -- Per company: what its newest word says of it, and how its Linked count moves.
    SELECT DISTINCT ON (go.company_id) go.company_id, go.name, go.description, go.tags,
        go.event_time, seen.company_known, seen.co_name, seen.co_description, seen.co_tags,
        seen.co_last_event_at,
        (SELECT COALESCE(SUM(r.delta), 0) FROM r WHERE r.company_id = go.company_id) AS delta
    FROM go JOIN seen ON seen.ord = go.ord
    ORDER BY go.company_id, go.event_time DESC NULLS LAST
), company AS (
    -- Only a company to create, count or refresh is written (and so locked).
    INSERT INTO companies AS co (id, name, description, tags, deleted, bill_pay_ready,
        linked_count, last_event_at, created_at, updated_at)
    SELECT company_id, name, description, tags::json, FALSE, FALSE, delta, event_time, $1, $1
    FROM said
    WHERE NOT company_known OR delta <> 0
        OR ((co_last_event_at IS NULL OR event_time IS NULL OR event_time >= co_last_event_at)
            AND ((name IS NOT NULL AND co_name IS DISTINCT FROM name)
                OR (description IS NOT NULL AND co_description IS DISTINCT FROM description)
                OR (tags IS NOT NULL AND co_tags IS DISTINCT FROM tags)))
    ORDER BY company_id
    ON CONFLICT (id) DO UPDATE SET
        linked_count = co.linked_count + excluded.linked_count,
        bill_pay_ready = co.bill_pay_ready AND co.linked_count + excluded.linked_count > 0,
        bill_pay_checked_at = CASE WHEN {_UNREADY} THEN $1 ELSE co.bill_pay_checked_at END,
        name = CASE WHEN {_REFRESH} THEN COALESCE(excluded.name, co.name) ELSE co.name END,
        description = CASE WHEN {_REFRESH} THEN COALESCE(excluded.description, co.description)
            ELSE co.description END,
        tags = CASE WHEN {_REFRESH} THEN COALESCE(excluded.tags, co.tags) ELSE co.tags END,
        last_event_at = CASE WHEN {_REFRESH}
            THEN COALESCE(excluded.last_event_at, co.last_event_at) ELSE co.last_event_at END,
        updated_at = $1
    -- RETURNING sees only new values: readiness was just cleared when it was checked at $1.
    RETURNING co.id, co.bill_pay_checked_at = $1 AND NOT co.bill_pay_ready AS unready
), feed AS (
    -- The changes, as schemas.changes words them; ids drawn now, after the rows were locked.
    INSERT INTO changes (type, at, company_id, connection_id, data)
    SELECT type, $1, company_id, connection_id, data FROM (
        SELECT 1 AS k, r.ord, CASE WHEN r.state = 'Deleted' THEN 'connection.deleted'
                ELSE 'connection.status_changed' END AS type, r.company_id,
            r.id AS connection_id,
            CASE WHEN r.state = 'Deleted' THEN json_build_object('from', r.from_state,
                    'cause', {_CAUSE})
                ELSE json_build_object('from', r.from_state, 'to', r.state,
                    'skipped', r.skips OR r.inconsistent, 'cause', {_CAUSE}) END AS data
        FROM r WHERE r.result = 'applied' AND r.from_state IS DISTINCT FROM r.state
        UNION ALL
        SELECT 2, 0, '{ChangeType.READY_CHANGED}', c.id, NULL,
            json_build_object('ready', FALSE, 'whyNot',
                json_build_array('{NO_LINKED_CONNECTION}'))
        FROM company c WHERE c.unready
    ) x ORDER BY k, ord
    RETURNING id
), notified AS (
    SELECT pg_notify('{CHANNEL}', '') FROM (SELECT 1 FROM feed LIMIT 1) f
), jobs AS (
    INSERT INTO outbox (id, kind, dedupe_key, company_id, connection_id, payload, status,
        attempts, max_attempts, next_attempt_at, created_at, updated_at)
    -- ids as store.job_id makes them: creation in milliseconds first, then random
    SELECT lpad(to_hex(CAST(floor(extract(epoch FROM CAST($1 AS timestamptz)) * 1000) AS bigint)),
            12, '0') || left(replace(CAST(gen_random_uuid() AS TEXT), '-', ''), 20),
        kind, dedupe_key, company_id, id,
        '{{}}', 'pending', 0, $3, $1, $1, $1
    FROM (SELECT 'confirm_connection' AS kind, 'confirm:' || id || ':' || cause_id AS dedupe_key,
              company_id, id
          FROM r WHERE result = 'applied' AND state = 'Linked'
              AND from_state IS DISTINCT FROM 'Linked'
          UNION ALL
          SELECT 'reconcile_connection', 'reconcile:' || id || ':' || cause_id, company_id, id
          FROM r WHERE source = 'webhook' AND (skips OR inconsistent OR result = 'rejected')
    ) j
    ORDER BY dedupe_key
    ON CONFLICT (dedupe_key) DO NOTHING
)
SELECT m.ord, seen.stored_sha256, seen.stored_outcome,
    m.message_id IN (SELECT message_id FROM fresh) AS fresh, r.id IS NOT NULL AS recorded,
    r.result, r.from_state, r.skips OR r.inconsistent AS skipped, r.reason
FROM m JOIN seen ON seen.ord = m.ord LEFT JOIN r ON r.id = m.id AND m.message_id IN (
    SELECT message_id FROM fresh)
CROSS JOIN (SELECT COUNT(*) FROM notified) woken
ORDER BY m.ord""")


@dataclass(frozen=True, slots=True)
class Done:
    """What the statement did with one connection event."""

    connection_id: str
    verdicts: list[Verdict]  # empty for a word recorded before (a replay: nothing moved)
    stored_outcome: str | None = None  # not None: a duplicate, stored before with this outcome


Item = tuple[NewDelivery, DeliveryFacts, Event | None, str | None]
_TRIES = 3  # a deadlock with another replica's statement: try again, then leave it


async def connection_events(tx: Tx, items: Sequence[Item], *,
                            max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> list[Done | None]:
    """Store and apply what can go at once of ``items`` (delivery, facts, event, evidence),
    OUTSIDE a transaction: one statement per run of events that name no message id and no
    connection twice (each commits on its own). None for each item left to the row path."""
    results: list[Done | None] = [None] * len(items)
    words: list[tuple[int, Word]] = []
    for index, (delivery, _, event, evidence) in enumerate(items):
        if isinstance(event, ConnectionEvent):
            word = word_of_event(event, delivery_id=delivery.message_id, evidence=evidence)
            if word.key is not None:
                words.append((index, word))
    for run in _runs(items, words):
        try:
            done = await _write(tx, items, run, max_attempts)
        except Exception as exc:
            if is_unavailable(exc):
                break  # committed runs keep their answers; the rest gets the row path's
            if len(run) > 1:
                done = {}
                for one in run:  # so that only the event the statement failed on fails
                    try:
                        done.update(await _write(tx, items, [one], max_attempts))
                    except Exception as alone:
                        if is_unavailable(alone):
                            break
                        log.warning("an event failed the batch statement; the row path takes "
                                    "it", exc_info=alone)
            else:
                log.warning("an event failed the batch statement; the row path takes it",
                            exc_info=exc)
                continue
        for index, result in done.items():
            results[index] = result
    return results


def _runs(items: Sequence[Item], words: list[tuple[int, Word]]) -> list[list[tuple[int, Word]]]:
    """Cut wherever a word names a message id or a connection its run already names: a
    statement writes each row once."""
    runs: list[list[tuple[int, Word]]] = []
    named: set[str] = set()
    for index, word in words:
        keys = {"m" + items[index][0].message_id, "c" + word.connection_id}
        if not runs or not named.isdisjoint(keys):
            runs.append([])
            named = set()
        runs[-1].append((index, word))
        named |= keys
    return runs


async def _write(tx: Tx, items: Sequence[Item], run: list[tuple[int, Word]],
                 max_attempts: int) -> dict[int, Done]:
    rows = orjson.dumps([dict(zip((c for c, _ in _COLUMNS), _row(items[i], w, i), strict=True))
                         for i, w in run]).decode()
    for attempt in range(_TRIES):
        try:
            found = await tx.fetch(_STATEMENT, utcnow(), rows, max_attempts)
            break
        except Contended:
            if attempt == _TRIES - 1:
                return {}
            await asyncio.sleep(random.uniform(0, 0.01 * 2 ** attempt))
    words = dict(run)
    done: dict[int, Done] = {}
    for row in found:
        index = int(row["ord"])
        word = words[index]
        if row["fresh"]:
            verdicts = []
            if row["recorded"]:
                from_state = None if row["from_state"] is None else State(row["from_state"])
                verdicts.append(verdict(word, MoveResult(row["result"]), from_state,
                                        skipped=row["skipped"], reason=row["reason"]))
            done[index] = Done(word.connection_id, verdicts)
        elif row["stored_sha256"] == items[index][0].sha256 \
                and row["stored_outcome"] != "failed":
            done[index] = Done(word.connection_id, [], row["stored_outcome"])
    return done


def _row(item: Item, word: Word, ord: int) -> tuple[Any, ...]:
    d, f, _, _ = item
    company, info, cause = word.company, word.info, word.cause
    deleted = word.state is State.DELETED
    return (
        d.message_id, d.timestamp, f.event_id, f.event_type, f.company_id, f.connection_id,
        base64.b64encode(d.body).decode(), d.sha256, to_json(d.headers), d.secret_id,
        d.received_at, f.outcome, f.error,
        word.connection_id, word.company_id,
        *((None,) * 3 if company is None
          else (company.name, company.description, to_json(company.tags))),
        word.state.value, word.key, word.source.value, cause.id, cause.type, cause.delivery_id,
        cause.time, cause.reason, None if word.previous is None else word.previous.value,
        None if info is None else info.status.value, deleted,
        *((None,) * 8 if info is None else (
            info.platform_key, info.platform_name, info.source_type, info.integration_id,
            info.source_id, info.link_url, info.created, info.last_sync)),
        to_json(word.errors), ord)
