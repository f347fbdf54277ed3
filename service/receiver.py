"""POST /webhooks/codat: the delivery path, and the hot path.

Per delivery, in this order: size limit (413), signature headers (400), body read under the
limit (413), verification (401), then ONE transaction that stores the delivery with everything
it causes (:mod:`service.ingest`). The answer is 2xx only after that commit; 503 with
Retry-After when the database cannot be written; 500 when our own processing failed (the
delivery is then kept, marked failed, and processed again when Codat retries).
"""

from __future__ import annotations

import time
import traceback

import orjson
from starlette.requests import Request
from starlette.responses import Response

from service.db import Database
from service.errors import DatabaseUnavailable, InvalidSignature, ReceiverError
from service.ingest import (
    Disposition,
    Examined,
    Ingest,
    IngestResult,
    Outcome,
    examine,
    new_delivery,
    record_failure,
)
from service.limits import check_declared_length, read_body
from service.logs import get_logger
from service.metrics import Metrics
from service.pacing import Pressure
from service.refusals import RefusalLog
from service.store import NewDelivery
from service.untrusted import clip
from service.verify import Verifier, signed_headers

log = get_logger("receiver")

# Headers kept with a delivery for on-call. Never the signature.
_KEPT_HEADERS = ("svix-id", "svix-timestamp", "webhook-id", "webhook-timestamp", "user-agent",
                 "content-type", "content-length", "x-codat-clientid")


def _first_values(request: Request) -> dict[str, str]:
    """Each header's first value by its (lower-case) name, in one pass: asking starlette for
    each of a dozen names would scan every header each time."""
    return {name.decode("latin-1"): value.decode("latin-1")
            for name, value in reversed(request.headers.raw)}


def _json(status: int, content: dict[str, object], headers: dict[str, str] | None = None,
          ) -> Response:
    return Response(orjson.dumps(content), status, headers, media_type="application/json")


class Receiver:
    """The webhook endpoint, with what it needs passed in (no globals)."""

    def __init__(self, *, db: Database, verifier: Verifier, metrics: Metrics,
                 max_body_bytes: int, retry_after_seconds: int,
                 refusals: RefusalLog | None = None) -> None:
        self._db = db
        self._verifier = verifier
        self._metrics = metrics
        self._refusals = refusals or RefusalLog(metrics)
        self._max_body = max_body_bytes
        self._retry_after = str(retry_after_seconds)
        self.pressure = Pressure()  # an embedded worker yields to deliveries (service/pacing.py)

    async def __call__(self, request: Request) -> Response:
        started = time.perf_counter()
        try:
            check_declared_length(request, self._max_body)
            named = _first_values(request)
            signed = signed_headers(named)
            body = await read_body(request, self._max_body)
            secret_id = self._verifier.verify(body, signed)
        except ReceiverError as exc:
            reason = exc.reason if isinstance(exc, InvalidSignature) else type(exc).__name__
            self._metrics.refused(reason)
            # Anyone can be refused: the line is rate-limited and its untrusted id clipped.
            self._refusals.log(log, "delivery refused", {
                "message_id": clip(request.headers.get("svix-id")
                                   or request.headers.get("webhook-id")),
                "event_id": None, "event_type": None, "company_id": None,
                "connection_id": None, "outcome": "refused", "transitions": [],
                "status": exc.status_code, "reason": reason,
                "duration_ms": round((time.perf_counter() - started) * 1000, 3)})
            return _json(exc.status_code, {"error": str(exc)})
        # Only an authentic delivery makes an embedded worker yield: refused traffic, however
        # much of it, cannot hold follow-up work back.
        self.pressure.delivered()
        self._metrics.verified_by.labels(secret_id).inc()
        headers = {k: v for k in _KEPT_HEADERS if (v := named.get(k)) is not None}
        delivery = new_delivery(message_id=signed.message_id, timestamp=int(signed.timestamp),
                                body=body, secret_id=secret_id, headers=headers)
        examined = examine(body, message_id=delivery.message_id, timestamp=delivery.timestamp)
        facts = examined.facts  # from a signed body, still capped and escaped in the logs
        fields: dict[str, object] = {
            "message_id": clip(delivery.message_id), "event_id": clip(facts.event_id),
            "event_type": clip(facts.event_type), "company_id": clip(facts.company_id),
            "connection_id": clip(facts.connection_id)}
        try:
            # Deliveries about one connection share a commit partition (see service/db.py).
            affinity = (examined.facts.connection_id or examined.facts.company_id
                        or delivery.message_id)
            result = await self._db.write(Ingest(delivery, examined), affinity=affinity)
        except DatabaseUnavailable as exc:
            self._metrics.db_unavailable.inc()
            log.warning("database unavailable, asked Codat to retry", extra={"fields": {
                **fields, "outcome": "unavailable", "transitions": [], "status": 503,
                "error": str(exc),
                "duration_ms": round((time.perf_counter() - started) * 1000, 3)}})
            return _json(503, {"error": "database unavailable, retry later"},
                         {"Retry-After": self._retry_after})
        except Exception as exc:
            return await self._failed(delivery, examined, exc, fields, started)
        return self._answer(result, fields, started)

    def _answer(self, result: IngestResult, fields: dict[str, object],
                started: float) -> Response:
        self._metrics.deliveries.labels(result.outcome.value, result.disposition.value).inc()
        transitions = []
        for _, move in result.applied.moves:
            from_state = move.from_state or "none"
            self._metrics.transitions.labels(from_state, move.to_state, move.result,
                                             move.source).inc()
            if move.skipped:
                self._metrics.skipped_moves.labels(from_state, move.to_state).inc()
            transitions.append({"from": move.from_state, "to": move.to_state,
                                "result": move.result, "skipped": move.skipped})
        status = 409 if result.disposition is Disposition.CONFLICT else 200
        log.info("delivery", extra={"fields": {
            **fields, "outcome": result.outcome, "disposition": result.disposition,
            "transitions": transitions, "jobs": result.applied.jobs, "status": status,
            "duration_ms": round((time.perf_counter() - started) * 1000, 3)}})
        if status == 409:
            return _json(409, {"error": "this message id was delivered before with another body",
                               "disposition": result.disposition})
        return _json(200, {"outcome": result.outcome, "disposition": result.disposition})

    async def _failed(self, delivery: NewDelivery, examined: Examined, exc: Exception,
                      fields: dict[str, object], started: float) -> Response:
        # The transaction rolled back. Keep the delivery, marked failed, in a write of its own,
        # and answer 500 so Codat retries; the retry processes it again.
        error = "".join(traceback.format_exception_only(exc)).strip()[:2000]
        try:
            await self._db.write(lambda tx: record_failure(tx, delivery, examined, error))
        except Exception:
            log.exception("could not record a failed delivery", extra={"fields": fields})
        self._metrics.deliveries.labels(Outcome.FAILED.value, "failed").inc()
        log.error("delivery processing failed", exc_info=exc, extra={"fields": {
            **fields, "outcome": Outcome.FAILED, "transitions": [], "status": 500,
            "duration_ms": round((time.perf_counter() - started) * 1000, 3)}})
        return _json(500, {"error": "processing failed; the delivery is kept and will be "
                                    "processed again when retried"})
