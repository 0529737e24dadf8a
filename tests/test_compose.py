"""`compose.yaml`: Herald, Redis and the demo producers with `docker compose up`.

Where Docker is, the file is brought up and checked end to end. Everywhere, it is linted:
against the Compose Specification's JSON schema and best-practice rules (dclint, from
the npm registry, which ships the schema), and against what it names in this project:
settings, the build context, Herald's command line, the chart's Redis image.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from service.client.cli import _parser
from service.settings import Settings
from service.storage.redis_url import RedisTarget
from tests.conftest import ROOT, run_herald

COMPOSE = ROOT / "compose.yaml"
DCLINT = "dclint@3.1.0"


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


@pytest.fixture(scope="session")
def dclint() -> Path:
    """dclint's command, installed from the npm registry into .cache (once)."""
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        message = "node and npm are needed to lint compose.yaml"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    home = ROOT / ".cache" / "compose-lint"
    command = home / "node_modules" / ".bin" / "dclint"
    if not command.exists():
        home.mkdir(parents=True, exist_ok=True)
        (home / "package.json").write_text('{"private": true}')
        installed = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--prefix", str(home), DCLINT],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert installed.returncode == 0, installed.stderr[-2000:]
    return command


def lint(dclint: Path, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(dclint), "--max-warnings", "0", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_compose_file_follows_the_compose_specification(dclint: Path) -> None:
    done = lint(dclint, COMPOSE)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_linter_catches_a_file_the_specification_refuses(dclint: Path, tmp_path: Path) -> None:
    broken = compose()
    broken["services"]["herald"]["portz"] = broken["services"]["herald"].pop("ports")
    path = tmp_path / "compose.yaml"
    path.write_text(yaml.safe_dump(broken, sort_keys=False))
    done = lint(dclint, path)
    assert done.returncode != 0
    assert "must NOT have additional properties" in done.stdout


def test_the_compose_file_names_only_what_exists_here(monkeypatch: pytest.MonkeyPatch) -> None:
    services = compose()["services"]
    herald, redis = services["herald"], services["redis"]

    environment = herald["environment"]
    for name, value in environment.items():
        assert name.startswith("HERALD_"), name
        assert name.removeprefix("HERALD_").lower() in Settings.model_fields, name
        monkeypatch.setenv(name, value)
    settings = Settings()  # what Herald reads in the container
    assert settings.redis_url is not None
    (host, port), *_ = RedisTarget.parse(settings.redis_url).hosts
    assert (host, port) == ("redis", 6379), "Herald's Redis is the redis service"

    assert (ROOT / herald["build"] / "Dockerfile").is_file()
    args = _parser().parse_args(herald["command"])
    assert (args.command, args.demo) == ("serve", "true")
    assert set(herald["depends_on"]) <= services.keys()
    # The image listens on 0.0.0.0 at HERALD_PORT's default; the health check asks there.
    assert herald["ports"] == [f"127.0.0.1:{settings.port}:{settings.port}"]
    assert f"http://127.0.0.1:{settings.port}/readyz" in " ".join(herald["healthcheck"]["test"])
    assert "/tmp" in herald["tmpfs"], "--demo writes its log under /tmp on a read-only root"

    chart = yaml.safe_load((ROOT / "helm" / "herald" / "values.yaml").read_text())
    image = chart["redis"]["image"]
    assert redis["image"] == f"{image['repository']}:{image['tag']}", "the chart's trial Redis"


def test_docker_compose_up_serves_herald_and_the_demo() -> None:
    docker = shutil.which("docker")
    if (
        docker is None
        or subprocess.run([docker, "compose", "version"], capture_output=True).returncode
    ):
        pytest.skip("Docker with the compose plugin is not installed here")
    project = ["docker", "compose", "--file", str(COMPOSE), "--project-name", "herald-test"]
    up = subprocess.run([*project, "up", "--detach", "--build", "--wait"], timeout=900)
    try:
        assert up.returncode == 0
        checked = run_herald("check", "--url", "http://127.0.0.1:8000")
        assert checked.returncode == 0, checked.stderr
        assert httpx.get("http://127.0.0.1:8000/").status_code == 200, "the demo page"
        with httpx.stream(
            "GET",
            "http://127.0.0.1:8000/events",
            params={"topic": "stocks.AAPL"},
            timeout=30,
        ) as stream:
            ticks = (line for line in stream.iter_lines() if line == "event: tick")
            assert next(ticks) == "event: tick", "the demo producers publish"
    finally:
        subprocess.run([*project, "down", "--volumes"], timeout=300, stdout=sys.stderr)
