"""`HERALD_REDIS_URL`: which kind of Redis deployment, and how to reach it.

    redis://[user:password@]host:port[/db]               one server (unix:// too)
    redis+sentinel://[user:password@]host:port[,host:port…]/service[/db]
                                                        Sentinel: the service's primary
    redis+cluster://[user:password@]host:port[,host:port…]
                                                        Cluster: any reachable nodes
    rediss://, rediss+sentinel://, rediss+cluster://     the same over TLS

The user and password are Redis's ACL credentials, used on every connection; for
Sentinel they are also sent to the sentinels unless `?sentinel_password=` (and
`sentinel_username=`) says otherwise. `?ssl_ca_certs=/path` names the CA bundle for TLS.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qs, unquote

Mode = Literal["standalone", "sentinel", "cluster"]

_SCHEMES: dict[str, tuple[Mode, bool]] = {
    "redis": ("standalone", False),
    "rediss": ("standalone", True),
    "unix": ("standalone", False),
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
}
_DEFAULT_PORTS = {"standalone": 6379, "sentinel": 26379, "cluster": 6379}


class InvalidRedisUrl(ValueError):
    """A HERALD_REDIS_URL that names no Redis deployment Herald can use."""


@dataclass(frozen=True)
class RedisTarget:
    url: str
    """The URL as given (for a standalone server, what redis-py's from_url takes)."""
    mode: Mode
    tls: bool
    hosts: tuple[tuple[str, int], ...]
    username: str | None
    password: str | None
    db: int
    service: str | None
    """Sentinel: the name of the monitored primary."""
    sentinel_username: str | None
    sentinel_password: str | None
    ca_certs: str | None

    @classmethod
    def parse(cls, url: str) -> RedisTarget:
        scheme, _, rest = url.partition("://")
        if scheme not in _SCHEMES or not rest:
            raise InvalidRedisUrl(
                f"HERALD_REDIS_URL must start with one of {', '.join(s + '://' for s in _SCHEMES)}"
            )
        mode, tls = _SCHEMES[scheme]
        if scheme == "unix":
            return cls(url, mode, tls, (), None, None, 0, None, None, None, None)
        # Reserved characters in a password must be percent-encoded, so these splits hold.
        rest, _, query_text = rest.partition("?")
        head, _, path = rest.partition("/")
        credentials, at, netloc = head.rpartition("@")
        query = parse_qs(query_text)
        hosts = tuple(_host(item, _DEFAULT_PORTS[mode]) for item in netloc.split(",") if item)
        if not hosts:
            raise InvalidRedisUrl("HERALD_REDIS_URL names no host")
        if mode == "standalone" and len(hosts) > 1:
            raise InvalidRedisUrl(
                "several hosts need redis+sentinel:// or redis+cluster:// in HERALD_REDIS_URL"
            )
        if mode != "sentinel" and {"sentinel_username", "sentinel_password"} & query.keys():
            raise InvalidRedisUrl(
                "?sentinel_username= and ?sentinel_password= need redis+sentinel://"
            )
        username, password = _credentials(credentials) if at else (None, None)
        segments = [unquote(s) for s in path.split("/") if s]
        service = None
        if mode == "sentinel":
            if not segments:
                raise InvalidRedisUrl(
                    "redis+sentinel:// needs the service name: redis+sentinel://host:26379/mymaster"
                )
            service = segments.pop(0)
        db = _db(segments, mode)
        return cls(
            url=url,
            mode=mode,
            tls=tls,
            hosts=hosts,
            username=username,
            password=password,
            db=db,
            service=service,
            sentinel_username=_one(query, "sentinel_username", username),
            sentinel_password=_one(query, "sentinel_password", password),
            ca_certs=_one(query, "ssl_ca_certs", None),
        )


def _host(item: str, default_port: int) -> tuple[str, int]:
    host, colon, port = item.rpartition(":") if not item.endswith("]") else (item, "", "")
    if not colon:
        host, port = item, str(default_port)
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidRedisUrl(f"{item!r} is not host:port")
    return host, int(port)


def _credentials(text: str) -> tuple[str | None, str | None]:
    user, colon, password = text.partition(":")
    if not colon:
        return None, unquote(user) or None  # redis://password@host, as redis-cli reads it
    return unquote(user) or None, unquote(password) or None


def _db(segments: list[str], mode: Mode) -> int:
    if not segments:
        return 0
    if len(segments) > 1 or not segments[0].isdigit():
        raise InvalidRedisUrl(f"{'/'.join(segments)!r} is not a database number")
    if mode == "cluster" and segments[0] != "0":
        raise InvalidRedisUrl("Redis Cluster has database 0 only")
    return int(segments[0])


def _one(query: dict[str, list[str]], name: str, default: str | None) -> str | None:
    values = query.get(name)
    return values[-1] if values else default
