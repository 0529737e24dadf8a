"""Fixtures: a private redis-server, a flush before each test, and real Herald processes.

Async tests and fixtures run under pytest-asyncio; pyproject.toml sets
`asyncio_mode = "auto"` and `asyncio_default_fixture_loop_scope = "function"` in
`[tool.pytest.ini_options]`. Async fixtures here use `pytest_asyncio.fixture` and the
integration module marks itself `asyncio`, so they also work in strict mode.

Integration tests start their own `redis-server` on a free loopback port (never one
that happens to be running) and the real service as a subprocess on another free port,
without racing other processes for the ports (see tests/ports.py):

    def test_something(herald):
        app = herald(HERALD_HEARTBEAT_SECONDS="1")
        httpx.get(f"{app.url}/healthz")
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from tests import ports

# Test modules import the picker from here, where it used to live.
from tests.ports import free_port as free_port

ROOT = Path(__file__).resolve().parent.parent
REDIS_START_TIMEOUT = 10.0
HERALD_START_TIMEOUT = 20.0
HERALD_STOP_TIMEOUT = 10.0
SERVE = [sys.executable, "-m", "service", "serve"]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "integration: talks to a real redis-server and a real Herald process"
    )


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    # Keep each phase's report on the item, so fixtures can print logs when a test failed.
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


def _test_failed(request: pytest.FixtureRequest) -> bool:
    report = getattr(request.node, "report_call", None)
    setup = getattr(request.node, "report_setup", None)
    return bool((report and report.failed) or (setup and setup.failed))


def run_herald(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`herald ARGS…` run to its end, with no HERALD_ variable from the test's environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=timeout,
    )


def metric(exposition: str, name: str) -> float:
    """One sample's value from a /metrics answer (Prometheus text format)."""
    (line,) = [m for m in exposition.splitlines() if m.startswith(name + " ")]
    return float(line.split()[1])


async def wait_until(
    condition: Callable[[], Awaitable[bool]], what: str, within: float = 10.0
) -> None:
    """Poll `condition` until it holds; fail saying `what` did not happen `within` s."""
    deadline = time.monotonic() + within
    while True:
        if await condition():
            return
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {within} s")
        await asyncio.sleep(0.05)


def _wait_for_port_closed(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.2)
            if sock.connect_ex(("127.0.0.1", port)) != 0:
                return
        time.sleep(0.05)


