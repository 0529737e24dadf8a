#!/usr/bin/env python3
"""Herald against Nchan, and against a baseline that runs one XREAD per subscriber.

Each server runs alone, pinned to core 0, started fresh for every shape; the load
generator (scripts/benchlib/loadgen.c, built with gcc at start), the publisher and
redis-server share core 1. Every event carries "<seq> <publish time>", so subscribers
count gaps and duplicates and measure latency without asking the server.

Shapes:
  broadcast  1 topic x N subscribers: (a) a burst published back to back, deliveries/s
             until every subscriber holds it all; (b) steady rates stepped up until p99
             reaches 1 s, an event is lost or the publisher falls 1 s behind.
  topics     K topics x 1 subscriber, a steady publish rate spread over them; for Redis
             backed servers, Redis commands per published event.
  storm      clients reconnect at once with the Last-Event-ID of the middle of 200 events:
             time until every one has caught up, with no gap and no duplicate.
  idle       connections held open on one topic: the server's RSS per connection.
  tokens     K answers, each its own topic with one subscriber, each writing 25 tokens/s
             (an LLM typing), K stepped up on a fresh server per step until one is not
             sustained: p99 from each token's scheduled time under 100 ms, every token
             delivered once and in order, no producer 1 s behind (a K that fails is
             measured up to three times). Herald twice: a POST per token (all Nchan
             takes) and one streaming NDJSON request per answer. Server CPU per token
             from /proc.
  ingest     the publish ceiling, no subscriber: events published back to back over 32
             keep-alive connections, a topic each; events/s and server CPU per event
             from /proc, the median of 3 runs after a warm-up. A POST per event for
             every server; Herald also in batches of 100 (a JSON array) and as one
             streaming NDJSON request per connection.
The baseline runs broadcast and topics only.

Scaling: `--workers 1 2` runs every server once per count, Herald as `serve --workers N`
and nginx with N worker processes, worker i pinned to core i; the load stays where it
was, so with 2 workers on a 2-core machine the second worker shares core 1 with the load
generator and Redis. A table then gives each count's figures against one worker's.

    python scripts/bench_vs_nchan.py --servers herald nchan --json /tmp/bench.json
    python scripts/bench_vs_nchan.py --servers herald nchan --shapes tokens
    python scripts/bench_vs_nchan.py --servers herald nchan --shapes broadcast tokens --workers 1 2
    python scripts/bench_vs_nchan.py --servers herald nchan --shapes ingest
    python scripts/bench_vs_nchan.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from benchlib.build import build_loadgen
from benchlib.loadgen import Report, SubOptions, Subscribers, produce_tokens, publish
from benchlib.procs import BenchError, core_busy_seconds
from benchlib.servers import REPO, SERVER_KINDS, Server, running_server, unavailable_reason

SHAPES = ("broadcast", "topics", "storm", "idle", "tokens", "ingest")
BASELINE_SHAPES = ("broadcast", "topics")
P99_LIMIT_MS = 1000
MAX_LAG_MS = 1000
# An LLM's typing speed, and the delay past which a reader sees the text stutter.
TOKEN_RATE = 25
TOKEN_P99_LIMIT_MS = 100
# A POST per token is all Nchan takes; Herald also takes an answer as one NDJSON stream.
TOKEN_MODES = {"herald": ("post", "stream"), "nchan": ("post",)}
# Nchan takes one message a request; Herald also takes a batch and an NDJSON stream.
INGEST_MODES = {"herald": ("post", "batch", "stream"), "nchan": ("post",)}
INGEST_CONNECTIONS = 32
# Events a batch request carries, and a streaming request's lines per write.
INGEST_BATCH = 100
# Topic-affine publish connections for the many-topics shape: each topic's events stay in
# order on one connection while requests to different topics overlap.
TOPICS_PUBLISH_CONCURRENCY = 16


@dataclass(frozen=True)
class Sizes:
    subscribers: int = 5000
    burst_events: int = 100
    rates: tuple[float, ...] = (1, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
    step_seconds: float = 5
    topics: int = 5000
    topic_rate: float = 2000
    topic_seconds: float = 10
    storm_clients: int = 2000
    storm_events: int = 200
    idle_conns: int = 10000
    answers: tuple[int, ...] = (25, 50, 75, 100, 150, 200, 300, 400, 600, 800, 1200, 1600)
    answer_seconds: float = 10  # 250 tokens at 25/s
    # A K not sustained is measured again before the server counts as failing it: other
    # users of the machine can stall a server, or its load generator, for longer than
    # the p99 allows.
    token_attempts: int = 3
    stall_seconds: float = 10  # no event for this long: stop waiting for the rest
    ingest_events: int = 120_000  # a multiple of INGEST_BATCH
    ingest_runs: int = 3


QUICK = Sizes(
    subscribers=50,
    burst_events=20,
    rates=(5, 50),
    step_seconds=1,
    topics=50,
    topic_rate=100,
    topic_seconds=1,
    storm_clients=50,
    idle_conns=200,
    answers=(5,),
    answer_seconds=2,
    token_attempts=1,
    stall_seconds=3,
    ingest_events=3_200,
    ingest_runs=1,
)


@dataclass(frozen=True)
class Bench:
    loadgen: Path
    workdir: Path
    sizes: Sizes
    server_core: int | None
    load_core: int | None
    workers: int = 1  # server processes, pinned to server_core, server_core + 1, …


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cpu_of(report: Report) -> float:
    return float(report["cpu_user_s"]) + float(report["cpu_sys_s"])


class Usage:
    """Wall time and CPU seconds of the server, the subscribers and the publisher in a shape."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.start = time.monotonic()
        self.server_cpu_start = server.cpu()
        self.publisher_cpu = 0.0
        self.loadgen_cpu = 0.0

    def published(self, report: Report) -> Report:
        self.publisher_cpu += cpu_of(report)
        return report

    def closed(self, final_report: Report) -> Report:
        self.loadgen_cpu += cpu_of(final_report)
        return final_report

    def summary(self) -> dict[str, float]:
        wall = time.monotonic() - self.start
        return {
            "wall_s": round(wall, 3),
            "server_cpu_s": round(self.server.cpu() - self.server_cpu_start, 3),
            "loadgen_cpu_s": round(self.loadgen_cpu, 3),
            "publisher_cpu_s": round(self.publisher_cpu, 3),
        }


