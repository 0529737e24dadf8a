"""Servers the tests start come up even when another process takes their port first."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests import ports
from tests.conftest import HeraldLauncher, RedisServer, run_herald

integration = pytest.mark.integration


@pytest.fixture
def taken_port(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """A port that the picker hands out first, where an impostor already listens and
    answers PING and /readyz as if it were the server a test started."""
    real = ports.free_port
    stop = threading.Event()
    with socket.create_server(("127.0.0.1", 0)) as impostor:
        impostor.settimeout(0.05)
        answering = threading.Thread(target=_answer_every_probe, args=(impostor, stop))
        answering.start()
        port = int(impostor.getsockname()[1])
        picks = iter([port])
        monkeypatch.setattr(ports, "free_port", lambda: next(picks, None) or real())
        try:
            yield port
        finally:
            stop.set()
            answering.join()


def _answer_every_probe(impostor: socket.socket, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            connection, _ = impostor.accept()
        except TimeoutError:
            continue
        with connection:
            connection.settimeout(1)
            request = connection.recv(4096)
            if request.startswith(b"*"):  # RESP, as redis clients speak it
                connection.sendall(b"+PONG\r\n")
            else:
                connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")


@integration
def test_a_redis_server_whose_port_was_taken_starts_on_another(
    taken_port: int, redis_server: RedisServer, tmp_path: Path
) -> None:
    # `redis_server` only for its check that redis-server is installed.
    server = RedisServer(ports.free_port(), tmp_path)
    try:
        server.start()
        assert server.port != taken_port
        assert server.proc is not None and server.proc.poll() is None
        assert server.ping()
    finally:
        server.kill()


@integration
def test_a_herald_whose_port_was_taken_starts_on_another(
    taken_port: int, redis_server: RedisServer, tmp_path: Path
) -> None:
    launcher = HeraldLauncher(redis_server.url, tmp_path)
    try:
        app = launcher()
        assert app.port != taken_port
        assert httpx.get(f"{app.url}/healthz").json() == {"status": "ok"}
    finally:
        launcher.stop_all(show_logs=False)


def test_starting_gives_up_after_a_bounded_number_of_taken_ports() -> None:
    tried: list[int] = []

    def start(port: int) -> None:
        tried.append(port)
        raise ports.AddressInUse(f"port {port} is taken")

    with pytest.raises(ports.AddressInUse):
        ports.start_on_free_port(start, first=1, pick=lambda: len(tried) + 1)
    assert tried == list(range(1, ports.ATTEMPTS + 1))


def test_herald_serve_on_a_taken_port_says_so_and_exits() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ran = run_herald("serve", "--port", str(port), timeout=30)
    assert ran.returncode != 0
    assert "address already in use" in ran.stderr
    assert "Application shutdown complete" in ran.stderr
