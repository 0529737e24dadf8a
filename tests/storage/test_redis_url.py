"""`HERALD_REDIS_URL`: every deployment kind it names, and the URLs it refuses."""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from service.settings import Settings
from service.storage.redis_url import InvalidRedisUrl, RedisTarget
from tests.conftest import run_herald


@pytest.mark.parametrize(
    ("url", "mode", "tls"),
    [
        ("redis://h", "standalone", False),
        ("rediss://h", "standalone", True),
        ("redis+sentinel://h/s", "sentinel", False),
        ("rediss+sentinel://h/s", "sentinel", True),
        ("redis+cluster://h", "cluster", False),
        ("rediss+cluster://h", "cluster", True),
    ],
)
def test_each_scheme_names_its_deployment(url: str, mode: str, tls: bool) -> None:
    target = RedisTarget.parse(url)
    assert (target.mode, target.tls, target.url) == (mode, tls, url)


@pytest.mark.parametrize(
    ("url", "port"),
    [("redis://h", 6379), ("redis+sentinel://h/s", 26379), ("redis+cluster://h", 6379)],
)
def test_a_host_without_port_gets_the_default_of_its_kind(url: str, port: int) -> None:
    assert RedisTarget.parse(url).hosts == (("h", port),)


def test_a_standalone_url_in_full() -> None:
    target = RedisTarget.parse("rediss://app:s3cret@redis.example:6380/2?ssl_ca_certs=/ca.pem")
    assert target.hosts == (("redis.example", 6380),)
    assert (target.username, target.password, target.db) == ("app", "s3cret", 2)
    assert target.ca_certs == "/ca.pem"
    assert target.service is None


def test_credentials_are_percent_decoded() -> None:
    target = RedisTarget.parse("redis://us%40er:p%40ss%3Aw%2Frd@h:1")
    assert (target.username, target.password) == ("us@er", "p@ss:w/rd")


@pytest.mark.parametrize(
    ("url", "username", "password"),
    [
        ("redis://:secret@h", None, "secret"),
        ("redis://secret@h", None, "secret"),  # as redis-cli reads it
        ("redis://app:@h", "app", None),
        ("redis://h", None, None),
    ],
)
def test_partial_credentials(url: str, username: str | None, password: str | None) -> None:
    target = RedisTarget.parse(url)
    assert (target.username, target.password) == (username, password)


def test_a_sentinel_url_lists_sentinels_and_names_the_service_and_database() -> None:
    target = RedisTarget.parse("redis+sentinel://u:p@s1:5000,s2,[::1]:5002/mymaster/3")
    assert target.hosts == (("s1", 5000), ("s2", 26379), ("::1", 5002))
    assert (target.service, target.db) == ("mymaster", 3)
    # Without options of their own, the sentinels get the same credentials.
    assert (target.sentinel_username, target.sentinel_password) == ("u", "p")


def test_sentinels_may_have_credentials_of_their_own() -> None:
    target = RedisTarget.parse(
        "rediss+sentinel://u:p@s1/svc?sentinel_username=watch&sentinel_password=se%26cret"
        "&ssl_ca_certs=/etc/ca.pem"
    )
    assert (target.username, target.password) == ("u", "p")
    assert (target.sentinel_username, target.sentinel_password) == ("watch", "se&cret")
    assert target.ca_certs == "/etc/ca.pem"


def test_a_cluster_url_lists_its_nodes() -> None:
    target = RedisTarget.parse("redis+cluster://a:7000,b:7001,c")
    assert target.hosts == (("a", 7000), ("b", 7001), ("c", 6379))
    assert target.db == 0


def test_a_unix_socket_goes_to_redis_py_whole() -> None:
    target = RedisTarget.parse("unix:///run/redis.sock?db=1")
    assert (target.mode, target.hosts) == ("standalone", ())


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://h", "must start with one of redis://, rediss://, unix://"),
        ("redis://", "must start with one of"),
        ("redis:///0", "names no host"),
        ("redis://a,b", "several hosts need redis+sentinel:// or redis+cluster://"),
        ("redis+sentinel://h", "needs the service name: redis+sentinel://host:26379/mymaster"),
        ("redis+sentinel://h/svc/x", "'x' is not a database number"),
        ("redis://h/0/1", "'0/1' is not a database number"),
        ("redis+cluster://h/1", "Redis Cluster has database 0 only"),
        ("redis://h:0", "'h:0' is not host:port"),
        ("redis://h:70000", "'h:70000' is not host:port"),
        ("redis://h:port", "'h:port' is not host:port"),
        ("redis://h?sentinel_password=x", "need redis+sentinel://"),
    ],
)
def test_refusals_say_what_is_wrong(url: str, message: str) -> None:
    with pytest.raises(InvalidRedisUrl, match=re.escape(message)):
        RedisTarget.parse(url)


def test_settings_refuse_a_url_that_names_no_deployment() -> None:
    with pytest.raises(ValidationError, match="HERALD_REDIS_URL must start with one of"):
        Settings(redis_url="http://x")


def test_serve_exits_2_on_a_url_that_names_no_deployment() -> None:
    done = run_herald("serve", "--redis-url", "http://x")
    assert done.returncode == 2
    assert "HERALD_REDIS_URL must start with one of redis://" in done.stderr