class Window:
    """The share of one core that the server and the subscribers' loadgen used over a phase.

    A server near 100% with the loadgen well below shows the server is the bottleneck.
    """

    def __init__(self, server: Server, loadgen_cpu: float) -> None:
        self.server = server
        self.start = time.monotonic()
        self.server_cpu = server.cpu()
        self.loadgen_cpu = loadgen_cpu

    def shares(self, report: Report) -> dict[str, float]:
        wall = time.monotonic() - self.start
        return {
            "server_cpu_share": round((self.server.cpu() - self.server_cpu) / wall, 3),
            "loadgen_cpu_share": round((cpu_of(report) - self.loadgen_cpu) / wall, 3),
        }


@contextmanager
def subscribers(
    bench: Bench, server: Server, options: SubOptions, name: str
) -> Iterator[Subscribers]:
    log_path = bench.workdir / f"loadgen-{server.kind}-{name}-{server.port}.log"
    subs = Subscribers(
        bench.loadgen, server.port, server.sub_path, options, bench.load_core, log_path
    )
    try:
        yield subs
    finally:
        subs.kill()


def publish_to(bench: Bench, server: Server, usage: Usage, count: int, **kwargs: Any) -> Report:
    report = publish(
        bench.loadgen, server.port, server.proto, count, core=bench.load_core, **kwargs
    )
    return usage.published(report)


def require_connected(subs: Subscribers, wanted: int, timeout: float = 300) -> None:
    connected, failed = subs.wait_ready(timeout)
    if connected < wanted:
        raise BenchError(
            f"only {connected} of {wanted} connections were accepted ({failed} failed)"
        )


def latency(report: Report) -> dict[str, float]:
    return {f"{p}_ms": report[f"{p}_us"] / 1000 for p in ("p50", "p90", "p99", "max")}


def integrity(report: Report) -> dict[str, int]:
    keys = ("gaps", "dups", "unparsed", "disconnects", "reconnects", "http_errors")
    return {key: report[key] for key in keys}


# ------------------------------------------------------------------ shape 1: broadcast


def broadcast(bench: Bench, server: Server) -> dict[str, Any]:
    sizes = bench.sizes
    usage = Usage(server)
    options = SubOptions(conns=sizes.subscribers, expect=sizes.burst_events)
    with subscribers(bench, server, options, "broadcast") as subs:
        require_connected(subs, sizes.subscribers)
        spread = server.connections_per_worker()
        log(f"[{server.kind}] broadcast: {sizes.subscribers} subscribers connected {spread}")
        burst = broadcast_burst(bench, server, subs, usage)
        log(f"[{server.kind}] burst: {burst['deliveries_per_s']} deliveries/s")
        steady = broadcast_steps(bench, server, subs, usage, next_seq=sizes.burst_events + 1)
        usage.closed(subs.close())
    return {
        "subscribers": sizes.subscribers,
        "conns_per_worker": spread,
        "burst": burst,
        "steady": steady,
        **usage.summary(),
    }


def broadcast_burst(
    bench: Bench, server: Server, subs: Subscribers, usage: Usage
) -> dict[str, Any]:
    n, events = bench.sizes.subscribers, bench.sizes.burst_events
    meter = CpuMeter(server, bench, cpu_of(subs.report()))
    subs.mark()
    pub = publish_to(bench, server, usage, events)
    report = subs.wait_for(lambda r: r["complete"] >= n, bench.sizes.stall_seconds, 900)
    cpu = meter.read(cpu_of(report))
    seconds = report["seconds_to_complete"]
    # A server that never delivers everything is rated by what it did deliver, until
    # its last delivery; "complete" says which of the two the figure is.
    rated_seconds = seconds or report["last_event_seconds"]
    return {
        "events": events,
        "publish_errors": pub["errors"],
        "publish_seconds": pub["seconds"],
        "seconds": seconds,
        "complete": seconds is not None,
        "deliveries_per_s": round(report["events"] / rated_seconds) if rated_seconds else None,
        "delivered": report["events"],
        "expected": n * events,
        **latency(report),
        **integrity(report),
        **cpu.shares(),
        "server_us_per_delivery": (
            round(cpu.server * 1e6 / report["events"], 2) if report["events"] else None
        ),
    }


def broadcast_steps(
    bench: Bench, server: Server, subs: Subscribers, usage: Usage, next_seq: int
) -> dict[str, Any]:
    """Steady rates, each for step_seconds, up to the first that is not sustained."""
    steps = []
    for rate in bench.sizes.rates:
        step = broadcast_step(bench, server, subs, usage, rate, next_seq)
        next_seq += step["published"]
        steps.append(step)
        log(
            f"[{server.kind}] steady {rate:g}/s: p50 {step['p50_ms']:.1f} ms, "
            f"p99 {step['p99_ms']:.1f} ms, lost {step['lost']}, gaps {step['gaps']}"
        )
        if not step["sustained"]:
            break
    sustained = [step["rate"] for step in steps if step["sustained"]]
    return {"max_sustained_rate": max(sustained, default=None), "steps": steps}


