"""Prometheus metrics, one registry per app so several apps can live in one process."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.published = Counter(
            "herald_published_events", "Events accepted by POST /publish.", registry=r
        )
        self.mercure_published = Counter(
            "herald_mercure_published_updates",
            "Updates accepted by POST /.well-known/mercure.",
            registry=r,
        )
        self.subscribers = Gauge(
            "herald_subscribers", "Open SSE subscriptions in this process.", registry=r
        )
        self.topics = Gauge(
            "herald_topics", "Topics the hub follows for local subscribers.", registry=r
        )
        self.append_round_trips = Counter(
            "herald_append_round_trips",
            "Pipelines of appends sent to Redis by concurrent publishes together.",
            registry=r,
        )
        self.entries_read = Counter(
            "herald_entries_read", "Stream entries the hub read and encoded.", registry=r
        )
        self.deliveries = Counter(
            "herald_deliveries", "Events handed to subscriber buffers.", registry=r
        )
        self.replayed = Counter(
            "herald_replayed_events", "Events replayed to resuming subscribers.", registry=r
        )
        self.trimmed = Counter(
            "herald_trimmed_announcements",
            "Resumes whose position was older than the retained history.",
            registry=r,
        )
        self.overflows = Counter(
            "herald_subscriber_overflows",
            "Subscribers disconnected because they could not keep up.",
            registry=r,
        )
        self.reader_errors = Counter(
            "herald_reader_errors", "Failed hub reads (Redis unreachable).", registry=r
        )
        self.redis_reconnects = Counter(
            "herald_redis_reconnects",
            "Hub readers reading again after failed reads, e.g. from a new primary after a "
            "failover.",
            registry=r,
        )
        self.topology_refreshes = Counter(
            "herald_topology_refreshes",
            "Reloads of the Redis Cluster slot map after a failover or a migration.",
            registry=r,
        )
        self.reader_lag = Gauge(
            "herald_reader_lag_seconds",
            "Age of the newest entry of the last batch a hub reader delivered, per node.",
            ["node"],
            registry=r,
        )
        self.refused = Counter(
            "herald_refused_streams",
            "Subscriptions refused with 503 at the per-process stream limit.",
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
