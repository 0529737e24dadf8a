"""The README is a landing page whose commands work as written.

What it no longer holds (every setting, every worker) is checked where it now lives, in
tests/test_docs.py.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, HeraldLauncher
from tests.ports import IN_USE, AddressInUse, free_port, start_on_free_port

README = (ROOT / "README.md").read_text(encoding="utf-8")
TOUR = README.split("## A five-minute tour", 1)[1].split("\n## ", 1)[0]
BLOCKS = re.findall(r"```sh\n(.*?)```", TOUR, re.S)
STREAM_ID = re.compile(r"\b\d{10,20}-\d+\b")
# Blocks whose last command runs until Ctrl-C.
FOLLOWS = re.compile(r"curl -sN|herald tail")
OUTPUT_WAIT_SECONDS = 30.0


def test_the_readme_opens_with_the_two_set_up_commands() -> None:
    first_block = re.search(r"```sh\n(.*?)```", README, re.S)
    assert first_block is not None
    assert first_block.group(1).splitlines() == [
        "python3 -m venv .venv && .venv/bin/pip install -q -e . && .venv/bin/herald serve --demo",
        "scripts/test",
    ]


def test_the_readme_is_a_landing_page() -> None:
    assert len(README.splitlines()) <= 250
    assert ". .venv/bin/activate" in README  # herald is in .venv/bin, not on PATH
    for heading in ("## A five-minute tour", "## Tests", "## Where to go next"):
        assert f"\n{heading}\n" in README


def test_the_readme_names_every_package_scripts_install_installs() -> None:
    install = (ROOT / "scripts" / "install").read_text(encoding="utf-8")
    packages = re.findall(r"missing\+=\(([a-z0-9.-]+)\)", install)
    assert "redis-server" in packages
    tests_section = README.split("\n## Tests\n", 1)[1].split("\n## ", 1)[0]
    for package in packages:
        assert f"`{package}`" in tests_section, package


# --------------------------------------------------------------------------- the tour


def expected_output(block: str) -> list[str]:
    """The `# …` lines of a block that show what its commands print, blank ones left out."""
    lines = [line[2:] for line in block.splitlines() if line.startswith("# ")]
    return [normalised(line) for line in lines if line.strip()]


def normalised(text: str) -> str:
    return STREAM_ID.sub("<id>", text)


class Shell:
    """One README block run by bash, as a user pastes it into a terminal."""

    def __init__(self, block: str, port: int, **env: str) -> None:
        script = BLOCKS[0] + block.replace("localhost:8000", f"127.0.0.1:{port}")
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
        child_env |= {"HERALD_URL": f"http://127.0.0.1:{port}", "PYTHONUNBUFFERED": "1", **env}
        self.proc = subprocess.Popen(
            ["bash", "-c", script],
            cwd=ROOT,
            env=child_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, for Ctrl-C and clean-up
        )
        self.output = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        while chunk := os.read(self.proc.stdout.fileno(), 65536):
            self.output += chunk.decode(errors="replace")

    def shows(self, expected: list[str]) -> bool:
        """Whether the output holds the expected lines, in order (ids aside)."""
        output, at = normalised(self.output), 0
        for line in map(normalised, expected):
            at = output.find(line, at)
            if at < 0:
                return False
            at += len(line)
        return True

    def wait_for(self, expected: list[str]) -> None:
        deadline = time.monotonic() + OUTPUT_WAIT_SECONDS
        while not self.shows(expected) and time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._reader.join(5)
                break
            time.sleep(0.05)
        assert self.shows(expected), f"expected, in order: {expected}\ngot:\n{self.output}"

    def ctrl_c(self) -> None:
        """Ctrl-C in a terminal: SIGINT to the foreground command, not to a job started with
        `&`. A terminal's job control puts such a job in a process group of its own; this
        shell has none, so its background `herald serve` is left out by hand."""
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
                command = (stat.parent / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if int(fields[2]) == self.proc.pid and b"serve" not in command:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(stat.parent.name), signal.SIGINT)

    def finish(self) -> int:
        returncode = self.proc.wait(timeout=30)
        self._reader.join(5)
        return returncode

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self._reader.join(5)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


@contextlib.contextmanager
def shell(block: str, port: int, **env: str) -> Iterator[Shell]:
    run = Shell(block, port, **env)
    try:
        yield run
    finally:
        run.kill()


def run_block(block: str, port: int, while_open: Callable[[Shell], None] | None = None) -> str:
    """Run `block`; a block that follows a stream gets Ctrl-C once it has shown its output."""
    with shell(block, port) as run:
        run.wait_for(expected_output(block))
        if FOLLOWS.search(block):
            if while_open is not None:
                while_open(run)
            run.ctrl_c()
        run.finish()
        return run.output


@pytest.fixture
def demo_herald(embedded: HeraldLauncher) -> int:
    """The README's first command: `herald serve --demo`, embedded (here on a free port)."""
    return embedded(HERALD_DEMO="true").port