def broadcast_step(
    bench: Bench, server: Server, subs: Subscribers, usage: Usage, rate: float, seq: int
) -> dict[str, Any]:
    sizes = bench.sizes
    count = max(1, round(rate * sizes.step_seconds))
    window = Window(server, cpu_of(subs.report()))
    subs.mark()
    # A publisher that cannot keep the schedule is stopped; the step then fails anyway.
    pub = publish_to(
        bench, server, usage, count, rate=rate, start_seq=seq, timeout=3 * sizes.step_seconds + 10
    )
    expected = sizes.subscribers * pub["ok"]
    report = subs.wait_for(lambda r: r["events"] >= expected, sizes.stall_seconds, 120)
    step = {
        "rate": rate,
        "published": pub["sent"],
        "publish_errors": pub["errors"],
        "publisher_timed_out": pub["timed_out"],
        "achieved_rate": pub["achieved_rate"],
        "max_lag_ms": pub["max_lag_ms"],
        "delivered": report["events"],
        "lost": max(0, expected - report["events"]),
        **latency(report),
        **integrity(report),
        **window.shares(report),
    }
    step["not_sustained_because"] = unsustained_reasons(step)
    step["sustained"] = not step["not_sustained_because"]
    return step


def unsustained_reasons(step: dict[str, Any], p99_limit_ms: float = P99_LIMIT_MS) -> list[str]:
    """Why a steady step does not count as sustained; empty when it does."""
    reasons = []
    if step["p99_ms"] >= p99_limit_ms:
        limit = f"{p99_limit_ms / 1000:g} s" if p99_limit_ms >= 1000 else f"{p99_limit_ms:g} ms"
        reasons.append(f"p99 >= {limit}")
    if step["publisher_timed_out"] or step["max_lag_ms"] >= MAX_LAG_MS:
        reasons.append(f"publisher {step['max_lag_ms'] / 1000:.1f} s behind schedule")
    reasons += [f"{n} {key}" for key in ("lost", "gaps", "dups") if (n := step[key])]
    if step["publish_errors"]:
        statuses = step.get("publish_errors_by_status")
        detail = f" ({', '.join(f'{n} x {s}' for s, n in statuses.items())})" if statuses else ""
        reasons.append(f"{step['publish_errors']} publish errors{detail}")
    return reasons


# ------------------------------------------------------------------ shape 2: many topics


def many_topics(bench: Bench, server: Server) -> dict[str, Any]:
    sizes = bench.sizes
    usage = Usage(server)
    options = SubOptions(conns=sizes.topics, topics=sizes.topics)
    count = round(sizes.topic_rate * sizes.topic_seconds)
    with subscribers(bench, server, options, "topics") as subs:
        require_connected(subs, sizes.topics)
        calls_before = server.redis.command_calls() if server.redis else None
        window = Window(server, cpu_of(subs.report()))
        subs.mark()
        pub = publish_to(
            bench, server, usage, count, topics=sizes.topics, rate=sizes.topic_rate,
            concurrency=TOPICS_PUBLISH_CONCURRENCY,
        )  # fmt: skip
        report = subs.wait_for(lambda r: r["events"] >= pub["ok"], sizes.stall_seconds, 120)
        calls_after = server.redis.command_calls() if server.redis else None
        shares = window.shares(report)
        usage.closed(subs.close())
    result = {
        "topics": sizes.topics,
        "rate": sizes.topic_rate,
        "published": pub["ok"],
        "publish_errors": pub["errors"],
        "achieved_rate": pub["achieved_rate"],
        "max_lag_ms": pub["max_lag_ms"],
        "delivered": report["events"],
        "lost": max(0, pub["ok"] - report["events"]),
        **latency(report),
        **integrity(report),
        **shares,
        **usage.summary(),
    }
    if calls_before is not None and calls_after is not None and pub["ok"]:
        # Counted from just before publishing until the last event was delivered.
        result["redis_calls_per_event"] = round((calls_after - calls_before) / pub["ok"], 3)
    return result


# ------------------------------------------------------------------ shape 3: resume storm


def storm(bench: Bench, server: Server) -> dict[str, Any]:
    sizes = bench.sizes
    usage = Usage(server)
    resume_seq = sizes.storm_events // 2
    resume_id = learn_resume_id(bench, server, usage, resume_seq)
    clients, missed = sizes.storm_clients, sizes.storm_events - resume_seq
    options = SubOptions(
        conns=clients,
        start_seq=resume_seq + 1,
        expect=missed,
        last_event_id=resume_id,
        max_pending=clients,  # all at once
    )
    window = Window(server, 0.0)  # the storm's loadgen starts with the window
    with subscribers(bench, server, options, "storm") as subs:
        connected, failed = subs.wait_ready(300)
        # No mark: the clock runs from the moment the clients started connecting.
        report = subs.wait_for(lambda r: r["complete"] >= clients, sizes.stall_seconds, 600)
        shares = window.shares(report)
        usage.closed(subs.close())
    seconds = report["seconds_to_complete"]
    return {
        "clients": clients,
        "resume_id": resume_id,
        "connected": connected,
        "failed": failed,
        "caught_up": report["complete"],
        "seconds_to_catch_up": seconds,
        "replayed_per_s": round(clients * missed / seconds) if seconds else None,
        "replayed": report["events"],
        "expected": clients * missed,
        **integrity(report),
        **shares,
        **usage.summary(),
    }


def learn_resume_id(bench: Bench, server: Server, usage: Usage, resume_seq: int) -> str:
    """Publishes the storm's events while one subscriber notes their ids."""
    events = bench.sizes.storm_events
    options = SubOptions(conns=1, expect=events, print_ids=True)
    with subscribers(bench, server, options, "prime") as prime:
        require_connected(prime, 1)
        pub = publish_to(bench, server, usage, events)
        if pub["ok"] != events:
            raise BenchError(f"publishing the storm's events: {pub}")
        prime.wait_for(lambda r: r["complete"] >= 1, bench.sizes.stall_seconds, 120)
        usage.closed(prime.close())
    if resume_seq not in prime.ids:
        raise BenchError(f"the prime subscriber never saw event {resume_seq}")
    return prime.ids[resume_seq]


# ------------------------------------------------------------------ shape 4: idle


