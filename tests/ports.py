"""Loopback ports for the servers the tests start, without racing other processes for them.

A port picked here is only free at the moment of the pick: before a server in another
process binds it, another process (a parallel test run, an outgoing connection) may take
it. So a server that can bind port 0 does, and says which port it got (`uvicorn_port`);
one that cannot (redis-server) starts on a picked port through `start_on_free_port`,
which picks again when the server says the port was taken. Either way a server counts as
started only once it holds the listening socket itself (`bound`), since whatever took
the port may answer the test's probes too.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

ATTEMPTS = 5
# How uvicorn and redis-server say it, in one case or another.
IN_USE = re.compile("address already in use", re.IGNORECASE)
# uvicorn logs the port it got at INFO when it was given port 0.
UVICORN_RUNNING = re.compile(r"Uvicorn running on \S+://\S+:(\d+) \(Press CTRL\+C to quit\)")
LISTEN = "0A"  # the state column of /proc/net/tcp


class AddressInUse(Exception):
    """A server could not bind its port: another process has it."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cluster_port() -> int:
    """A free port whose cluster bus port (10,000 higher) is free too."""
    while True:
        port = random.randint(20_000, 55_535)
        with socket.socket() as a, socket.socket() as b:
            try:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10_000))
            except OSError:
                continue
            return port


@contextlib.contextmanager
def refused_port() -> Iterator[int]:
    """A port on 127.0.0.1 that refuses connections for as long as the block runs.

    Bound but not listening: the kernel refuses every connection, and no other process
    can start listening there meanwhile, as it could on a port that was merely free.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


def start_on_free_port(
    start: Callable[[int], T], first: int | None = None, pick: Callable[[], int] | None = None
) -> T:
    """`start(port)` on `first` or a picked port; again on a new pick (`free_port` unless
    `pick` is given) each time it raises AddressInUse, up to ATTEMPTS starts in all."""
    # Looked up at each call, so that a test can hand out a taken port first.
    pick = pick or free_port
    port = first or pick()
    for _ in range(ATTEMPTS - 1):
        with contextlib.suppress(AddressInUse):
            return start(port)
        port = pick()
    return start(port)


def bound(proc: subprocess.Popen[bytes], port: int, output: str) -> bool:
    """Whether `proc` holds the socket listening on `port` yet.

    When its `output` says the port is taken, kills `proc` and raises AddressInUse: a
    server does not try another port by itself, and `herald serve` may not even exit.
    """
    if IN_USE.search(output):
        proc.kill()
        proc.wait()
        raise AddressInUse(f"port {port} is taken by another process:\n{output[-2000:]}")
    return proc.poll() is None and _holds_listener(proc.pid, port)


def uvicorn_port(output: str) -> int | None:
    """The port that a uvicorn server started on port 0 says it got, once it has."""
    running = UVICORN_RUNNING.search(output)
    return int(running[1]) if running else None


def _holds_listener(pid: int, port: int) -> bool:
    sockets = _listening_sockets(port)
    try:
        return bool(sockets) and any(
            os.readlink(fd) in sockets for fd in Path(f"/proc/{pid}/fd").iterdir()
        )
    except OSError:  # it exited, or closed a descriptor while we looked
        return False


def _listening_sockets(port: int) -> set[str]:
    """The sockets listening on `port`, named as the links in /proc/PID/fd name them."""
    found = set()
    for table in (Path("/proc/net/tcp"), Path("/proc/net/tcp6")):
        if not table.exists():  # a kernel without IPv6
            continue
        for row in table.read_text().splitlines()[1:]:
            fields = row.split()
            if fields[3] == LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
                found.add(f"socket:[{fields[9]}]")
    return found
