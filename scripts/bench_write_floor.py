#!/usr/bin/env python3
"""The floor under any broadcast: one socket write per subscriber, nothing else.

A bare uvloop server (no HTTP framework, no Redis) holds N SSE connections from the C
load generator and writes one shared chunk to every transport, several times. It
prints how long a write takes: what Herald's and Nchan's fan-outs both pay per delivery.
Server on core 0, load generator on core 1, as in scripts/bench_vs_nchan.py.

    python3 scripts/bench_write_floor.py --subscribers 5000 --events 20
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import cast

import uvloop
from benchlib.build import build_loadgen
from benchlib.loadgen import SubOptions, Subscribers
from benchlib.procs import free_port

HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


class Stream(asyncio.Protocol):
    """Answers any request with an event-stream head and joins the broadcast list."""

    def __init__(self, streams: list[asyncio.Transport]) -> None:
        self.streams = streams

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if b"\r\n\r\n" in data:
            self.transport.write(HEAD)
            self.streams.append(self.transport)


async def measure(subscribers: int, events: int, workdir: Path) -> list[float]:
    streams: list[asyncio.Transport] = []
    port = free_port()
    server = await asyncio.get_running_loop().create_server(
        lambda: Stream(streams), "127.0.0.1", port, backlog=4096
    )
    loadgen = build_loadgen(workdir)
    subs = Subscribers(
        loadgen, port, "/events", SubOptions(conns=subscribers), core=1, log=workdir / "sub.log"
    )
    try:
        await asyncio.to_thread(subs.wait_ready)
        per_write = []
        for seq in range(1, events + 1):
            body = b"id: %d-0\nevent: tick\ndata: %d %d\n\n" % (seq, seq, time.time_ns() // 1000)
            chunk = b"%x\r\n%s\r\n" % (len(body), body)
            started = time.perf_counter()
            for transport in streams:
                transport.write(chunk)
            per_write.append((time.perf_counter() - started) / len(streams))
            await asyncio.sleep(0.2)
        return per_write
    finally:
        subs.close()
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=5000)
    parser.add_argument("--events", type=int, default=20)
    args = parser.parse_args()
    os.sched_setaffinity(0, {0})
    with tempfile.TemporaryDirectory(prefix="write-floor-") as tmp:
        per_write = uvloop.run(measure(args.subscribers, args.events, Path(tmp)))
    us = sorted(1e6 * t for t in per_write)
    print(
        f"{args.subscribers} sockets, {args.events} broadcasts: one write takes "
        f"{statistics.median(us):.2f} µs median ({us[0]:.2f} to {us[-1]:.2f}); "
        f"a broadcast {statistics.median(us) * args.subscribers / 1000:.1f} ms"
    )


if __name__ == "__main__":
    main()
