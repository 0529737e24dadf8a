"""The servers under test, each started fresh and pinned to the server core.

- herald: `python -m service serve` (uvicorn, one process) on its own redis-server.
- baseline: scripts/baseline_xread_per_subscriber.py, the same HTTP API, one XREAD per
  subscriber, on its own redis-server.
- nchan: nginx with the Nchan module, one worker, in-memory channels.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from .procs import (
    BenchError,
    Process,
    child_pids,
    cpu_seconds,
    pinned,
    rss_bytes,
    start_on_free_port,
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
    measured_pid: int  # the process holding the connections (for nginx, its worker)
    redis: RedisServer | None

    def rss(self) -> int:
        self.process.check_alive()
        return rss_bytes(self.measured_pid)

    def cpu(self) -> float:
        return cpu_seconds(self.measured_pid)


def unavailable_reason(kind: str) -> str | None:
    """Why `kind` cannot run on this machine, or None."""
    if kind == "baseline" and not BASELINE_SCRIPT.exists():
        return f"{BASELINE_SCRIPT.relative_to(REPO)} does not exist"
    if kind == "nchan" and (shutil.which("nginx") is None or not NCHAN_MODULE.exists()):
        return "nginx with the Nchan module is not installed (apt-get install libnginx-mod-nchan)"
    return None


@contextmanager
def running_server(
    kind: str, workdir: Path, server_core: int | None, aux_core: int | None
) -> Iterator[Server]:
    """A fresh `kind` server (and its redis-server on `aux_core`), stopped on exit."""
    with ExitStack() as stack:
        if kind == "nchan":
            yield _start_nchan(workdir, server_core, stack)
            return
        redis = RedisServer(workdir, aux_core)
        stack.callback(redis.stop)
        yield _start_python_server(kind, redis, workdir, server_core, stack)


def _start_python_server(
    kind: str, redis: RedisServer, workdir: Path, core: int | None, stack: ExitStack
) -> Server:
    # Access logs at info level would cost a line per request: nginx runs with them off too.
    env = {**os.environ, "HERALD_REDIS_URL": redis.url, "HERALD_LOG_LEVEL": "warning"}

    def start(port: int) -> Server:
        listen = ["--host", "127.0.0.1", "--port", str(port)]
        if kind == "herald":
            cmd = [sys.executable, "-m", "service", "serve", *listen]
        else:
            cmd = [sys.executable, str(BASELINE_SCRIPT), *listen, "--redis-url", redis.url]
        log = workdir / f"{kind}-{port}.log"
        process = Process(kind, pinned(cmd, core), log, cwd=REPO, env=env)
        stack.callback(process.stop)
        # A baseline without /readyz answers 404 once it serves.
        ok = {200} if kind == "herald" else {200, 404}
        wait_http(process, f"http://127.0.0.1:{port}/readyz", ok)
        return Server(kind, port, "herald", "/events?topic=t{k}", process, process.pid, redis)

    return start_on_free_port(start)


def nginx_config(port: int, prefix: Path) -> str:
    """Nchan as a standalone broadcaster: one worker, in-memory channels, live-only SSE."""
    temp_paths = "\n".join(
        f"  {name}_temp_path {prefix / name};"
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""\
load_module {NCHAN_MODULE};
daemon off;
master_process on;
worker_processes 1;
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
    listen 127.0.0.1:{port} backlog=4096;
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


def _start_nchan(workdir: Path, core: int | None, stack: ExitStack) -> Server:
    nginx = shutil.which("nginx")
    if nginx is None:
        raise BenchError("nginx is not installed")

    def start(port: int) -> Server:
        prefix = workdir / f"nchan-{port}"
        prefix.mkdir()
        # nginx's worker drops root for nobody, which must reach the temp paths.
        prefix.chmod(0o755)
        config = prefix / "nginx.conf"
        config.write_text(nginx_config(port, prefix))
        args = [nginx, "-c", str(config), "-p", f"{prefix}/"]
        check = subprocess.run([*args, "-t"], capture_output=True, text=True)
        if check.returncode != 0:
            raise BenchError(f"nginx -t rejected {config}:\n{check.stderr}")
        process = Process("nchan", pinned(args, core), prefix / "stderr.log")
        stack.callback(process.stop)
        # Without `Accept: text/event-stream` the subscriber location answers 403: it serves.
        wait_http(process, f"http://127.0.0.1:{port}/sub?id=ready", None)
        workers = child_pids(process.pid)
        if len(workers) != 1:
            raise BenchError(f"expected one nginx worker, found {workers}")
        return Server("nchan", port, "nchan", "/sub?id=t{k}", process, workers[0], None)

    return start_on_free_port(start)
