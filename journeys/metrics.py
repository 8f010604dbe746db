"""Prometheus metrics for both services, on a registry of their own (no process-global state).

Every name here is what the Grafana dashboards and alert rules under ``deploy/`` reference.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# Channels are open-ended slugs; only these get their own label value, so a typo-happy sender cannot
# blow up the series count.
KNOWN_CHANNELS = frozenset(
    {"web", "email", "store", "app", "ads", "social", "call_centre", "sms", "push", "partner", "unknown"}
)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_SIZE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000, 20_000, 50_000, 100_000)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.http_requests = Counter(
            "journeys_http_requests",
            "HTTP requests by service, route and status.",
            ["service", "route", "status"],
            registry=r,
        )
        self.http_latency = Histogram(
            "journeys_http_request_duration_seconds",
            "Time from request start to response, by service and route.",
            ["service", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.events_accepted = Counter(
            "journeys_events_accepted", "Events accepted (durable), by channel.", ["channel"], registry=r
        )
        self.events_quarantined = Counter(
            "journeys_events_quarantined", "Events stored in quarantine, by field at fault.", ["reason"], registry=r
        )
        self.events_rejected = Counter(
            "journeys_events_rejected",
            "Events in rejected requests (nothing stored), by reason.",
            ["reason"],
            registry=r,
        )
        self.request_batch_size = Histogram(
            "journeys_request_events", "Events per ingest request.", buckets=_SIZE_BUCKETS, registry=r
        )
        self.group_commit_size = Histogram(
            "journeys_group_commit_requests",
            "Requests made durable by one spool fsync (group commit).",
            buckets=_SIZE_BUCKETS,
            registry=r,
        )
        self.insert_rows = Histogram(
            "journeys_clickhouse_insert_rows", "Rows per ClickHouse insert.", buckets=_SIZE_BUCKETS, registry=r
        )
        self.insert_latency = Histogram(
            "journeys_clickhouse_insert_duration_seconds",
            "ClickHouse insert latency, by table.",
            ["table"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.clickhouse_errors = Counter(
            "journeys_clickhouse_errors", "Failed ClickHouse calls, by operation.", ["operation"], registry=r
        )
        self.spool_bytes = Gauge("journeys_spool_bytes", "Spooled bytes not yet inserted into ClickHouse.", registry=r)
        self.spool_oldest_age = Gauge(
            "journeys_spool_oldest_event_age_seconds",
            "Age of the oldest spooled record not yet in ClickHouse (0 when drained).",
            registry=r,
        )
        self.spool_rejections = Counter(
            "journeys_spool_full_rejections", "Requests answered 503 because the spool was over its cap.", registry=r
        )
        self.freshness = Gauge(
            "journeys_newest_event_age_seconds",
            "Seconds since the newest event made visible in ClickHouse was received.",
            registry=r,
        )
        # Email open pixels and tracked links (collector/email.py): "bot" is the automation kind, or "none".
        self.email_events = Counter(
            "journeys_email_events",
            "Email opens and clicks recorded, by kind and bot flag.",
            ["kind", "bot"],
            registry=r,
        )
        self.email_unrecorded = Counter(
            "journeys_email_unrecorded",
            "Email opens and clicks answered (pixel served, redirect sent) but not made durable, by reason.",
            ["kind", "reason"],
            registry=r,
        )
        self.email_bad_tokens = Counter(
            "journeys_email_bad_tokens",
            "Email requests refused for a bad token, by reason.",
            ["kind", "reason"],
            registry=r,
        )
        # Ingest refused 429 by the per-key token buckets (collector/ratelimit.py), by key kind.
        self.rate_limited = Counter(
            "journeys_rate_limited", "Ingest requests refused 429 by a rate limit, by key kind.", ["kind"], registry=r
        )

        # Per-customer stage state for KPIs (query/facts/updater.py).
        self.kpi_freshness = Gauge(
            "journeys_kpi_freshness_seconds",
            "Seconds between now and the acknowledgement time before which every event is counted in the KPIs "
            "(now - includes.acknowledged_before of a KPI answer): spool, inserter and updater delays included.",
            registry=r,
        )
        self.kpi_cache = Counter(
            "journeys_kpi_cache",
            "KPI answers reused (hit) or computed (miss) where the KPI cache is on (query/kpi_cache.py).",
            ["result"],
            registry=r,
        )
        for result in ("hit", "miss"):  # both series from the start: the dashboard's ratio divides one by the other
            self.kpi_cache.labels(result)
        self.stage_state_rows = Counter(
            "journeys_stage_state_rows", "Customer stage states recomputed (customers × maps).", registry=r
        )
        self.stage_state_seconds = Histogram(
            "journeys_stage_state_step_seconds",
            "Time in each step of keeping the stage facts current, by step: changes (finding the ids whose rows "
            "changed), compare (telling which of them to merge or recompute), customers (their customers), merge "
            "(storing their inputs), difference (computing the facts they change and inserting them: one statement), "
            "transplant (a rule edit's customers computed apart, moved into the serving build, that project's polls "
            "paused), reconvert (a window edit's corrections, computed, then added to the serving build).",
            ["step"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.stage_state_rebuilds = Counter(
            "journeys_stage_state_rebuilds",
            "Full rebuilds of a project's stage state after definition changes.",
            registry=r,
        )

        # Alerts (query/alerts.py, query/alert_delivery.py): docs/alerts.md.
        self.alert_firing = Gauge(
            "journeys_alert_firing",
            "1 while an alert rule fires for a segment ('*all*': all customers), 0 while it is ok.",
            ["project", "rule", "segment"],
            registry=r,
        )
        self.alert_evaluation_errors = Counter(
            "journeys_alert_evaluation_errors", "Failed evaluations of a project's alert rules.", registry=r
        )
        self.alert_deliveries = Counter(
            "journeys_alert_deliveries",
            "Webhook delivery attempts by result: delivered, failed (retried later) or gave_up.",
            ["result"],
            registry=r,
        )
        self.alert_outbox = Gauge(
            "journeys_alert_outbox_pending", "Alert notifications not yet delivered (nor given up).", registry=r
        )

    def count_accepted(self, channel: str, n: int = 1) -> None:
        self.events_accepted.labels(channel if channel in KNOWN_CHANNELS else "other").inc(n)

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
