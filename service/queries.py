"""Read-side queries, shaped as Codat-style camelCase JSON for the query API and the CLI."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

from schemas.state import ConnectionStatus
from schemas.webhook import parse_datetime
from service.db import Row, Sql, Tx, as_dt, from_json, sql

MAX_LIMIT = 500


class BadQuery(ValueError):
    """A query parameter that cannot be used; the message says which and why."""


def _iso(value: Any) -> str | None:
    moment = as_dt(value)
    return None if moment is None else moment.isoformat().replace("+00:00", "Z")


_CONNECTION_COLUMNS = """id, company_id, platform_key, platform_name, source_type, integration_id,
    source_id, link_url, status, errors, created, last_sync, deleted, deleted_at, last_event_at,
    last_event_id, previous_state, version, created_at, updated_at"""


CONNECTION_COLUMNS_OF_C = ", ".join(f"c.{c.strip()}" for c in _CONNECTION_COLUMNS.split(","))
# What history_json reads of a connection_history row.
HISTORY_COLUMNS = """id, connection_id, company_id, from_state, to_state, result, skipped, source,
    event_id, event_type, delivery_id, event_time, event_key, recorded_at, reason"""
HISTORY_COLUMNS_OF_H = ", ".join(f"h.{c.strip()}" for c in HISTORY_COLUMNS.split(","))


def connection_json(row: Row) -> dict[str, Any]:
    return {
        "id": row["id"], "companyId": row["company_id"], "platformKey": row["platform_key"],
        "platformName": row["platform_name"], "sourceType": row["source_type"],
        "integrationId": row["integration_id"], "sourceId": row["source_id"],
        "status": row["status"], "linkUrl": row["link_url"], "created": _iso(row["created"]),
        "lastSync": _iso(row["last_sync"]), "lastEventAt": _iso(row["last_event_at"]),
        "lastEventId": row["last_event_id"], "previousState": row["previous_state"],
        "updatedAt": _iso(row["updated_at"]),
        "deleted": bool(row["deleted"]), "deletedAt": _iso(row["deleted_at"]),
        "errors": from_json(row["errors"]) or [], "version": row["version"],
    }


_GET_CONNECTION = sql(f"SELECT {_CONNECTION_COLUMNS} FROM connections WHERE id = $1")
_COMPANY_CONNECTIONS = sql(
    f"SELECT {_CONNECTION_COLUMNS} FROM connections WHERE company_id = $1 ORDER BY id")
_GET_COMPANY = sql("""
SELECT id, name, description, tags, redirect, products, created, deleted, deleted_at,
    bill_pay_ready, bill_pay_checked_at, bill_pay_detail, last_event_at, created_at, updated_at