def idle(bench: Bench, server: Server) -> dict[str, Any]:
    conns = bench.sizes.idle_conns
    usage = Usage(server)
    rss_before = server.rss()
    started = time.monotonic()
    with subscribers(bench, server, SubOptions(conns=conns, reconnect=False), "idle") as subs:
        require_connected(subs, conns)
        connect_seconds = time.monotonic() - started
        time.sleep(1)  # let the server finish what accepting set in motion
        rss_after = server.rss()
        report = usage.closed(subs.close())
    return {
        "conns": conns,
        "open": report["open"],
        "connect_seconds": round(connect_seconds, 3),
        "rss_before_bytes": rss_before,
        "rss_after_bytes": rss_after,
        "rss_per_conn_bytes": round((rss_after - rss_before) / max(1, report["open"])),
        **usage.summary(),
    }


# ------------------------------------------------------------------ shape 5: token streams


def token_streams(bench: Bench, kind: str, mode: str) -> dict[str, Any]:
    """K answers, stepped up with a fresh server for each K, until one is not sustained.

    A fresh server per step keeps a step's backlog or stored messages (Nchan keeps every
    channel's last 1,000 in its shared memory) from weighing on the next one.
    """
    steps = []
    for answers in bench.sizes.answers:
        attempts: list[dict[str, Any]] = []
        for attempt in range(1, bench.sizes.token_attempts + 1):
            step = token_attempt(bench, kind, mode, answers)
            step["attempt"] = attempt
            attempts.append(step)
            if step["sustained"]:
                break
        step["earlier_attempts"] = attempts[:-1]
        steps.append(step)
        if not step["sustained"]:
            break
    sustained = [step["answers"] for step in steps if step["sustained"]]
    return {
        "mode": mode,
        "token_rate": TOKEN_RATE,
        "tokens_per_answer": round(TOKEN_RATE * bench.sizes.answer_seconds),
        "max_sustained_answers": max(sustained, default=None),
        "steps": steps,
    }


def token_attempt(bench: Bench, kind: str, mode: str, answers: int) -> dict[str, Any]:
    try:
        with running_server(
            kind, bench.workdir, bench.server_core, bench.load_core, bench.workers
        ) as server:
            step = token_step(bench, server, mode, answers)
    except BenchError as error:
        log(f"[{kind}] tokens {mode} K={answers}: {error}")
        return {
            "answers": answers,
            "error": str(error),
            "sustained": False,
            "not_sustained_because": [str(error)],
        }
    log(
        f"[{kind}] tokens {mode} K={answers}: p50 {step['p50_ms']:.1f} ms, "
        f"p99 {step['p99_ms']:.1f} ms, lost {step['lost']}, "
        f"{step['server_us_per_token']} µs of server CPU a token, "
        f"{percent(step['server_core_others_share'])} of its core taken by other processes"
    )
    return step


def token_step(bench: Bench, server: Server, mode: str, answers: int) -> dict[str, Any]:
    sizes = bench.sizes
    tokens = round(TOKEN_RATE * sizes.answer_seconds)
    expected = answers * tokens
    options = SubOptions(conns=answers, topics=answers, expect=tokens)
    with subscribers(bench, server, options, f"tokens-{mode}-{answers}") as subs:
        require_connected(subs, answers)
        spread = server.connections_per_worker()
        meter = CpuMeter(server, bench, cpu_of(subs.report()))
        subs.mark()
        pub = produce_tokens(
            bench.loadgen, server.port, server.proto, answers, tokens, rate=TOKEN_RATE,
            stream=mode == "stream", core=bench.load_core, timeout=3 * sizes.answer_seconds + 10,
        )  # fmt: skip
        report = subs.wait_for(lambda r: r["events"] >= expected, sizes.stall_seconds, 120)
        cpu = meter.read(cpu_of(report) + cpu_of(pub))
    delivered = report["events"]
    step = {
        "answers": answers,
        "conns_per_worker": spread,
        "tokens_per_s": answers * TOKEN_RATE,
        "tokens": expected,
        "published": pub["sent"],
        "publish_requests_ok": pub["ok"],
        "publish_errors": pub["errors"],
        # by HTTP status; "0": the connection closed before an answer
        "publish_errors_by_status": pub["failed"],
        "publisher_reconnects": pub["reconnects"],
        "publisher_timed_out": pub["timed_out"],
        "lag_p99_ms": pub["lag_p99_ms"],
        "max_lag_ms": pub["max_lag_ms"],
        "delivered": delivered,
        "lost": max(0, expected - delivered),
        **latency(report),
        **integrity(report),
        **cpu.shares(),
        "server_us_per_token": cpu.per_event(cpu.server, delivered),
    }
    if server.redis:
        step["redis_us_per_token"] = cpu.per_event(cpu.redis, delivered)
    step["not_sustained_because"] = unsustained_reasons(step, TOKEN_P99_LIMIT_MS)
    step["sustained"] = not step["not_sustained_because"]
    return step


@dataclass(frozen=True)
class Cpu:
    """CPU seconds used over `wall` seconds by each party to a step."""

    wall: float
    server: float
    redis: float
    loadgen: float
    # Everything else on each core: the machine's other users (None when nothing is pinned).
    server_core_others: float | None
    load_core_others: float | None
    per_worker: list[float]  # of `server`, each worker process's seconds

    def shares(self) -> dict[str, Any]:
        def share(seconds: float | None) -> float | None:
            return None if seconds is None else round(seconds / self.wall, 3)

        return {
            "server_cpu_share": share(self.server),
            "loadgen_cpu_share": share(self.loadgen),
            "server_core_others_share": share(self.server_core_others),
            "load_core_others_share": share(self.load_core_others),
            "worker_cpu_shares": [share(seconds) for seconds in self.per_worker],
        }

    @staticmethod
    def per_event(seconds: float, events: int) -> int | None:
        # /proc counts in ticks (10 ms): over a step of seconds, an error well under 1%.
        return round(seconds * 1e6 / events) if events else None


