"""TLS and ACL credentials end to end: `rediss://` and `rediss+cluster://` against real
redis-server processes that accept only TLS and only an ACL user."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import HeraldLauncher
from tests.ports import cluster_port
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


def tls_server(
    certificates: Path, directory: Path, port: int, *extra: str
) -> subprocess.Popen[bytes]:
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / "redis.log").open("ab") as log:
        return subprocess.Popen(
            [
                "redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
                "--tls-cert-file", str(certificates / "server.pem"),
                "--tls-key-file", str(certificates / "server.key"),
                "--tls-ca-cert-file", str(certificates / "ca.pem"),
                "--tls-auth-clients", "no",
                "--user", "default", "off",
                "--user", USER, "on", f">{PASSWORD}", "~*", "&*", "+@all",
                "--save", "", "--appendonly", "no", "--dir", str(directory),
                *extra,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip


def redis_cli(certificates: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["redis-cli", "--tls", "--cacert", str(certificates / "ca.pem"),
         "--user", USER, "--pass", PASSWORD, "--no-auth-warning", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip


def wait_tls(certificates: Path, port: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if redis_cli(certificates, "-p", str(port), "PING").stdout.strip() == "PONG":
            return
        time.sleep(0.1)
    pytest.fail(f"TLS redis-server :{port} did not answer")


@pytest.fixture
def stopped_at_end() -> Iterator[list[subprocess.Popen[bytes]]]:
    processes: list[subprocess.Popen[bytes]] = []
    yield processes
    for process in processes:
        process.kill()
        process.wait(5)


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
    certificates: Path, tmp_path: Path, stopped_at_end: list[subprocess.Popen[bytes]]
) -> None:
    port = cluster_port()
    stopped_at_end.append(tls_server(certificates, tmp_path / "redis", port))
    wait_tls(certificates, port)
    ca = certificates / "ca.pem"
    url = f"rediss://{USER}:{PASSWORD_IN_URL}@127.0.0.1:{port}/0?ssl_ca_certs={ca}"
    launcher = HeraldLauncher(url, tmp_path)
    try:
        app = launcher()
        await round_trip(app.url, "tls.one")
    finally:
        launcher.stop_all(show_logs=True)


def start_tls_cluster(
    certificates: Path, directory: Path, ports: list[int], started: list[subprocess.Popen[bytes]]
) -> None:
    cluster_options = ["--tls-cluster", "yes", "--cluster-enabled", "yes"]
    for port in ports:
        node = directory / str(port)
        started.append(tls_server(certificates, node, port, *cluster_options))
    for port in ports:
        wait_tls(certificates, port)
    nodes = [f"127.0.0.1:{p}" for p in ports]
    made = redis_cli(certificates, "--cluster", "create", *nodes, "--cluster-yes")
    assert made.returncode == 0, made.stdout + made.stderr
    deadline = time.monotonic() + 20
    while True:
        info = redis_cli(certificates, "-p", str(ports[0]), "CLUSTER", "INFO").stdout
        if "cluster_state:ok" in info:
            return
        assert time.monotonic() < deadline, "the TLS cluster did not become ok"
        time.sleep(0.1)


async def test_a_cluster_over_tls_with_an_acl_user(
    certificates: Path, tmp_path: Path, stopped_at_end: list[subprocess.Popen[bytes]]
) -> None:
    ports: list[int] = []
    while len(ports) < 3:
        port = cluster_port()
        if port not in ports:
            ports.append(port)
    start_tls_cluster(certificates, tmp_path, ports, stopped_at_end)
    ca = certificates / "ca.pem"
    hosts = ",".join(f"127.0.0.1:{p}" for p in ports)
    url = f"rediss+cluster://{USER}:{PASSWORD_IN_URL}@{hosts}?ssl_ca_certs={ca}"
    launcher = HeraldLauncher(url, tmp_path)
    try:
        app = launcher()
        for topic in ("tls.a", "tls.b", "tls.c", "tls.d"):
            await round_trip(app.url, topic)
    finally:
        launcher.stop_all(show_logs=True)