def _stop_process(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """SIGTERM, wait up to `timeout` s, then SIGKILL; the return code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait(5)


def _tail(path: Path, limit: int = 6000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "<no output file>"
    return text if len(text) <= limit else "…" + text[-limit:]


# --------------------------------------------------------------------------- redis


@dataclass
class RedisServer:
    """A private `redis-server` process on 127.0.0.1.

    Its first start moves to another port (`pick_port`) while the one it has turns out
    taken; a restart stays on its port, where its clients are.
    """

    port: int
    directory: Path
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)
    started_once: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self.log_path = self.directory / "redis-server.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start (or restart, on the same port) and wait until PING answers."""
        if self.proc is not None and self.proc.poll() is None:
            return
        if self.started_once:
            self._launch(self.port)
        else:
            ports.start_on_free_port(self._launch, first=self.port, pick=self.pick_port)
            self.started_once = True

    def pick_port(self) -> int:
        """A port to try when the first start finds its port taken."""
        return ports.free_port()

    def _launch(self, port: int) -> None:
        self.port = port
        # The log is kept across restarts: only what this start wrote tells about it.
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + REDIS_START_TIMEOUT
        while time.monotonic() < deadline:
            # Whether it exited, before reading the log: then the log has its last words.
            exited = self.proc.poll() is not None
            written = self.log_path.read_bytes()[offset:].decode(errors="replace")
            if ports.bound(self.proc, port, written) and self.ping():
                return
            if exited:
                pytest.fail(
                    f"redis-server exited with {self.proc.returncode}:\n{_tail(self.log_path)}"
                )
            time.sleep(0.05)
        self.kill()
        pytest.fail(
            f"redis-server did not answer PING within {REDIS_START_TIMEOUT} s:\n"
            f"{_tail(self.log_path)}"
        )

    def command(self) -> list[str]:
        options = {
            "port": str(self.port),
            "bind": "127.0.0.1",
            "save": "",
            "appendonly": "no",
            "dir": str(self.directory),
        }
        return ["redis-server", *(part for k, v in options.items() for part in (f"--{k}", v))]

    def ping(self) -> bool:
        """Whether the server answers PING (a raw RESP exchange, no client library)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"*1\r\n$4\r\nPING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM and wait (SIGKILL if it does not exit in `timeout` s)."""
        if self.proc is not None:
            _stop_process(self.proc, timeout)
            self.proc = None
            _wait_for_port_closed(self.port, timeout)

    def kill(self) -> None:
        """SIGKILL: the server vanishes as if the machine died."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(5)
            self.proc = None


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One private redis-server for the session; `flushed_redis` isolates the tests."""
    if shutil.which("redis-server") is None:
        message = "redis-server is not on PATH (apt-get install redis-server)"
        if os.environ.get("CI") == "true":
            pytest.fail(message + "; under CI=true this is a failure, not a skip")
        pytest.skip(message)
    server = RedisServer(ports.free_port(), tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def flushed_redis(redis_server: RedisServer) -> RedisServer:
    """The session's redis-server, running and empty (FLUSHALL) at the start of the test."""
    redis_server.start()  # a previous test may have stopped it
    with socket.create_connection(("127.0.0.1", redis_server.port), timeout=5) as sock:
        sock.sendall(b"*1\r\n$8\r\nFLUSHALL\r\n")
        assert sock.recv(64).startswith(b"+OK")
    return redis_server


@pytest_asyncio.fixture
async def redis_client(flushed_redis: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """A redis.asyncio client (str answers) to the test's empty redis-server."""
    client = aioredis.Redis.from_url(flushed_redis.url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


# --------------------------------------------------------------------------- herald


@dataclass
class Herald:
    """A running `python -m service serve` process."""

    port: int  # 0 until a Herald started on port 0 has said which port it got
    proc: subprocess.Popen[bytes]
    env: dict[str, str]
    stdout_path: Path
    stderr_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def logs(self) -> str:
        return (
            f"--- herald :{self.port} stdout ---\n{_tail(self.stdout_path)}\n"
            f"--- herald :{self.port} stderr ---\n{_tail(self.stderr_path)}"
        )

    def terminate(self, timeout: float = HERALD_STOP_TIMEOUT) -> int:
        """SIGTERM, wait up to `timeout` s, then SIGKILL; the return code."""
        return _stop_process(self.proc, timeout)


def wait_ready(herald: Herald) -> None:
    """Wait until `herald` listens and /readyz answers 200; fail with its logs otherwise.

    A Herald started on port 0 (`herald.port` 0) says the port it got in its log, at
    INFO, the default level; `herald.port` is set from there.
    """
    deadline = time.monotonic() + HERALD_START_TIMEOUT
    last = "not listening yet"
    with httpx.Client(timeout=1.0) as client:
        while time.monotonic() < deadline:
            # Whether it exited, before reading the log: then the log has its last words.
            exited = herald.proc.poll() is not None
            stderr = herald.stderr_path.read_text(errors="replace")
            if not herald.port:
                herald.port = ports.uvicorn_port(stderr) or 0
            if herald.port and ports.bound(herald.proc, herald.port, stderr):
                try:
                    answer = client.get(f"{herald.url}/readyz")
                    if answer.status_code == 200:
                        return
                    last = f"{answer.status_code} {answer.text[:200]}"
                except httpx.HTTPError as exc:
                    last = repr(exc)
            elif exited:
                pytest.fail(
                    f"Herald exited with {herald.proc.returncode} before it was ready\n"
                    + herald.logs()
                )
            time.sleep(0.1)
    herald.terminate()
    pytest.fail(
        f"Herald not ready within {HERALD_START_TIMEOUT} s (last /readyz: {last})\n" + herald.logs()
    )


class HeraldLauncher:
    """Starts Herald processes against one redis-server and stops them all at the end."""

    def __init__(self, redis_url: str | None, directory: Path) -> None:
        self.redis_url = redis_url
        self.directory = directory
        self.started: list[Herald] = []

    def __call__(
        self, host: str = "127.0.0.1", port: int | None = None, **env: str | int | float
    ) -> Herald:
        """Start Herald with `HERALD_REDIS_URL` and `env` (`HERALD_*` names); wait for /readyz.

        `host` is where it listens; the tests reach it on 127.0.0.1 either way. Without
        `port` it binds port 0, so that no other process can take its port first; `port`
        lets a restarted Herald come back where its clients were.
        Without a Redis URL it runs on the embedded fakeredis.
        """
        extra = {name: str(value) for name, value in env.items()}
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
        child_env |= {"PYTHONUNBUFFERED": "1"} | extra
        if self.redis_url is not None:
            child_env["HERALD_REDIS_URL"] = self.redis_url
        stdout_path, stderr_path = self._log_paths()
        with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
            proc = subprocess.Popen(
                [*SERVE, "--host", host, "--port", str(port or 0)],
                cwd=ROOT,
                env=child_env,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
            )
        herald = Herald(port or 0, proc, extra, stdout_path, stderr_path)
        self.started.append(herald)
        wait_ready(herald)
        return herald

    def _log_paths(self) -> tuple[Path, Path]:
        # Launchers may share a directory, and the port is not known before the start.
        n = len(self.started)
        while (self.directory / f"herald-{n}.stdout.log").exists():
            n += 1
        return self.directory / f"herald-{n}.stdout.log", self.directory / f"herald-{n}.stderr.log"

    def stop_all(self, show_logs: bool) -> None:
        for herald in self.started:
            herald.terminate()
            if show_logs:
                print(herald.logs())


HeraldFactory = Callable[..., Herald]


@pytest.fixture
def herald(
    request: pytest.FixtureRequest, flushed_redis: RedisServer, tmp_path: Path
) -> Iterator[HeraldFactory]:
    """Factory: `herald(HERALD_HEARTBEAT_SECONDS=1, ...)` starts a ready Herald process.

    Every process started is stopped at teardown (SIGTERM, 10 s, SIGKILL); when the test
    failed, their stdout and stderr are printed into the report.
    """
    launcher = HeraldLauncher(flushed_redis.url, tmp_path)
    try:
        yield launcher
    finally:
        launcher.stop_all(show_logs=_test_failed(request))


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[HeraldLauncher]:
    """Starts Herald with no Redis at all, as the README's first command does."""
    launcher = HeraldLauncher(None, tmp_path)
    yield launcher
    launcher.stop_all(show_logs=True)  # pytest shows them only when the test failed


@pytest.fixture(scope="module")
def shared_herald(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Herald]:
    """One Herald with default settings for a module's tests that need nothing special.

    Its logs are in the module's temp directory; tests using it still get `flushed_redis`.
    """
    redis_server.start()
    launcher = HeraldLauncher(redis_server.url, tmp_path_factory.mktemp("herald"))
    try:
        yield launcher()
    finally:
        launcher.stop_all(show_logs=False)


@pytest.fixture
def default_herald(
    request: pytest.FixtureRequest, shared_herald: Herald, flushed_redis: RedisServer
) -> Iterator[Herald]:
    """The module's shared Herald, checked alive, with an empty redis; logs on failure."""
    if shared_herald.proc.poll() is not None:
        pytest.fail(f"the shared Herald process died\n{shared_herald.logs()}")
    yield shared_herald
    if _test_failed(request):
        print(shared_herald.logs())


# --------------------------------------------------------------------------- browser


def need_chromium() -> None:
    """Skip without Debian's Chromium, or fail under CI=true."""
    if not os.access(CHROMIUM, os.X_OK):
        message = f"{CHROMIUM} is missing (apt-get install chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(message + "; under CI=true this is a failure, not a skip")
        pytest.skip(message)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's headless Chromium driven by Playwright; no browser is ever downloaded."""
    sync_api = pytest.importorskip("playwright.sync_api")
    need_chromium()
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()