class CpuMeter:
    """Reads, from /proc, the CPU a step costs the server, its Redis and the load generator,
    and what the rest of the machine took from their cores meanwhile."""

    def __init__(self, server: Server, bench: Bench, loadgen_cpu: float) -> None:
        self.server = server
        self.cores = (bench.server_core, bench.load_core)
        self.workers = bench.workers
        self.per_worker = server.cpu_per_worker()
        self.start = time.monotonic()
        self.server_cpu = server.cpu()
        self.redis_cpu = self._redis_cpu()
        self.loadgen_cpu = loadgen_cpu
        self.busy = self._busy()

    def _redis_cpu(self) -> float:
        return self.server.redis.cpu() if self.server.redis else 0.0

    def _busy(self) -> tuple[float, float | None] | None:
        """Busy seconds of the server's cores and of the load core; when they overlap
        (several workers), of all of them together, and None for the load core."""
        server_core, load_core = self.cores
        if server_core is None or load_core is None:
            return None
        server_cores = set(range(server_core, server_core + self.workers))
        if load_core in server_cores:
            return sum(map(core_busy_seconds, server_cores | {load_core})), None
        return sum(map(core_busy_seconds, server_cores)), core_busy_seconds(load_core)

    def read(self, loadgen_cpu: float) -> Cpu:
        """`loadgen_cpu`: what the load generators have used by now, in all."""
        server = self.server.cpu() - self.server_cpu
        redis = self._redis_cpu() - self.redis_cpu
        loadgen = loadgen_cpu - self.loadgen_cpu
        before, after = self.busy, self._busy()
        others: tuple[float | None, float | None] = (None, None)
        if before is not None and after is not None:
            if before[1] is None or after[1] is None:
                # One set of cores for everyone: what is not theirs is the others'.
                others = (max(0.0, after[0] - before[0] - server - loadgen - redis), None)
            else:
                # Redis shares the load generator's core.
                others = (
                    max(0.0, after[0] - before[0] - server),
                    max(0.0, after[1] - before[1] - loadgen - redis),
                )
        per_worker = [
            round(after - before, 3)
            for before, after in zip(self.per_worker, self.server.cpu_per_worker(), strict=True)
        ]
        return Cpu(time.monotonic() - self.start, server, redis, loadgen, *others, per_worker)


# ------------------------------------------------------------------ shape 6: ingest