def tour_block(*words: str) -> str:
    found = [block for block in BLOCKS if all(word in block for word in words)]
    assert len(found) == 1, f"one tour block with {words}, found {len(found)}"
    return found[0]


@pytest.mark.integration
def test_the_tour_publishes_subscribes_and_feeds_the_demo_page(demo_herald: int) -> None:
    assert BLOCKS[0].strip() == ". .venv/bin/activate"
    if not (ROOT / ".venv" / "bin" / "activate").exists():
        pytest.skip("the README's venv, .venv, is not where the tour expects it")
    port = demo_herald
    run_block(tour_block("curl -s localhost:8000/publish", '"event": "token"'), port)

    def publish_while_subscribed(run: Shell) -> None:
        answer = httpx.post(
            f"http://127.0.0.1:{port}/publish",
            json={"topic": "chat.42", "event": "token", "data": "live"},
        )
        answer.raise_for_status()
        run.wait_for([f"id: {answer.json()['id']}", "event: token", "data: live"])

    # The subscription replays what was published, then shows new events as they come.
    run_block(tour_block("curl -sN"), port, publish_while_subscribed)
    run_block(tour_block("herald tail chat.42 --from-start", "Hello again"), port)
    output = run_block(tour_block('"answer": "a1"'), port)
    assert output.count('{"topic": "chat.42", "id": "') == 3

    # What the demo page's HeraldSource would have received on chat.42, in order.
    with httpx.stream(
        "GET", f"http://127.0.0.1:{port}/events?topic=chat.42&lastEventId=0-0"
    ) as stream:
        events = []
        for line in stream.iter_lines():
            if line.startswith("event: "):
                events.append(line[7:])
            if events[-3:] == ["token", "token", "done"]:
                break
    assert events[-3:] == ["token", "token", "done"]


@pytest.mark.integration
def test_the_tour_turns_auth_on_with_herald_token() -> None:
    if not (ROOT / ".venv" / "bin" / "activate").exists():
        pytest.skip("the README's venv, .venv, is not where the tour expects it")
    block = tour_block("herald token")

    def run(port: int) -> str:
        with shell(block, port, HERALD_PORT=str(port)) as run:
            try:
                run.wait_for(expected_output(block))
            except AssertionError:
                if IN_USE.search(run.output):
                    raise AddressInUse(run.output) from None
                raise
            run.ctrl_c()  # herald tail's Ctrl-C; then the block's `kill %1` stops Herald
            assert run.finish() == 0, run.output
            assert stops_listening(port), run.output
            return run.output

    output = start_on_free_port(run, pick=free_port)
    # Without a token: 401; with the one herald token made: published and followed.
    assert '{"detail":"a token is required"}' in output
    assert "Traceback" not in output


def stops_listening(port: int) -> bool:
    deadline = time.monotonic() + OUTPUT_WAIT_SECONDS
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
        except httpx.ConnectError:
            return True
        except httpx.HTTPError:
            pass  # shutting down
        time.sleep(0.1)
    return False
