"""`herald token`: the tokens it makes, used against a real `herald serve` with auth on."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.conftest import ROOT, HeraldFactory

pytestmark = pytest.mark.integration

SECRET = "token-secret-that-is-long-enough-for-hs256"
WAIT = 15.0


def herald_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`herald ARGS…` run to its end; `env` holds its only `HERALD_*` variables."""
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")} | env
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=child_env,
        timeout=60,
    )


def make(*args: str, **env: str) -> str:
    """A token from `herald token ARGS…`, the key in the environment as users keep it."""
    done = herald_cli("token", *args, **({"HERALD_JWT_KEY": SECRET} | env))
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    assert done.stdout.count("\n") == 1, "the token alone, on one line"
    return done.stdout.strip()


def status_of_stream(url: str, topic: str, token: str | None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with (
        httpx.Client(timeout=WAIT) as http,
        http.stream("GET", f"{url}/events", params={"topic": topic}, headers=headers) as answer,
    ):
        return answer.status_code


def test_a_token_allows_what_it_grants_and_nothing_else(herald: HeraldFactory) -> None:
    app = herald(HERALD_JWT_KEY=SECRET)
    token = make(
        "--publish", "chat.*", "--publish", "logs.api", "--subscribe", "chat.*", "--ttl", "3600"
    )
    bearer = {"Authorization": f"Bearer {token}"}

    def publish(topic: str) -> httpx.Response:
        return httpx.post(f"{app.url}/publish", json={"topic": topic, "data": "hi"}, headers=bearer)

    answers = {t: publish(t).status_code for t in ("chat.42", "logs.api", "logs.web", "stocks.A")}
    assert answers == {"chat.42": 200, "logs.api": 200, "logs.web": 403, "stocks.A": 403}
    assert publish("stocks.A").json() == {"detail": "the token may not publish to: stocks.A"}
    assert status_of_stream(app.url, "chat.42", token) == 200
    assert status_of_stream(app.url, "logs.api", token) == 403
    assert status_of_stream(app.url, "chat.42", None) == 401


def test_herald_check_publish_and_tail_work_under_auth_with_its_tokens(
    herald: HeraldFactory,
) -> None:
    app = herald(HERALD_JWT_KEY=SECRET)
    checker = make("--publish", "check.*", "--subscribe", "check.*")
    checked = herald_cli("check", HERALD_URL=app.url, HERALD_TOKEN=checker)
    assert (checked.returncode, checked.stderr) == (0, "")
    assert checked.stdout.startswith("ok: published check.")

    reader = make("--subscribe", "chat.*")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    tail = subprocess.Popen(
        [sys.executable, "-m", "service", "tail", "chat.7", "--url", app.url, "--token", reader],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
    )
    lines: queue.Queue[str] = queue.Queue()
    assert tail.stdout is not None
    stdout = tail.stdout
    threading.Thread(target=lambda: [lines.put(line) for line in stdout], daemon=True).start()
    try:
        writer = make("--publish", "chat.*")
        # Until the tail's stream is open, a publish would go unseen: publish until one shows.
        published: list[str] = []
        line = ""
        while not line:
            done = herald_cli("publish", "chat.7", "hello", HERALD_URL=app.url, HERALD_TOKEN=writer)
            assert (done.returncode, done.stderr) == (0, "")
            published.append(json.loads(done.stdout)["id"])
            assert len(published) < 100, "herald tail printed nothing"
            try:
                line = lines.get(timeout=0.2)
            except queue.Empty:
                continue
        event_id, event, data = line.rstrip("\n").split(" ", 2)
        assert event_id in published
        assert (event, data) == ("message", "hello")
    finally:
        tail.terminate()
        tail.wait(WAIT)
        stdout.close()
        assert tail.stderr is not None
        tail.stderr.close()
    without = herald_cli("publish", "chat.7", "hello", HERALD_URL=app.url, HERALD_TOKEN=reader)
    assert (without.returncode, without.stdout) == (1, "")
    assert without.stderr == (
        "herald publish: Herald rejected the request (403): the token may not publish to: chat.7\n"
    )


def test_an_es256_token_is_signed_with_the_private_key_file(
    herald: HeraldFactory, tmp_path: Path
) -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    private_pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public_pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    key_file = tmp_path / "herald.key"
    key_file.write_text(private_pem)
    app = herald(HERALD_JWT_ALGORITHM="ES256", HERALD_JWT_KEY=public_pem)
    env = {"HERALD_JWT_ALGORITHM": "ES256", "HERALD_JWT_KEY": public_pem}
    token = make("--publish", "chat.*", "--key-file", str(key_file), **env)
    answer = httpx.post(
        f"{app.url}/publish",
        json={"topic": "chat.1", "data": "signed"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert answer.status_code == 200
    with_public = herald_cli("token", "--publish", "chat.*", **env)
    assert (with_public.returncode, with_public.stdout) == (2, "")
    assert with_public.stderr == (
        "herald token: the ES256 key is a public key, which only verifies: signing needs "
        "the private key (-----BEGIN PRIVATE KEY----- …)\n"
    )


def test_expiry_and_subject_are_what_was_asked() -> None:
    hour = jwt.decode(
        make("--subscribe", "chat.*", "--ttl", "15m", "--subject", "billing"),
        SECRET,
        algorithms=["HS256"],
    )
    assert (hour["exp"] - hour["iat"], hour["sub"]) == (900, "billing")
    assert hour["herald"] == {"publish": [], "subscribe": ["chat.*"]}
    default = jwt.decode(make("--subscribe", "chat.*"), SECRET, algorithms=["HS256"])
    assert default["exp"] - default["iat"] == 3600
    assert "sub" not in default
    forever = jwt.decode(make("--subscribe", "chat.*", "--ttl", "never"), SECRET, ["HS256"])
    assert "exp" not in forever


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (
            ["--publish", "chat.*"],
            {},
            "herald token: no key: set HERALD_JWT_KEY (the HS256 secret Herald has) or give "
            "--key-file PATH (for RS256/ES256, the private key)\n",
        ),
        (
            [],
            {"HERALD_JWT_KEY": SECRET},
            "herald token: give at least one --publish or --subscribe pattern\n",
        ),
        (
            ["--publish", "chat room"],
            {"HERALD_JWT_KEY": SECRET},
            "herald token: 'chat room' is not a topic pattern: letters, digits and . _ : - "
            "with * for any run of characters, at most 128\n",
        ),
        (
            ["--publish", "chat.*", "--ttl", "soon"],
            {"HERALD_JWT_KEY": SECRET},
            "herald token: --ttl: 'soon' is not a duration: seconds, or a number with s, m, "
            "h or d\n",
        ),
        (
            ["--publish", "chat.*", "--ttl", "0"],
            {"HERALD_JWT_KEY": SECRET},
            "herald token: --ttl 0 makes a token that has already expired\n",
        ),
        (
            ["--publish", "chat.*"],
            {"HERALD_JWT_KEY": "too-short"},
            "herald token: invalid settings:\n  settings: Value error, HERALD_JWT_KEY is 9 "
            "bytes; an HS256 secret needs at least 32 (RFC 7518 section 3.2). Make one with "
            "`openssl rand -base64 32`\n",
        ),
    ],
    ids=["no key", "no pattern", "bad pattern", "bad ttl", "zero ttl", "weak key"],
)
def test_a_mistake_exits_2_with_what_to_do_and_no_traceback(
    args: list[str], env: dict[str, str], message: str
) -> None:
    done = herald_cli("token", *args, **env)
    assert (done.returncode, done.stdout, done.stderr) == (2, "", message)