def ingest(bench: Bench, kind: str, mode: str) -> dict[str, Any]:
    """The publish ceiling in one way of publishing, on a fresh server with no subscriber:
    a warm-up, then `ingest_runs` runs; the run with the median events/s stands for all."""
    sizes = bench.sizes
    batch = 1 if mode == "post" else INGEST_BATCH
    with running_server(
        kind, bench.workdir, bench.server_core, bench.load_core, bench.workers
    ) as server:
        warm_up = max(batch, sizes.ingest_events // 10 // batch * batch)
        ingest_run(bench, server, mode, batch, warm_up)
        runs = [
            ingest_run(bench, server, mode, batch, sizes.ingest_events)
            for _ in range(sizes.ingest_runs)
        ]
    for run in runs:
        log(
            f"[{kind}] ingest {mode}: {run['events_per_s']:,.0f} events/s, "
            f"{run['server_us_per_event']} µs of server CPU an event, "
            f"{percent(run['server_core_others_share'])} of its core taken by other processes"
        )
    median = sorted(runs, key=lambda run: run["events_per_s"])[len(runs) // 2]
    return {
        "mode": mode,
        "connections": INGEST_CONNECTIONS,
        "batch": batch,
        **median,
        "runs": runs,
    }


def ingest_run(bench: Bench, server: Server, mode: str, batch: int, events: int) -> dict[str, Any]:
    meter = CpuMeter(server, bench, 0.0)
    pub = publish(
        bench.loadgen, server.port, server.proto, events, topics=INGEST_CONNECTIONS,
        concurrency=INGEST_CONNECTIONS, batch=batch, stream=mode == "stream",
        core=bench.load_core,
    )  # fmt: skip
    cpu = meter.read(cpu_of(pub))
    published = pub["events_ok"]
    run = {
        "events": events,
        "published": published,
        "publish_errors": pub["errors"],
        "publisher_timed_out": pub["timed_out"],
        "seconds": pub["seconds"],
        "events_per_s": round(pub["events_per_s"]),
        **cpu.shares(),
        "server_us_per_event": cpu.per_event(cpu.server, published),
    }
    if server.redis:
        run["redis_us_per_event"] = cpu.per_event(cpu.redis, published)
    return run


SHAPE_RUNNERS: dict[str, Callable[[Bench, Server], dict[str, Any]]] = {
    "broadcast": broadcast,
    "topics": many_topics,
    "storm": storm,
    "idle": idle,
}


# ------------------------------------------------------------------ running and reporting


Run = Callable[[Bench, str], dict[str, Any]]


# Shapes run once per way of publishing, each mode on fresh servers of its own.
MODED_SHAPES: dict[str, tuple[dict[str, tuple[str, ...]], Callable[..., dict[str, Any]]]] = {
    "tokens": (TOKEN_MODES, token_streams),
    "ingest": (INGEST_MODES, ingest),
}


def runs(kind: str, shape: str) -> list[tuple[str, Run]]:
    """(result name, runner) for each way `kind` runs `shape`; none when it does not."""
    if shape in MODED_SHAPES:
        modes, runner = MODED_SHAPES[shape]
        return [(f"{shape}_{mode}", partial(runner, mode=mode)) for mode in modes.get(kind, ())]
    if kind == "baseline" and shape not in BASELINE_SHAPES:
        return []
    return [(shape, partial(on_fresh_server, runner=SHAPE_RUNNERS[shape]))]


def on_fresh_server(
    bench: Bench, kind: str, runner: Callable[[Bench, Server], dict[str, Any]]
) -> dict[str, Any]:
    with running_server(
        kind, bench.workdir, bench.server_core, bench.load_core, bench.workers
    ) as server:
        return runner(bench, server)


def run_server(bench: Bench, kind: str, shapes: list[str]) -> dict[str, Any]:
    reason = unavailable_reason(kind)
    if bench.workers > 1 and kind == "baseline":
        reason = "the baseline runs one process only"
    if reason:
        log(f"[{kind}] skipped: {reason}")
        return {"skipped": reason}
    results: dict[str, Any] = {}
    for shape in shapes:
        for name, run in runs(kind, shape):
            log(f"[{kind}] {name} ...")
            try:
                results[name] = run(bench, kind)
            except BenchError as error:
                log(f"[{kind}] {name} failed: {error}")
                results[name] = {"error": str(error)}
    return results


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def lookup(result: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = result
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return ""
        value = value[key]
    return value


def step_rows(results: dict[str, Any]) -> list[tuple[str, Callable[[dict[str, Any]], str]]]:
    """One row per steady rate that any server reached: p50 / p99 in ms, or why it failed."""
    rates: list[float] = []
    for result in results.values():
        for step in lookup(result, ("broadcast", "steady", "steps")) or []:
            if step["rate"] not in rates:
                rates.append(step["rate"])

    def render(rate: float) -> Callable[[dict[str, Any]], str]:
        def cell_of(result: dict[str, Any]) -> str:
            steps = lookup(result, ("broadcast", "steady", "steps")) or []
            for step in steps:
                if step["rate"] == rate:
                    text = f"{step['p50_ms']:.1f} / {step['p99_ms']:.1f}"
                    reasons = step["not_sustained_because"]
                    return f"{text} ({'; '.join(reasons)})" if reasons else text
            return ""

        return cell_of

    return [(f"1b p50 / p99 ms at {rate:g}/s", render(rate)) for rate in sorted(rates)]


PLAIN_ROWS: list[tuple[str, tuple[str, ...]]] = [
    ("1 connections per worker", ("broadcast", "conns_per_worker")),
    ("1a burst deliveries/s", ("broadcast", "burst", "deliveries_per_s")),
    ("1a burst seconds", ("broadcast", "burst", "seconds")),
    ("1a delivered / expected", ("broadcast", "burst", "delivered")),
    ("1a p50 ms", ("broadcast", "burst", "p50_ms")),
    ("1a p99 ms", ("broadcast", "burst", "p99_ms")),
    ("1a gaps / dups", ("broadcast", "burst", "gaps")),
    ("1a server / loadgen CPU %", ("broadcast", "burst", "server_cpu_share")),
    ("1a others' CPU, server / load core %", ("broadcast", "burst", "server_core_others_share")),
    ("1a server µs per delivery", ("broadcast", "burst", "server_us_per_delivery")),
    ("1a CPU of each worker %", ("broadcast", "burst", "worker_cpu_shares")),
    ("1b max sustained events/s", ("broadcast", "steady", "max_sustained_rate")),
    ("1 wall s", ("broadcast", "wall_s")),
    ("1 server CPU s", ("broadcast", "server_cpu_s")),
    ("1 loadgen CPU s", ("broadcast", "loadgen_cpu_s")),
    ("1 publisher CPU s", ("broadcast", "publisher_cpu_s")),
    ("2 topics p50 ms", ("topics", "p50_ms")),
    ("2 topics p99 ms", ("topics", "p99_ms")),
    ("2 achieved publish rate/s", ("topics", "achieved_rate")),
    ("2 publisher max lag ms", ("topics", "max_lag_ms")),
    ("2 lost / gaps", ("topics", "lost")),
    ("2 server / loadgen CPU %", ("topics", "server_cpu_share")),
    ("2 Redis calls per event", ("topics", "redis_calls_per_event")),
    ("2 wall s", ("topics", "wall_s")),
    ("2 server CPU s", ("topics", "server_cpu_s")),
    ("2 loadgen CPU s", ("topics", "loadgen_cpu_s")),
    ("2 publisher CPU s", ("topics", "publisher_cpu_s")),
    ("3 storm seconds to catch up", ("storm", "seconds_to_catch_up")),
    ("3 storm replayed events/s", ("storm", "replayed_per_s")),
    ("3 storm caught up clients", ("storm", "caught_up")),
    ("3 storm gaps / dups", ("storm", "gaps")),
    ("3 server / loadgen CPU %", ("storm", "server_cpu_share")),
    ("3 wall s", ("storm", "wall_s")),
    ("3 server CPU s", ("storm", "server_cpu_s")),
    ("3 loadgen CPU s", ("storm", "loadgen_cpu_s")),
    ("4 idle conns open", ("idle", "open")),
    ("4 idle connect seconds", ("idle", "connect_seconds")),
    ("4 idle RSS before MB", ("idle", "rss_before_bytes")),
    ("4 idle RSS after MB", ("idle", "rss_after_bytes")),
    ("4 idle RSS per conn bytes", ("idle", "rss_per_conn_bytes")),
]
# rows that show "a / b"
PAIRED = {
    "gaps": "dups",
    "lost": "gaps",
    "server_cpu_share": "loadgen_cpu_share",
    "delivered": "expected",
}


def plain_cell(result: dict[str, Any], path: tuple[str, ...]) -> str:
    value = lookup(result, path)
    if path[-1] == "server_cpu_share" and value != "":
        other = lookup(result, (*path[:-1], "loadgen_cpu_share"))
        return f"{value:.0%} / {other:.0%}"
    if path[-1] == "worker_cpu_shares" and value != "":
        return " / ".join(map(percent, value))
    if path[-1] == "server_core_others_share" and value != "":
        # With several workers the cores are shared, and counted together.
        other = lookup(result, (*path[:-1], "load_core_others_share"))
        return f"{percent(value)} / {percent(other)}"
    if path[-1] in PAIRED and value != "":
        return f"{cell(value)} / {cell(lookup(result, (*path[:-1], PAIRED[path[-1]])))}"
    if path[-1].endswith("_bytes") and "per_conn" not in path[-1] and value != "":
        return f"{value / 1e6:,.1f}"
    if value == "" and "error" in result.get(path[0], {}):
        return "error"
    return cell(value)


def table(results: dict[str, Any]) -> str:
    rows: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
        (label, partial(plain_cell, path=path)) for label, path in PLAIN_ROWS
    ]
    after = next(i for i, (label, _) in enumerate(rows) if label.startswith("1b max")) + 1
    rows[after:after] = step_rows(results)
    servers = list(results)
    body = [[label, *(render(results[s]) for s in servers)] for label, render in rows]
    body = [row for row in body if any(row[1:])]
    return aligned(["metric", *servers], body) if body else ""


def aligned(header: list[str], body: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in [header, *body]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


TOKEN_COLUMNS = (
    ("K", "answers"),
    ("tokens/s", "tokens_per_s"),
    ("p50 ms", "p50_ms"),
    ("p99 ms", "p99_ms"),
    ("server µs/token", "server_us_per_token"),
    ("Redis µs/token", "redis_us_per_token"),
    ("server CPU", "server_cpu_share"),
    ("loadgen CPU", "loadgen_cpu_share"),
    ("others, server core", "server_core_others_share"),
    ("others, load core", "load_core_others_share"),
)


def moded_runs(results: dict[str, Any], shape: str, field: str) -> dict[str, dict[str, Any]]:
    """A moded shape's results that hold `field` (no error), named "<server> <mode>"."""
    return {
        f"{kind} {name.removeprefix(shape + '_')}": value
        for kind, result in results.items()
        for name, value in result.items()
        if name.startswith(shape + "_") and field in value
    }


def figure(row: dict[str, Any], key: str) -> str:
    return percent(row.get(key)) if key.endswith("_share") else cell(row.get(key))


def token_table(results: dict[str, Any]) -> str:
    """Shape 5: a row per server, publish mode and K; then the highest K and the ratios."""
    runs = moded_runs(results, "tokens", "steps")
    if not runs:
        return ""
    header = ["tokens", *(label for label, _ in TOKEN_COLUMNS), "sustained"]
    body = [[name, *token_row(step)] for name, run in runs.items() for step in run["steps"]]
    return f"{aligned(header, body)}\n\n{token_summary(runs)}"


def token_row(step: dict[str, Any]) -> list[str]:
    if "error" in step:
        return [cell(step["answers"]), *[""] * (len(TOKEN_COLUMNS) - 1), step["error"]]
    figures = [figure(step, key) for _, key in TOKEN_COLUMNS]
    attempts = f" (attempt {step['attempt']})" if step["attempt"] > 1 else ""
    verdict = "yes" if step["sustained"] else "no: " + "; ".join(step["not_sustained_because"])
    return [*figures, verdict + attempts]


def token_summary(runs: dict[str, dict[str, Any]]) -> str:
    """Each run's highest K, and its server CPU per token at the highest K all sustained."""
    steps = {name: {step["answers"]: step for step in run["steps"]} for name, run in runs.items()}
    common = [
        k
        for k in next(iter(steps.values()))
        if all(by_k.get(k, {}).get("sustained") for by_k in steps.values())
    ]
    nchan = runs.get("nchan post")
    header = ["tokens", "highest K sustained", "vs Nchan"]
    if common:
        header += [f"server µs/token at K={max(common):,}", "vs Nchan"]
    body = []
    for name, run in runs.items():
        best = run["max_sustained_answers"]
        row = [name, cell(best), ratio(best, nchan["max_sustained_answers"] if nchan else None)]
        if common:
            us = steps[name][max(common)]["server_us_per_token"]
            reference = steps["nchan post"][max(common)] if nchan else {}
            row += [cell(us), ratio(us, reference.get("server_us_per_token"))]
        body.append(row)
    return aligned(header, body)


def label(kind: str, workers: int) -> str:
    """A server's name in the results: its kind, and its worker count when not 1."""
    return kind if workers == 1 else f"{kind} x{workers}"


SCALING_FIGURES: list[tuple[str, Callable[[dict[str, Any]], Any]]] = [
    ("burst deliveries/s", lambda r: lookup(r, ("broadcast", "burst", "deliveries_per_s"))),
    (
        "burst server µs/delivery",
        lambda r: lookup(r, ("broadcast", "burst", "server_us_per_delivery")),
    ),
    ("max steady events/s", lambda r: lookup(r, ("broadcast", "steady", "max_sustained_rate"))),
    ("tokens (POST) highest K", lambda r: lookup(r, ("tokens_post", "max_sustained_answers"))),
    ("tokens (stream) highest K", lambda r: lookup(r, ("tokens_stream", "max_sustained_answers"))),
]


def scaling_table(results: dict[str, Any], counts: list[int]) -> str:
    """Each server's figures with N workers against its figures with one."""
    if len(counts) < 2 or 1 not in counts:
        return ""
    body = []
    for kind in dict.fromkeys(key.split(" x")[0] for key in results):
        one = results.get(kind, {})
        for title, figure in SCALING_FIGURES:
            base = figure(one)
            if base in ("", None):
                continue
            row = [f"{kind}: {title}", cell(base)]
            for n in (n for n in counts if n != 1):
                value = figure(results.get(label(kind, n), {}))
                row.append(f"{cell(value)} ({ratio(value or None, base)})" if value != "" else "")
            body.append(row)
    header = ["scaling", "1 worker", *(f"{n} workers (vs 1)" for n in counts if n != 1)]
    return aligned(header, body) if body else ""


INGEST_COLUMNS = (
    ("Redis µs/event", "redis_us_per_event"),
    ("server CPU", "server_cpu_share"),
    ("loadgen CPU", "loadgen_cpu_share"),
    ("others, server core", "server_core_others_share"),
    ("others, load core", "load_core_others_share"),
    ("errors", "publish_errors"),
)


def ingest_table(results: dict[str, Any]) -> str:
    """Shape 6: a row per server and way of publishing, with its ratios to Nchan's POSTs."""
    runs = moded_runs(results, "ingest", "events_per_s")
    if not runs:
        return ""
    nchan = runs.get("nchan post", {})
    speed, cost = "events_per_s", "server_us_per_event"
    header = ["ingest", "events/s", "vs Nchan", "server µs/event", "vs Nchan"]
    body = [
        [
            name,
            cell(run[speed]),
            ratio(run[speed], nchan.get(speed)),
            cell(run[cost]),
            ratio(run[cost], nchan.get(cost)),
            *(figure(run, key) for _, key in INGEST_COLUMNS),
        ]
        for name, run in runs.items()
    ]
    return aligned([*header, *(title for title, _ in INGEST_COLUMNS)], body)


def percent(share: float | None) -> str:
    return "-" if share is None else f"{share:.0%}"


def ratio(value: float | None, reference: float | None) -> str:
    return f"{value / reference:.2g}x" if value and reference else "-"


def errors(results: dict[str, Any]) -> list[str]:
    return [
        f"{kind} {shape}: {value['error']}"
        for kind, result in results.items()
        for shape, value in result.items()
        if isinstance(value, dict) and "error" in value
    ]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join((__doc__ or "").splitlines()[2:]),
    )
    parser.add_argument("--servers", nargs="+", choices=SERVER_KINDS, default=list(SERVER_KINDS))
    parser.add_argument("--shapes", nargs="+", choices=SHAPES, default=list(SHAPES))
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a seconds-long smoke run")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--subscribers", type=int, help="broadcast subscribers (5000)")
    parser.add_argument("--burst-events", type=int, help="events in the burst (100)")
    parser.add_argument("--topics", type=int, help="topics, one subscriber each (5000)")
    parser.add_argument("--storm-clients", type=int, help="resume storm clients (2000)")
    parser.add_argument("--idle-conns", type=int, help="idle connections (10000)")
    parser.add_argument("--step-seconds", type=float, help="seconds per steady rate (5)")
    parser.add_argument("--rates", type=float, nargs="+", help="steady rates, events/s")
    parser.add_argument("--answers", type=int, nargs="+", help="token stream steps, answers (K)")
    parser.add_argument("--answer-seconds", type=float, help="seconds an answer lasts (10)")
    parser.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[1],
        help="server worker processes, one run per count, worker i pinned to core i (1)",
    )
    parser.add_argument(
        "--ingest-events", type=int, help=f"events a run, a multiple of {INGEST_BATCH} (120000)"
    )
    parser.add_argument("--ingest-runs", type=int, help="ingest runs; the median counts (3)")
    return parser.parse_args(argv)


