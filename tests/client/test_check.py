"""`herald check` as an operator or `helm test` runs it, against real Herald processes."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time

import jwt
import pytest
import redis

from service.storage.keys import stream_key
from tests.conftest import ROOT, Herald, HeraldFactory, RedisServer
from tests.ports import refused_port

pytestmark = pytest.mark.integration

SECRET = "check-secret-that-is-long-enough-for-hs256"
PASSED = re.compile(
    r"ok: published (check\.[0-9a-f]{8}) (\d+-\d+) and received it over SSE in \d+\.\d ms\n"
)


def herald_check(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run `herald check ARGS…` to completion; `env` adds `HERALD_*` variables."""
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")} | env
    return subprocess.run(
        [sys.executable, "-m", "service", "check", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=child_env,
        timeout=60,
    )


def grant(**patterns: list[str]) -> str:
    """A token whose `herald` claim is `patterns` (publish=[…], subscribe=[…])."""
    return jwt.encode({"herald": patterns, "exp": time.time() + 60}, SECRET, algorithm="HS256")


def test_check_publishes_and_receives_one_event(
    default_herald: Herald, flushed_redis: RedisServer
) -> None:
    done = herald_check("--url", default_herald.url)
    assert (done.returncode, done.stderr) == (0, "")
    passed = PASSED.fullmatch(done.stdout)
    assert passed, done.stdout
    topic, event_id = passed.groups()
    with redis.Redis.from_url(flushed_redis.url, decode_responses=True) as store:
        ((stored_id, fields),) = store.xrange(stream_key(topic))
    assert (stored_id, fields["event"]) == (event_id, "check")


def test_check_against_a_closed_port_exits_1_with_one_line() -> None:
    with refused_port() as port:
        url = f"http://127.0.0.1:{port}"
        done = herald_check("--url", url)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == f"herald check: could not connect while opening the stream at {url}\n"


def test_check_that_gets_no_answer_fails_when_its_timeout_runs_out() -> None:
    with socket.socket() as silent:
        # The kernel accepts the connection; nothing ever answers on it.
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        done = herald_check("--url", f"http://127.0.0.1:{port}", "--timeout", "1")
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == "herald check: no answer within 1 s while opening the stream\n"


def test_check_with_auth_passes_with_a_token_for_check_topics(herald: HeraldFactory) -> None:
    app = herald(HERALD_JWT_KEY=SECRET)
    token = grant(publish=["check.*"], subscribe=["check.*"])
    done = herald_check(HERALD_URL=app.url, HERALD_TOKEN=token)
    assert (done.returncode, done.stderr) == (0, "")
    assert PASSED.fullmatch(done.stdout), done.stdout


def test_check_with_auth_fails_clearly_without_a_token_for_check_topics(
    herald: HeraldFactory,
) -> None:
    app = herald(HERALD_JWT_KEY=SECRET)
    anonymous = herald_check("--url", app.url)
    reader = herald_check("--url", app.url, "--token", grant(subscribe=["check.*"]))
    assert (anonymous.returncode, anonymous.stdout) == (1, "")
    assert re.fullmatch(
        r"herald check: subscribing to check\.\w+: "
        r"Herald rejected the request \(401\): a token is required\n",
        anonymous.stderr,
    )
    assert (reader.returncode, reader.stdout) == (1, "")
    assert re.fullmatch(
        r"herald check: publishing to (check\.\w+): Herald rejected the request \(403\): "
        r"the token may not publish to: \1\n",
        reader.stderr,
    )
