"""Push: every change of the feed POSTed to each subscriber (FEED_SUBSCRIPTIONS), signed the
Standard Webhooks way, through the outbox.

The worker hands each subscriber's new changes to the outbox (:func:`fan_out`): one job per
change, in a sequence per (subscriber, connection), so a subscriber gets a connection's
changes in order, each at least once, retried with backoff and dead after the limit (retryable
from the CLI) like every other job. Nothing of this is on the delivery path: a subscriber that
is down costs the receiver nothing but the rows of its backlog.

Each push is ``POST url`` with the change as the feed shows it (``GET /v1/events``) and the
headers ``webhook-id`` (``chg_<id>``: the same on every retry, for the subscriber to dedupe),
``webhook-timestamp`` and ``webhook-signature`` (``v1,<base64 HMAC-SHA256>`` with the
subscription's ``whsec_`` secret; verify with any Standard Webhooks library, or svix's).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
from standardwebhooks.webhooks import Webhook

from schemas.commands import JobKind
from service import feed
from service.db import Database, Tx, from_json, sql, utcnow
from service.errors import PushFailed
from service.settings import Subscription
from service.store import DEFAULT_MAX_ATTEMPTS

HANDOFF = 500  # changes a fan-out hands over per subscriber at a time

_CURSOR = sql("SELECT position FROM subscriber_cursors WHERE name = $1{lock}")
_START = sql("""
INSERT INTO subscriber_cursors (name, position, updated_at) VALUES ($1, $2, $3)
ON CONFLICT (name) DO NOTHING""")
_MOVE = sql("UPDATE subscriber_cursors SET position = $2, updated_at = $3 WHERE name = $1")
_CHANGES = sql("""
SELECT id, type, at, company_id, connection_id, data FROM changes
WHERE id > $1 AND id <= $2 ORDER BY id LIMIT $3""")
_JOB = sql("""
INSERT INTO outbox (id, kind, dedupe_key, company_id, connection_id, payload, sequence, ordinal,
    status, attempts, max_attempts, next_attempt_at, created_at, updated_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'pending', 0, $9, $10, $10, $10)
ON CONFLICT (dedupe_key) DO NOTHING""")


async def fan_out(db: Database, subscriptions: tuple[Subscription, ...], horizon: int, *,
                  max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> int:
    """Hand each subscriber's changes up to ``horizon`` to the outbox; how many jobs."""
    queued = 0
    for subscription in subscriptions:
        queued += await db.write(lambda tx, s=subscription: _hand_over(  # type: ignore[misc]
            tx, s, horizon, max_attempts))
    return queued


async def _hand_over(tx: Tx, subscription: Subscription, horizon: int,
                     max_attempts: int) -> int:
    now = utcnow()
    # A new subscriber starts with what changes next, not the whole history.
    await tx.execute(_START, subscription.name, horizon, now)
    position = int(await tx.fetchval(_CURSOR, subscription.name))
    rows = await tx.fetch(_CHANGES, position, horizon, HANDOFF)
    queued = 0
    for row in rows:
        if subscription.types and row["type"] not in subscription.types:
            continue
        change = feed.change_json(row)
        subject = row["connection_id"] or row["company_id"]
        await tx.execute(
            _JOB, f"push-{subscription.name}-{row['id']}", JobKind.PUSH_CHANGE.value,
            f"push:{subscription.name}:{row['id']}", row["company_id"], row["connection_id"],
            orjson.dumps({"subscriber": subscription.name, "change": change}).decode(),
            f"push:{subscription.name}:{subject}", int(row["id"]), max_attempts, now)
        queued += 1
    if rows:
        await tx.execute(_MOVE, subscription.name, int(rows[-1]["id"]), now)
    return queued


class Pusher:
    """POSTs one change to its subscriber; raises PushFailed (retryable) for any answer but 2xx,
    with the subscriber's Retry-After."""

    def __init__(self, subscriptions: tuple[Subscription, ...], client: httpx.AsyncClient) -> None:
        self._by_name = {s.name: s for s in subscriptions}
        self._client = client

    async def push(self, payload: dict[str, Any]) -> str:
        subscription = self._by_name.get(str(payload.get("subscriber")))
        if subscription is None:
            raise PushFailed(f"no subscription {payload.get('subscriber')!r} is configured now "
                             "(it may come back)")
        change = payload["change"]
        body = orjson.dumps(change)
        message_id = f"chg_{change['id']}"
        when = datetime.now(UTC)
        signature = Webhook(subscription.secret).sign(message_id, when, body.decode())
        headers = {"content-type": "application/json", "webhook-id": message_id,
                   "webhook-timestamp": str(int(when.timestamp())),
                   "webhook-signature": signature, "user-agent": "codat-hooks"}
        try:
            response = await self._client.post(subscription.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise PushFailed(f"push to {subscription.name} failed: {type(exc).__name__}") from None
        if not response.is_success:
            retry_after = response.headers.get("retry-after", "")
            raise PushFailed(f"push to {subscription.name} answered {response.status_code}",
                             retry_after=float(retry_after) if retry_after.isdigit() else None)
        return f"pushed change {change['id']} to {subscription.name}"


def payload_of(raw: Any) -> dict[str, Any]:
    value = from_json(raw) if isinstance(raw, str) else raw
    return value if isinstance(value, dict) else {}