def sizes_from(args: argparse.Namespace) -> Sizes:
    sizes = QUICK if args.quick else Sizes()
    overrides = {
        name: getattr(args, name)
        for name in ("subscribers", "burst_events", "topics", "storm_clients", "idle_conns",
                     "step_seconds", "answer_seconds", "ingest_events", "ingest_runs")
        if getattr(args, name) is not None
    }  # fmt: skip
    if args.rates:
        overrides["rates"] = tuple(args.rates)
    if args.answers:
        overrides["answers"] = tuple(args.answers)
    return replace(sizes, **overrides)


def herald_tree() -> str | None:
    """The commit the Herald figures were measured on, "+changes" when the tree differs."""

    def git(*args: str) -> str:
        # GIT_OPTIONAL_LOCKS=0: `status` must not refresh (write) the index of a tree that
        # someone else may be working in.
        env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
        result = subprocess.run(
            ["git", "-C", str(REPO), *args], capture_output=True, text=True, env=env, timeout=10
        )
        return result.stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no")
    except OSError:
        return None
    return f"{commit}+changes" if commit and changed else commit or None


def cores(workers: int = 1) -> tuple[int | None, int | None]:
    """(server core, load core): 0 and 1 when this process may use both (and cores up to
    `workers` - 1), else unpinned."""
    allowed = os.sched_getaffinity(0)
    if {0, 1} | set(range(workers)) <= allowed:
        return 0, 1
    log("bench: cores 0 and 1 are not both available; nothing is pinned")
    return None, None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = sizes_from(args)
    server_core, load_core = cores(max(args.workers))
    if load_core is not None:
        os.sched_setaffinity(0, {load_core})  # keep the orchestrator off the server's core
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # servers inherit it
    workdir = Path(tempfile.mkdtemp(prefix="bench-vs-nchan-"))
    workdir.chmod(0o755)  # nginx's worker runs as nobody and reaches into it
    bench = Bench(build_loadgen(workdir / "bin"), workdir, sizes, server_core, load_core)
    results = {
        label(kind, n): run_server(replace(bench, workers=n), kind, args.shapes)
        for n in args.workers
        for kind in args.servers
    }
    tables = (
        table(results),
        token_table(results),
        ingest_table(results),
        scaling_table(results, args.workers),
    )
    print("\n\n".join(text for text in tables if text))
    for kind, result in results.items():
        if "skipped" in result:
            print(f"{kind}: skipped, {result['skipped']}")
    failed = errors(results)
    for error in failed:
        print(f"error: {error}")
    if args.json:
        document = {
            "sizes": asdict(sizes),
            "cores": {"server": server_core, "load": load_core, "online": os.cpu_count()},
            "workers": args.workers,
            "python": platform.python_version(),
            "herald_tree": herald_tree(),
            "results": results,
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    if failed:
        print(f"logs kept in {workdir}")
        return 1
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
