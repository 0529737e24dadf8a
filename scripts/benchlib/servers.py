"""The servers under test, each started fresh and pinned to the server core.

- herald: `python -m service serve` (uvicorn, one process) on its own redis-server.
- baseline: scripts/baseline_xread_per_subscriber.py, the same HTTP API, one XREAD per
  subscriber, on its own redis-server.
- nchan: nginx with the Nchan module, one worker, in-memory channels.

With `workers` > 1, Herald runs `serve --workers N` and nginx N worker processes, and
worker i is pinned to core `server_core + i`; the baseline has one process only.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from .procs import (
    BenchError,
    Process,
    child_pids,
    connections_by_pid,
    cpu_seconds,
    pinned,
    rss_bytes,
    start_on_free_port,
    wait_accepting,
    wait_http,
)
from .redis_server import RedisServer

REPO = Path(__file__).resolve().parents[2]
BASELINE_SCRIPT = REPO / "scripts" / "baseline_xread_per_subscriber.py"
NCHAN_MODULE = Path("/usr/lib/nginx/modules/ngx_nchan_module.so")
SERVER_KINDS = ("herald", "nchan", "baseline")


@dataclass
class Server:
    kind: str
    port: int
    proto: str  # what `loadgen pub --proto` speaks to it
    sub_path: str  # `loadgen sub --path` template; {k} is the topic number
    process: Process
    # The processes holding the connections (nginx: its workers; Herald with several
    # workers: them and the parent that supervises them).
    measured_pids: tuple[int, ...]
    redis: RedisServer | None
    # Those that accept connections, each on a core of its own.
    worker_pids: tuple[int, ...] = ()

    def rss(self) -> int:
        self.process.check_alive()
        return sum(map(rss_bytes, self.measured_pids))

    def cpu(self) -> float:
        return sum(map(cpu_seconds, self.measured_pids))

    def cpu_per_worker(self) -> list[float]:
        """CPU seconds each worker process has used, in the order of its core."""
        return [cpu_seconds(pid) for pid in self.worker_pids]

    def connections_per_worker(self) -> list[int]:
        """Open connections each worker process holds, in the order of its core."""
        held = connections_by_pid(self.port, self.worker_pids)
        return [held.get(pid, 0) for pid in self.worker_pids]


def unavailable_reason(kind: str) -> str | None:
    """Why `kind` cannot run on this machine, or None."""
    if kind == "baseline" and not BASELINE_SCRIPT.exists():
        return f"{BASELINE_SCRIPT.relative_to(REPO)} does not exist"
    if kind == "nchan" and (shutil.which("nginx") is None or not NCHAN_MODULE.exists()):
        return "nginx with the Nchan module is not installed (apt-get install libnginx-mod-nchan)"
    return None


@contextmanager
def running_server(
    kind: str, workdir: Path, server_core: int | None, aux_core: int | None, workers: int = 1
) -> Iterator[Server]:
    """A fresh `kind` server (and its redis-server on `aux_core`), stopped on exit."""
    if workers > 1 and kind == "baseline":
        raise BenchError("the baseline runs one process only")
    with ExitStack() as stack:
        if kind == "nchan":
            yield _start_nchan(workdir, server_core, workers, stack)
            return
        redis = RedisServer(workdir, aux_core)
        stack.callback(redis.stop)
        yield _start_python_server(kind, redis, workdir, server_core, workers, stack)


def _cores(first: int | None, workers: int) -> str | None:
    """The taskset list of `workers` cores from `first` on."""
    return None if first is None else ",".join(str(first + i) for i in range(workers))


def _start_python_server(
    kind: str,
    redis: RedisServer,
    workdir: Path,
    core: int | None,
    workers: int,
    stack: ExitStack,
) -> Server:
    # Access logs at info level would cost a line per request: nginx runs with them off too.
    env = {**os.environ, "HERALD_REDIS_URL": redis.url, "HERALD_LOG_LEVEL": "warning"}

    def start(port: int) -> Server:
        listen = ["--host", "127.0.0.1", "--port", str(port)]
        if kind == "herald":
            cmd = [sys.executable, "-m", "service", "serve", *listen, "--workers", str(workers)]
        else:
            cmd = [sys.executable, str(BASELINE_SCRIPT), *listen, "--redis-url", redis.url]
        log = workdir / f"{kind}-{port}.log"
        process = Process(kind, pinned(cmd, _cores(core, workers)), log, cwd=REPO, env=env)
        stack.callback(process.stop)
        # A baseline without /readyz answers 404 once it serves.
        ok = {200} if kind == "herald" else {200, 404}
        wait_http(process, f"http://127.0.0.1:{port}/readyz", ok)
        server = Server(kind, port, "herald", "/events?topic=t{k}", process, (process.pid,), redis)
        if workers == 1:
            return replace(server, worker_pids=(process.pid,))
        pids = _uvicorn_workers(process, workers)
        if core is not None:
            for offset, pid in enumerate(pids):
                os.sched_setaffinity(pid, {core + offset})
        # Before the first worker's subscribers arrive, or the others would get none.
        wait_accepting(port, pids)
        return replace(server, measured_pids=(process.pid, *pids), worker_pids=pids)

    return start_on_free_port(start)


def _uvicorn_workers(process: Process, workers: int, timeout: float = 30) -> tuple[int, ...]:
    """The worker processes of `serve --workers N` (multiprocessing's tracker is not one)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        process.check_alive()
        found = tuple(
            pid
            for pid in child_pids(process.pid)
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
        )
        if len(found) == workers:
            return found
        time.sleep(0.1)
    raise BenchError(f"herald: {workers} worker processes did not start within {timeout} s")


def nginx_config(port: int, prefix: Path, workers: int = 1) -> str:
    """Nchan as a standalone broadcaster: in-memory channels, live-only SSE; one worker
    (or `workers`, each bound to one of the cores nginx may use)."""
    affinity = "\nworker_cpu_affinity auto;" if workers > 1 else ""
    # A socket per worker, spread by the kernel: on one shared socket the worker that
    # woke first took all of a slow trickle of connections.
    reuseport = " reuseport" if workers > 1 else ""
    temp_paths = "\n".join(
        f"  {name}_temp_path {prefix / name};"
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""\
load_module {NCHAN_MODULE};
daemon off;
master_process on;
worker_processes {workers};{affinity}
worker_rlimit_nofile 20000;
pid {prefix / "nginx.pid"};
error_log {prefix / "error.log"} warn;
events {{
  worker_connections 20000;
}}
http {{
  access_log off;
{temp_paths}
  # the publisher keeps one connection for the whole run
  keepalive_requests 100000000;
  nchan_max_reserved_memory 256M;
  server {{
    # a resume storm connects thousands of clients at once
    listen 127.0.0.1:{port} backlog=4096{reuseport};
    # every channel keeps its last 1000 messages for an hour, so Last-Event-ID can resume
    nchan_message_buffer_length 1000;
    nchan_message_timeout 1h;
    location = /pub {{
      nchan_publisher http;
      nchan_channel_id $arg_id;
    }}
    location = /sub {{
      nchan_subscriber eventsource;
      nchan_channel_id $arg_id;
      nchan_subscriber_first_message newest;
      nchan_subscriber_timeout 0;
      nchan_eventsource_event tick;
    }}
  }}
}}
"""


def _start_nchan(workdir: Path, core: int | None, workers: int, stack: ExitStack) -> Server:
    nginx = shutil.which("nginx")
    if nginx is None:
        raise BenchError("nginx is not installed")

    def start(port: int) -> Server:
        prefix = workdir / f"nchan-{port}"
        prefix.mkdir()
        # nginx's worker drops root for nobody, which must reach the temp paths.
        prefix.chmod(0o755)
        config = prefix / "nginx.conf"
        config.write_text(nginx_config(port, prefix, workers))
        args = [nginx, "-c", str(config), "-p", f"{prefix}/"]
        check = subprocess.run([*args, "-t"], capture_output=True, text=True)
        if check.returncode != 0:
            raise BenchError(f"nginx -t rejected {config}:\n{check.stderr}")
        process = Process("nchan", pinned(args, _cores(core, workers)), prefix / "stderr.log")
        stack.callback(process.stop)
        # Without `Accept: text/event-stream` the subscriber location answers 403: it serves.
        wait_http(process, f"http://127.0.0.1:{port}/sub?id=ready", None)
        pids = tuple(child_pids(process.pid))
        if len(pids) != workers:
            raise BenchError(f"expected {workers} nginx workers, found {pids}")
        wait_accepting(port, pids)
        return Server("nchan", port, "nchan", "/sub?id=t{k}", process, pids, None, pids)

    return start_on_free_port(start)
