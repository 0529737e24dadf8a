"""A client that vanishes without a FIN is found out and released, on real network links.

The client runs in its own network namespace behind a veth pair; taking its end of
the link down drops every packet silently, as a dead NAT entry or a pulled cable does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.conftest import Herald, HeraldFactory, metric

pytestmark = pytest.mark.integration

CLIENT = """
import socket, sys, time
sock = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
sock.sendall(b"GET /events?topic=t HTTP/1.1\\r\\nHost: herald\\r\\n\\r\\n")
print(sock.recv(64)[:12].decode(), flush=True)
time.sleep(600)
"""


@dataclass
class Namespace:
    name: str
    inner_link: str
    herald_address: str

    def run(self, *command: str) -> None:
        subprocess.run(["ip", "netns", "exec", self.name, *command], check=True)


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def namespace() -> Iterator[Namespace]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("network namespaces need root and iproute2; under CI=true that fails")
        pytest.skip("network namespaces need root and iproute2")
    tag = f"{os.getpid() % 10_000}{int(time.monotonic() * 1000) % 1000}"
    name, outer, inner = f"hn{tag}", f"ho{tag}", f"hi{tag}"
    subnet = f"10.{200 + os.getpid() % 50}.{int(time.monotonic()) % 250}"
    ip("netns", "add", name)
    try:
        ip("link", "add", outer, "type", "veth", "peer", "name", inner)
        ip("link", "set", inner, "netns", name)
        ip("addr", "add", f"{subnet}.1/30", "dev", outer)
        ip("link", "set", outer, "up")
        ip("netns", "exec", name, "ip", "addr", "add", f"{subnet}.2/30", "dev", inner)
        ip("netns", "exec", name, "ip", "link", "set", inner, "up")
        yield Namespace(name, inner, f"{subnet}.1")
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
        subprocess.run(["ip", "link", "del", outer], capture_output=True)


def open_streams(client: httpx.Client, app: Herald) -> float:
    return metric(client.get(f"{app.url}/metrics").text, "herald_subscribers")


def test_a_client_gone_without_a_fin_is_released_within_the_send_timeout(
    herald: HeraldFactory, namespace: Namespace
) -> None:
    app = herald(host="0.0.0.0", HERALD_HEARTBEAT_SECONDS=1, HERALD_SEND_TIMEOUT_SECONDS=3)
    command = ["ip", "netns", "exec", namespace.name, sys.executable, "-c", CLIENT]
    with subprocess.Popen(
        [*command, namespace.herald_address, str(app.port)], stdout=subprocess.PIPE, text=True
    ) as client_proc:
        try:
            assert client_proc.stdout is not None
            status = client_proc.stdout.readline()
            assert status.startswith("HTTP/1.1 200"), status
            with httpx.Client(timeout=10) as client:
                assert open_streams(client, app) == 1
                namespace.run("ip", "link", "set", namespace.inner_link, "down")
                cut_at = time.monotonic()
                while open_streams(client, app) != 0:
                    assert time.monotonic() - cut_at < 20, "the stream was never released"
                    time.sleep(0.25)
            assert client_proc.poll() is None, "the client must still be there, silently"
        finally:
            client_proc.kill()
