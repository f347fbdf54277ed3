"""Prometheus metrics, on a registry of the app's own (several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from service.recent import MinuteCounts

# Why a delivery is refused before storage: the receiver's errors, and svix verification's
# reasons (service/verify.py).
REFUSAL_REASONS = ("MissingHeaders", "PayloadTooLarge", "malformed_timestamp",
                   "timestamp_too_old", "timestamp_too_new", "malformed_signature",
                   "no_matching_signature")


class Metrics:
    """Every metric the service exports at /metrics."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.deliveries = Counter(
            "codat_hooks_deliveries", "Webhook deliveries by outcome and disposition",
            ["outcome", "disposition"], registry=r)
        self.rejected = Counter(
            "codat_hooks_deliveries_rejected", "Deliveries refused before storage, by reason",
            ["reason"], registry=r)
        for reason in REFUSAL_REASONS:  # at 0 from the start, so the first burst is a rise
            self.rejected.labels(reason)
        self.verified_by = Counter(
            "codat_hooks_verified_by_secret", "Verified deliveries by the secret that verified "
            "them (to see when an old secret can be retired)", ["secret_id"], registry=r)
        self.transitions = Counter(
            "codat_hooks_transitions", "Connection moves by from/to state, result and source",
            ["from_state", "to_state", "result", "source"], registry=r)
        self.skipped_moves = Counter(
            "codat_hooks_skipped_moves", "Applied moves that skipped states (events were "
            "missed, or came out of order): each queued a reconcile", ["from_state", "to_state"],
            registry=r)
        self.db_unavailable = Counter(
            "codat_hooks_db_unavailable", "Requests answered 503 because the database could "
            "not be written", registry=r)
        self.outbox_jobs = Gauge(
            "codat_hooks_outbox_jobs", "Outbox jobs by status", ["status"], registry=r)
        self.outbox_oldest_due_age = Gauge(
            "codat_hooks_outbox_oldest_due_age_seconds",
            "Age of the oldest pending job that is due", registry=r)
        self.job_runs = Counter(
            "codat_hooks_job_runs", "Follow-up job attempts by kind and result",
            ["kind", "result"], registry=r)
        self.codat_calls = Counter(
            "codat_hooks_codat_calls", "Codat API calls by endpoint and status",
            ["endpoint", "status"], registry=r)
        self.codat_quota_remaining = Gauge(
            "codat_hooks_codat_quota_remaining", "Codat's X-Rate-Limit-Remaining, last seen",
            registry=r)
        self.worker_heartbeat = Gauge(
            "codat_hooks_worker_heartbeat_timestamp_seconds",
            "Unix time the worker's loop last went round (one series per running worker)",
            ["worker_id"], registry=r)
        self.ready = Gauge(
            "codat_hooks_ready", "1 while /readyz answers ready (database reachable, "
            "migrations current), else 0; refreshed at each scrape", registry=r)
        self.codat_circuit_open = Gauge(
            "codat_hooks_codat_circuit_open", "1 while Codat calls wait because the last few "
            "failed (unreachable, timed out or 5xx); one is tried again after a while",
            registry=r)
        self.codat_paused = Gauge(
            "codat_hooks_codat_paused_seconds", "Seconds until Codat's rate-limit pause ends "
            "(0: not paused); every Codat call waits for it", registry=r)
        self.http_refused = Counter(
            "codat_hooks_http_refused", "Requests and connections refused by the server's own "
            "limits (head size, deadlines, the connection cap), by reason", ["reason"],
            registry=r)
        self.log_suppressed = Counter(
            "codat_hooks_log_lines_suppressed", "Log lines not written because their rate "
            "limit was reached, by kind", ["kind"], registry=r)
        self.request_latency = Histogram(
            "codat_hooks_request_seconds", "HTTP request latency by route and status class",
            ["route", "status"], registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        # Refusals per minute, for the on-call page's chart (the database never sees them).
        self.recent_refusals = MinuteCounts()

    def refused(self, reason: str) -> None:
        """A delivery refused before storage, for ``reason``."""
        self.rejected.labels(reason).inc()
        self.recent_refusals.add(reason)
