"""Prometheus metrics, one registry per app so several apps can live in one process.

With `herald serve --workers N` a scrape reaches one of the N processes, and must still
describe the whole server, as a Kubernetes user expects of a pod: `herald serve` then
turns on prometheus_client's multiprocess mode (`shared_across_processes`). Each process
keeps its values in memory-mapped files of one directory, and `/metrics`, whichever
process answers, sums the counters of every process that ever ran there and the gauges
of those alive; the reader lag is the largest.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

CONTENT_TYPE = CONTENT_TYPE_LATEST
MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"
# The files of a process's live gauges, which must go when the process does.
_LIVE_GAUGE_FILE = re.compile(r"gauge_live\w+_(\d+)\.db")


@contextmanager
def shared_across_processes() -> Iterator[Path]:
    """Multiprocess mode for the worker processes started inside: `PROMETHEUS_MULTIPROC_DIR`
    as given (emptied of an earlier run's files), else a directory of its own, removed
    at the end.

    prometheus_client reads the variable when it is imported, so the processes must be
    started after this, and not forked from one that recorded metrics.
    """
    given = os.environ.get(MULTIPROCESS_DIR)
    if given:
        directory = Path(given)
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.db"):
            stale.unlink()
    else:
        directory = Path(tempfile.mkdtemp(prefix="herald-metrics-"))
        os.environ[MULTIPROCESS_DIR] = str(directory)
    try:
        yield directory
    finally:
        if not given:
            del os.environ[MULTIPROCESS_DIR]
            shutil.rmtree(directory, ignore_errors=True)


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
            "herald_subscribers",
            "Open SSE subscriptions in this server (all its worker processes).",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.topics = Gauge(
            "herald_topics",
            "Topics the hubs follow for local subscribers, summed over worker processes.",
            registry=r,
            multiprocess_mode="livesum",
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
            multiprocess_mode="livemax",
        )
        self.refused = Counter(
            "herald_refused_streams",
            "Subscriptions refused with 503 at the per-process stream limit.",
            registry=r,
        )

    def render(self) -> bytes:
        directory = os.environ.get(MULTIPROCESS_DIR)
        if not directory:
            return generate_latest(self.registry)
        _forget_dead_processes(directory)
        everyone = CollectorRegistry()
        MultiProcessCollector(everyone, directory)  # type: ignore[no-untyped-call]
        return generate_latest(everyone)

    def close(self) -> None:
        """Take this process's gauges out of the sums of a multiprocess server."""
        if os.environ.get(MULTIPROCESS_DIR):
            mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


def _forget_dead_processes(directory: str) -> None:
    """Drop the live gauges of processes that died without `close()` (killed, crashed):
    uvicorn replaces such a worker, and its streams are gone."""
    for path in glob.glob(os.path.join(directory, "gauge_live*.db")):
        match = _LIVE_GAUGE_FILE.fullmatch(os.path.basename(path))
        if match and not _alive(int(match[1])):
            mark_process_dead(int(match[1]), directory)  # type: ignore[no-untyped-call]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, as another user
        return True
    return True
