"""Child processes pinned to a core, readiness polling, and what /proc says about a pid."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from contextlib import suppress
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
PORT_ATTEMPTS = 5
# redis-server, uvicorn and nginx all say it this way, in this or another case.
IN_USE = re.compile("address already in use", re.IGNORECASE)
LISTEN = "0A"  # the state column of /proc/net/tcp
ESTABLISHED = "01"


class BenchError(RuntimeError):
    """A server or load generator did not do what the benchmark needs."""


class AddressInUse(BenchError):
    """A server could not bind its port: another process took it after it was picked."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_on_free_port(start: Callable[[int], T]) -> T:
    """`start(port)` on a free port; on a new one each time it raises AddressInUse, up to
    PORT_ATTEMPTS starts in all (a port is free only when picked: the server binds later)."""
    for _ in range(PORT_ATTEMPTS - 1):
        with suppress(AddressInUse):
            return start(free_port())
    return start(free_port())


def pinned(cmd: Sequence[str], core: int | None) -> list[str]:
    """`cmd` under `taskset -c core`, or as it is when `core` is None.

    taskset sets the affinity outright, so the child gets `core` whatever the caller's own
    affinity is; the caller checks beforehand that the core exists.
    """
    if core is None:
        return list(cmd)
    if shutil.which("taskset") is None:
        raise SystemExit("bench: taskset is needed to pin processes (apt-get install util-linux)")
    return ["taskset", "-c", str(core), *cmd]


class Process:
    """A long-running child whose output goes to a log file; stop() ends it by its pid."""

    def __init__(
        self,
        name: str,
        cmd: Sequence[str],
        log: Path,
        *,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.log = log
        with log.open("wb") as out:
            self.popen = subprocess.Popen(
                list(cmd),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=cwd,
                env=env,
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            raise BenchError(f"{self.name} exited with {self.popen.returncode}: {self.tail()}")

    def bound(self, port: int) -> bool:
        """Whether it holds the socket listening on `port` yet: whatever took a port may
        answer too. BenchError when it exited; AddressInUse, once it is killed, when it
        says another process has the port (`herald serve` may not even exit then)."""
        # Whether it exited, before reading the log: then the log has its last words.
        exited = self.popen.poll() is not None
        if IN_USE.search(self.log.read_text(errors="replace")):
            self.popen.kill()
            self.popen.wait()
            raise AddressInUse(f"{self.name}: port {port} is taken: {self.tail()}")
        if exited:
            raise BenchError(f"{self.name} exited with {self.popen.returncode}: {self.tail()}")
        return _holds_listener(self.pid, port)

    def tail(self, chars: int = 2000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def stop(self, grace: float = 15) -> None:
        if self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(grace)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


def http_status(url: str) -> int | None:
    """The status of a GET, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except OSError:
        return None


def wait_http(process: Process, url: str, ok: set[int] | None, timeout: float = 30) -> None:
    """Polls `url`, once `process` listens on its port, until it answers with a status in
    `ok` (None: any answer at all)."""
    port = urllib.parse.urlsplit(url).port
    if port is None:
        raise BenchError(f"{url} names no port")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.bound(port):
            status = http_status(url)
            if status is not None and (ok is None or status in ok):
                return
        time.sleep(0.1)
    raise BenchError(f"{process.name}: {url} was not ready within {timeout} s")


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
    return _sockets(port, LISTEN)


def _sockets(port: int, state: str) -> set[str]:
    """The sockets of local port `port` in `state`, named as /proc/PID/fd links name them."""
    found = set()
    for table in (Path("/proc/net/tcp"), Path("/proc/net/tcp6")):
        if not table.exists():  # a kernel without IPv6
            continue
        for row in table.read_text().splitlines()[1:]:
            fields = row.split()
            if fields[3] == state and int(fields[1].rsplit(":", 1)[1], 16) == port:
                found.add(f"socket:[{fields[9]}]")
    return found


def connections_by_pid(port: int, pids: Sequence[int]) -> dict[int, int]:
    """How many open connections to `port` each of `pids` holds."""
    established = _sockets(port, ESTABLISHED)
    held = {}
    for pid in pids:
        n = 0
        with suppress(OSError):  # it exited
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with suppress(OSError):  # closed while we looked
                    n += os.readlink(fd) in established
        held[pid] = n
    return held


def wait_accepting(port: int, pids: Sequence[int], timeout: float = 30) -> None:
    """Return once each of `pids` has accepted a connection to `port`.

    Processes sharing a listening socket take whatever arrives as soon as each serves: a
    worker still starting when the first clients connect would be left without them.
    """
    deadline = time.monotonic() + timeout
    probes: list[socket.socket] = []
    try:
        while time.monotonic() < deadline:
            probes.append(socket.create_connection(("127.0.0.1", port), timeout=2))
            time.sleep(0.02)
            if all(connections_by_pid(port, pids).values()):
                return
            if len(probes) >= 32:
                for probe in probes:
                    probe.close()
                probes.clear()
                time.sleep(0.2)
    finally:
        for probe in probes:
            probe.close()
    raise BenchError(f"not every one of {list(pids)} accepted a connection within {timeout} s")


def rss_bytes(pid: int) -> int:
    """Resident set size from /proc/PID/statm (shared pages it touched included)."""
    fields = Path(f"/proc/{pid}/statm").read_text().split()
    return int(fields[1]) * PAGE_SIZE


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process has used."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name in parentheses may hold spaces: split after its closing parenthesis.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def core_busy_seconds(core: int) -> float:
    """CPU seconds core `core` has spent on anything but idling, from /proc/stat."""
    for line in Path("/proc/stat").read_text().splitlines():
        name, *ticks = line.split()
        if name == f"cpu{core}":
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, ticks[:8])
            return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS
    raise BenchError(f"/proc/stat has no cpu{core}")


def child_pids(pid: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
            children.append(int(entry.name))
    return sorted(children)