FROM companies WHERE id = $1""")
_COMPANY_DATA_TYPES = sql("""
SELECT data_type, connection_id, status, records_modified, issues, event_time
FROM data_type_status WHERE company_id = $1 ORDER BY data_type""")


async def get_connection(tx: Tx, connection_id: str) -> dict[str, Any] | None:
    row = await tx.fetchrow(_GET_CONNECTION, connection_id)
    return None if row is None else connection_json(row)


async def company_connections(tx: Tx, company_id: str) -> list[dict[str, Any]]:
    return [connection_json(r) for r in await tx.fetch(_COMPANY_CONNECTIONS, company_id)]


async def get_company(tx: Tx, company_id: str) -> dict[str, Any] | None:
    row = await tx.fetchrow(_GET_COMPANY, company_id)
    if row is None:
        return None
    data_types = [{
        "dataType": r["data_type"], "status": r["status"], "connectionId": r["connection_id"],
        "recordsModified": None if r["records_modified"] is None else bool(r["records_modified"]),
        "issues": from_json(r["issues"]) or [], "lastReadAt": _iso(r["event_time"]),
    } for r in await tx.fetch(_COMPANY_DATA_TYPES, company_id)]
    return {
        "id": row["id"], "name": row["name"], "description": row["description"],
        "tags": from_json(row["tags"]) or {}, "redirect": row["redirect"],
        "products": from_json(row["products"]) or [], "created": _iso(row["created"]),
        "deleted": bool(row["deleted"]), "deletedAt": _iso(row["deleted_at"]),
        "billPayReady": bool(row["bill_pay_ready"]),
        "billPayCheckedAt": _iso(row["bill_pay_checked_at"]),
        "billPayDetail": from_json(row["bill_pay_detail"]),
        "dataTypes": data_types, "lastEventAt": _iso(row["last_event_at"]),
        "createdAt": _iso(row["created_at"]), "updatedAt": _iso(row["updated_at"]),
        "dataConnections": await company_connections(tx, company_id),
    }


# --- keyset pagination -----------------------------------------------------------------------

def encode_cursor(last: str) -> str:
    return base64.urlsafe_b64encode(last.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        return base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_",
                                validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise BadQuery("cursor: not a cursor this API returned") from None


def parse_limit(raw: str | None, default: int = 100) -> int:
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_LIMIT:
        raise BadQuery(f"limit: must be a whole number from 1 to {MAX_LIMIT}")
    return int(raw)


@dataclass(frozen=True, slots=True)
class ConnectionFilter:
    status: str | None = None
    platform_key: str | None = None
    company_id: str | None = None

    def __post_init__(self) -> None:
        if self.status is not None and self.status not in set(ConnectionStatus) | {"Deleted"}:
            known = ", ".join([*ConnectionStatus, "Deleted"])
            raise BadQuery(f"status: unknown value {self.status!r} (known: {known})")


@cache
def _list_connections_sql(status: bool, deleted: bool, platform: bool, company: bool,
                          after: bool) -> Sql:
    # One statement per combination of filters, built once: every one can use an index.
    clauses, n = [], 0
    for present, clause in ((status, "status = ${} AND deleted = FALSE"),
                            (deleted, "deleted = TRUE"), (platform, "platform_key = ${}"),
                            (company, "company_id = ${}"), (after, "id > ${}")):
        if present:
            if "${}" in clause:
                n += 1
            clauses.append(clause.format(n))
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    return sql(f"SELECT {_CONNECTION_COLUMNS} FROM connections {where} ORDER BY id "
               f"LIMIT ${n + 1}")


async def list_connections(tx: Tx, filters: ConnectionFilter, *, limit: int,
                           cursor: str | None) -> dict[str, Any]:
    """One page of connections in id order; ``nextCursor`` is null on the last page."""
    by_status = filters.status is not None and filters.status != "Deleted"
    args: list[Any] = [v for v in (filters.status if by_status else None, filters.platform_key,
                                   filters.company_id) if v is not None]
    after = decode_cursor(cursor) if cursor else None
    if after is not None:
        args.append(after)
    statement = _list_connections_sql(by_status, filters.status == "Deleted",
                                      filters.platform_key is not None,
                                      filters.company_id is not None, after is not None)
    rows = await tx.fetch(statement, *args, limit + 1)
    page = [connection_json(r) for r in rows[:limit]]
    more = len(rows) > limit
    return {"results": page, "nextCursor": encode_cursor(page[-1]["id"]) if more else None}


# --- history, deliveries ---------------------------------------------------------------------

_HISTORY = sql(f"""
SELECT {HISTORY_COLUMNS}
FROM connection_history WHERE connection_id = $1 AND id > $2 ORDER BY id LIMIT $3""")


def history_json(row: Row) -> dict[str, Any]:
    return {
        "id": row["id"], "connectionId": row["connection_id"], "companyId": row["company_id"],
        "fromState": row["from_state"], "toState": row["to_state"], "result": row["result"],
        "skipped": bool(row["skipped"]), "source": row["source"], "eventId": row["event_id"],
        "eventType": row["event_type"],
        "deliveryId": row["delivery_id"], "eventTime": _iso(row["event_time"]),
        "orderKey": row["event_key"], "recordedAt": _iso(row["recorded_at"]),
        "reason": row["reason"],
    }


async def connection_history(tx: Tx, connection_id: str, *, limit: int,
                             cursor: str | None) -> dict[str, Any]:
    after = 0
    if cursor:
        position = decode_cursor(cursor)
        if not (position.isascii() and position.isdigit()):
            raise BadQuery("cursor: not a cursor of this connection's history")
        after = int(position)
    rows = await tx.fetch(_HISTORY, connection_id, after, limit + 1)
    page = [history_json(r) for r in rows[:limit]]
    more = len(rows) > limit
    return {"results": page, "nextCursor": encode_cursor(str(page[-1]["id"])) if more else None}


_GET_DELIVERY = sql("""
SELECT message_id, msg_timestamp, event_id, event_type, company_id, connection_id, body,
    body_sha256, headers, secret_id, received_at, processed_at, outcome, error, attempts,
    (SELECT COUNT(*) FROM delivery_conflicts c WHERE c.message_id = d.message_id) AS conflicts
