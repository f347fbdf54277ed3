"""Prometheus metrics, on a registry of the app's own (several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


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
        self.verified_by = Counter(
            "codat_hooks_verified_by_secret", "Verified deliveries by the secret that verified "
            "them (to see when an old secret can be retired)", ["secret_id"], registry=r)
        self.transitions = Counter(
            "codat_hooks_transitions", "Connection moves by from/to state, result and source",
            ["from_state", "to_state", "result", "source"], registry=r)
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
