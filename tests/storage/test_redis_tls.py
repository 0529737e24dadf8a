"""TLS and ACL credentials end to end: `rediss://` and `rediss+cluster://` against real
redis-server processes that accept only TLS and only an ACL user."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests import ports
from tests.conftest import HeraldLauncher, RedisServer
from tests.sse import SSEStream

pytestmark = pytest.mark.integration

USER, PASSWORD = "herald", "s3cr@t pass"
PASSWORD_IN_URL = "s3cr%40t%20pass"


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, and a certificate for 127.0.0.1 signed by it."""
    if shutil.which("openssl") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("openssl is needed")
        pytest.skip("openssl is needed")
    directory = tmp_path_factory.mktemp("tls")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
            "/CN=Herald test CA", "-keyout", "ca.key", "-out", "ca.pem")  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
            "-keyout", "server.key", "-out", "server.csr")  # fmt: skip
    (directory / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", "san.cnf",
            "-out", "server.pem")  # fmt: skip
    return directory


@dataclass(kw_only=True)
class TlsRedis(RedisServer):
    """A redis-server that accepts only TLS (its certificate from `certificates`) and only
    the ACL user USER; `options` are more redis-server flags."""

    certificates: Path
    options: tuple[str, ...] = ()

    def command(self) -> list[str]:
        return [
            "redis-server", "--port", "0", "--tls-port", str(self.port), "--bind", "127.0.0.1",
            "--tls-cert-file", str(self.certificates / "server.pem"),
            "--tls-key-file", str(self.certificates / "server.key"),
            "--tls-ca-cert-file", str(self.certificates / "ca.pem"),
            "--tls-auth-clients", "no",
            "--user", "default", "off",
            "--user", USER, "on", f">{PASSWORD}", "~*", "&*", "+@all",
            "--save", "", "--appendonly", "no", "--dir", str(self.directory),
            *self.options,
        ]  # fmt: skip

    def pick_port(self) -> int:
        # As a cluster node, its bus port (10,000 higher) must be free too.
        return ports.cluster_port()

    def ping(self) -> bool:
        return redis_cli(self.certificates, "-p", str(self.port), "PING").stdout.strip() == "PONG"


def redis_cli(certificates: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["redis-cli", "--tls", "--cacert", str(certificates / "ca.pem"),
         "--user", USER, "--pass", PASSWORD, "--no-auth-warning", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip


@pytest.fixture
def tls_redis(certificates: Path, tmp_path: Path) -> Iterator[Callable[..., TlsRedis]]:
    """Factory: `tls_redis(*options)` starts a TlsRedis; every one is killed at the end."""
    started: list[TlsRedis] = []

    def start(*options: str) -> TlsRedis:
        directory = tmp_path / f"redis-{len(started)}"
        directory.mkdir()
        server = TlsRedis(
            ports.cluster_port(), directory, certificates=certificates, options=options
        )
        started.append(server)
        server.start()
        return server

    yield start
    for server in started:
        server.kill()


async def round_trip(url: str, topic: str) -> None:
    """Subscribe, publish, and read the event back."""
    async with (
        httpx.AsyncClient(timeout=20) as client,
        SSEStream(client, f"{url}/events", params={"topic": topic}) as stream,
    ):
        answer = await client.post(f"{url}/publish", json={"topic": topic, "data": "over TLS"})
        assert answer.status_code == 200, answer.text
        event = await stream.next_event()
        assert (event.id, event.data) == (answer.json()["id"], "over TLS")


async def test_one_server_over_tls_with_an_acl_user(
    certificates: Path, tmp_path: Path, tls_redis: Callable[..., TlsRedis]
) -> None:
    port = tls_redis().port
    ca = certificates / "ca.pem"
    url = f"rediss://{USER}:{PASSWORD_IN_URL}@127.0.0.1:{port}/0?ssl_ca_certs={ca}"
    launcher = HeraldLauncher(url, tmp_path)
    try:
        app = launcher()
        await round_trip(app.url, "tls.one")
    finally:
        launcher.stop_all(show_logs=True)


def start_tls_cluster(certificates: Path, tls_redis: Callable[..., TlsRedis]) -> list[int]:
    """Three TLS nodes made into a cluster; their ports."""
    nodes = [tls_redis("--tls-cluster", "yes", "--cluster-enabled", "yes") for _ in range(3)]
    addresses = [f"127.0.0.1:{n.port}" for n in nodes]
    made = redis_cli(certificates, "--cluster", "create", *addresses, "--cluster-yes")
    assert made.returncode == 0, made.stdout + made.stderr
    deadline = time.monotonic() + 20
    while True:
        info = redis_cli(certificates, "-p", str(nodes[0].port), "CLUSTER", "INFO").stdout
        if "cluster_state:ok" in info:
            return [n.port for n in nodes]
        assert time.monotonic() < deadline, "the TLS cluster did not become ok"
        time.sleep(0.1)


async def test_a_cluster_over_tls_with_an_acl_user(
    certificates: Path, tmp_path: Path, tls_redis: Callable[..., TlsRedis]
) -> None:
    node_ports = start_tls_cluster(certificates, tls_redis)
    ca = certificates / "ca.pem"
    hosts = ",".join(f"127.0.0.1:{p}" for p in node_ports)
    url = f"rediss+cluster://{USER}:{PASSWORD_IN_URL}@{hosts}?ssl_ca_certs={ca}"
    launcher = HeraldLauncher(url, tmp_path)
    try:
        app = launcher()
        for topic in ("tls.a", "tls.b", "tls.c", "tls.d"):
            await round_trip(app.url, topic)
    finally:
        launcher.stop_all(show_logs=True)