FROM deliveries d WHERE message_id = $1""")


def body_json(body: bytes | None) -> dict[str, Any] | None:
    if body is None:
        return None
    try:
        return {"encoding": "utf-8", "text": bytes(body).decode("utf-8")}
    except UnicodeDecodeError:
        return {"encoding": "base64", "text": base64.b64encode(body).decode()}


def delivery_json(row: Row, *, include_body: bool) -> dict[str, Any]:
    result = {
        "messageId": row["message_id"], "timestamp": row["msg_timestamp"],
        "eventId": row["event_id"], "eventType": row["event_type"],
        "companyId": row["company_id"], "connectionId": row["connection_id"],
        "bodySha256": row["body_sha256"], "secretId": row["secret_id"],
        "headers": from_json(row["headers"]) or {}, "receivedAt": _iso(row["received_at"]),
        "processedAt": _iso(row["processed_at"]), "outcome": row["outcome"],
        "error": row["error"], "attempts": row["attempts"], "conflicts": row["conflicts"],
        "bodyPruned": row["body"] is None,
    }
    if include_body:
        result["body"] = body_json(row["body"])
    return result


async def get_delivery(tx: Tx, message_id: str, *, include_body: bool) -> dict[str, Any] | None:
    row = await tx.fetchrow(_GET_DELIVERY, message_id)
    return None if row is None else delivery_json(row, include_body=include_body)


def parse_time(raw: str) -> datetime:
    try:
        moment = parse_datetime(raw)
    except ValueError:
        moment = None
    if moment is None:
        raise BadQuery(f"{raw!r} is not an ISO-8601 date-time")
    return moment


_RECENT_HISTORY = sql(f"""
SELECT {HISTORY_COLUMNS}
FROM connection_history WHERE connection_id = $1 ORDER BY id DESC LIMIT $2""")


_SINCE = sql("""
SELECT recorded_at FROM connection_history
WHERE connection_id = $1 AND result = 'applied' AND to_state = $2
    AND (from_state IS NULL OR from_state <> to_state)
ORDER BY id DESC LIMIT 1""")


async def in_state_since(tx: Tx, connection_id: str, state: str) -> str | None:
    """When the connection last moved into ``state`` (None: no such move recorded)."""
    return _iso(await tx.fetchval(_SINCE, connection_id, state))


async def recent_history(tx: Tx, connection_id: str, *, limit: int) -> list[dict[str, Any]]:
    """The newest ``limit`` history rows of a connection, oldest first."""
    rows = await tx.fetch(_RECENT_HISTORY, connection_id, limit)
    return [history_json(r) for r in reversed(rows)]


@cache
def _list_deliveries_sql(outcome: bool, after: bool) -> Sql:
    clauses, n = ["received_at >= $1"], 1
    if outcome:
        n += 1
        clauses.append(f"outcome = ${n}")
    if after:
        clauses.append(f"(received_at, message_id) > (${n + 1}, ${n + 2})")
        n += 2
    return sql(f"""
SELECT message_id, msg_timestamp, event_id, event_type, company_id, connection_id, NULL AS body,
    body_sha256, headers, secret_id, received_at, processed_at, outcome, error, attempts,
    0 AS conflicts
FROM deliveries WHERE {' AND '.join(clauses)} ORDER BY received_at, message_id
LIMIT ${n + 1}""")


async def list_deliveries(tx: Tx, *, since: datetime, outcome: str | None, limit: int,
                          after: tuple[datetime, str] | None = None) -> list[dict[str, Any]]:
    """Deliveries received since ``since``, oldest first, optionally of one outcome."""
    args: list[Any] = [since]
    if outcome:
        args.append(outcome)
    if after:
        args += list(after)
    rows = await tx.fetch(_list_deliveries_sql(bool(outcome), after is not None), *args, limit)
    return [delivery_json(r, include_body=False) | {"_receivedAt": as_dt(r["received_at"])}
            for r in rows]


_COMPANY_IDS = sql(
    "SELECT id FROM companies WHERE deleted = FALSE AND id > $1 ORDER BY id LIMIT $2")


async def company_ids(tx: Tx, *, after: str, limit: int) -> list[str]:
    return [r["id"] for r in await tx.fetch(_COMPANY_IDS, after, limit)]


@cache
def _names_sql(count: int) -> Sql:
    marks = ", ".join(f"${n}" for n in range(1, count + 1))
    return sql(f"SELECT id, name FROM companies WHERE id IN ({marks})")


async def company_names(tx: Tx, company_ids: list[str | None]) -> dict[str, str | None]:
    """The names of these companies (by primary key), for tables that show ids."""
    wanted = sorted({c for c in company_ids if c})
    names: dict[str, str | None] = {}
    for start in range(0, len(wanted), 100):
        chunk = wanted[start:start + 100]
        for row in await tx.fetch(_names_sql(len(chunk)), *chunk):
            names[row["id"]] = row["name"]
    return names


async def with_company_names(tx: Tx, rows: list[dict[str, Any]],
                             key: str = "companyId") -> list[dict[str, Any]]:
    """``rows``, each with ``companyName`` beside its ``key``."""
    names = await company_names(tx, [r.get(key) for r in rows])
    for row in rows:
        row["companyName"] = names.get(row.get(key) or "")
    return rows
