"""What `herald serve --help` and `herald worker --help` show, and that every setting stays
settable as a flag."""

from __future__ import annotations

import re

from service.settings import Settings
from tests.conftest import run_herald
from workers import NAMES

WORKER_PREFIXES = tuple(f"--{name}-" for name in NAMES)


def flags(help_text: str) -> set[str]:
    return set(re.findall(r"^  (--[a-z-]+)", help_text, re.M))


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def test_serve_help_lists_the_server_settings_and_no_worker_s() -> None:
    done = run_herald("serve", "--help")
    assert (done.returncode, done.stderr) == (0, "")
    shown = flags(done.stdout)
    server = {
        flag(n)
        for n in Settings.model_fields
        if not flag(n).startswith(WORKER_PREFIXES) and n not in ("url", "token")
    }
    assert shown == server
    assert "--heartbeat-seconds" in shown and "--redis-url" in shown
    assert "`herald worker --help` lists them" in " ".join(done.stdout.split())


def test_worker_help_lists_each_worker_s_settings_in_a_group_of_its_own() -> None:
    done = run_herald("worker", "--help")
    assert (done.returncode, done.stderr) == (0, "")
    for name in NAMES:
        section = done.stdout.split(f"herald worker {name}:\n", 1)[1].split("\n\n", 1)[0]
        own = {flag(n) for n in Settings.model_fields if n.startswith(f"{name}_")}
        assert flags(section) == own, name
    assert {"--redis-url", "--url", "--token"} <= flags(done.stdout)
    assert "--heartbeat-seconds" not in flags(done.stdout)


def test_a_flag_left_out_of_the_help_is_still_taken_and_checked() -> None:
    # A worker's setting given to `herald serve` (for --demo) reaches the settings object:
    # an invalid value is refused before anything starts.
    serve = run_herald("serve", "--demo", "--stocks-rate", "-1")
    assert (serve.returncode, serve.stdout) == (2, "")
    assert serve.stderr == (
        "herald: invalid settings:\n  stocks_rate: Input should be greater than 0\n"
    )
    worker = run_herald("worker", "stocks", "--heartbeat-seconds", "0")
    assert worker.returncode == 2
    assert "heartbeat_seconds: Input should be greater than 0" in worker.stderr
