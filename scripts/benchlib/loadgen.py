"""Drives the C load generator: `loadgen sub` as a long-lived child, `pub` and `tokens` as runs."""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .procs import BenchError, pinned

Report = dict[str, Any]


@dataclass
class SubOptions:
    """The flags of `loadgen sub` (see loadgen.c)."""

    conns: int
    topics: int = 1
    start_seq: int = 1
    expect: int = 0
    last_event_id: str | None = None
    reconnect: bool = True
    print_ids: bool = False
    max_pending: int = 1000

    def args(self) -> list[str]:
        args = [
            "--conns", str(self.conns), "--topics", str(self.topics),
            "--start-seq", str(self.start_seq), "--expect", str(self.expect),
            "--max-pending", str(self.max_pending),
        ]  # fmt: skip
        if self.last_event_id is not None:
            args += ["--last-event-id", self.last_event_id]
        if self.reconnect:
            args.append("--reconnect")
        if self.print_ids:
            args.append("--print-ids")
        return args


class Subscribers:
    """A `loadgen sub` child holding N SSE connections, driven over its stdin/stdout.

    A reader thread files `ID <seq> <id>` lines into `ids` and queues every other line
    as the answer to the command in flight.
    """

    def __init__(
        self, binary: Path, port: int, path: str, options: SubOptions, core: int | None, log: Path
    ) -> None:
        cmd = [str(binary), "sub", "--port", str(port), "--path", path, *options.args()]
        self.log = log
        with log.open("wb") as stderr:
            self.popen = subprocess.Popen(
                pinned(cmd, core), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=stderr, text=True, bufsize=1,
            )  # fmt: skip
        self.ids: dict[int, str] = {}
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            if line.startswith("ID "):
                _, seq, event_id = line.split(maxsplit=2)
                self.ids[int(seq)] = event_id.strip()
            else:
                self._lines.put(line.strip())
        self._lines.put(None)

    def _next_line(self, timeout: float) -> str:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise BenchError(f"loadgen sub said nothing for {timeout} s") from None
        if line is None:
            raise BenchError(f"loadgen sub exited: {self.log.read_text()[-2000:]}")
        return line

    def _send(self, command: str) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(command + "\n")
        self.popen.stdin.flush()

    def wait_ready(self, timeout: float = 180) -> tuple[int, int]:
        """(connected, failed) once every connection got its response head or failed."""
        words = self._next_line(timeout).split()
        if words[0] != "READY":
            raise BenchError(f"loadgen sub: expected READY, got {words}")
        return int(words[1]), int(words[2])

    def mark(self) -> None:
        """Zero the event counters and latencies; time from now on."""
        self._send("mark")
        if (line := self._next_line(10)) != "MARKED":
            raise BenchError(f"loadgen sub: expected MARKED, got {line}")

    def report(self) -> Report:
        self._send("report")
        report: Report = json.loads(self._next_line(10))
        return report

    def wait_for(
        self, done: Callable[[Report], bool], stall: float, cap: float, poll: float = 0.05
    ) -> Report:
        """Reports until `done`, or until no event arrived for `stall` s, or `cap` s passed."""
        start = last_change = time.monotonic()
        last_events = -1
        while True:
            report = self.report()
            now = time.monotonic()
            if done(report) or now - start > cap:
                return report
            if report["events"] != last_events:
                last_events, last_change = report["events"], now
            elif now - last_change > stall:
                return report
            time.sleep(poll)

    def close(self) -> Report:
        """The final report; then every connection is closed."""
        report = self.report()
        self._send("quit")
        try:
            self.popen.wait(30)
        except subprocess.TimeoutExpired:
            self.kill()
        return report

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()


def publish(
    binary: Path,
    port: int,
    proto: str,
    count: int,
    *,
    topics: int = 1,
    rate: float = 0,
    concurrency: int = 1,
    start_seq: int = 1,
    batch: int = 1,
    stream: bool = False,
    core: int | None = None,
    timeout: float = 600,
) -> Report:
    """Runs `loadgen pub` to the end; its JSON summary.

    `count` events (a multiple of `batch`); to Herald, `batch` events a request as a JSON
    array, or with `stream` one NDJSON request per connection, `batch` lines a chunk.
    """
    cmd = [
        str(binary), "pub", "--port", str(port), "--proto", proto, "--count", str(count),
        "--topics", str(topics), "--rate", str(rate), "--concurrency", str(concurrency),
        "--start-seq", str(start_seq), "--timeout", str(timeout), "--batch", str(batch),
    ]  # fmt: skip
    if stream:
        cmd.append("--stream")
    return _run_to_end(cmd, core, timeout)


def produce_tokens(
    binary: Path,
    port: int,
    proto: str,
    answers: int,
    tokens: int,
    *,
    rate: float,
    stream: bool,
    core: int | None,
    timeout: float,
) -> Report:
    """Runs `loadgen tokens` to the end: `answers` answers on topics t0..t<answers-1>."""
    cmd = [
        str(binary), "tokens", "--port", str(port), "--proto", proto,
        "--answers", str(answers), "--tokens", str(tokens), "--rate", str(rate),
        "--timeout", str(timeout),
    ]  # fmt: skip
    if stream:
        cmd.append("--stream")
    return _run_to_end(cmd, core, timeout)


def _run_to_end(cmd: list[str], core: int | None, timeout: float) -> Report:
    """The JSON line a `loadgen` run prints last; it stops itself after `timeout` s."""
    try:
        result = subprocess.run(
            pinned(cmd, core), capture_output=True, text=True, timeout=timeout + 30
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"loadgen {cmd[1]} did not finish within {timeout + 30} s") from None
    lines = result.stdout.strip().splitlines()
    if not lines:
        raise BenchError(f"loadgen {cmd[1]} failed ({result.returncode}): {result.stderr}")
    report: Report = json.loads(lines[-1])
    return report
