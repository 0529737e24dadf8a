"""`herald token`: JWTs that `service.auth` accepts, signed with the deployment's key.

>>> secret = "a-secret-of-at-least-thirty-two-bytes"
>>> token = make_token(secret, "HS256", publish=["chat.*"], subscribe=[], ttl=60, now=0)
>>> jwt.decode(token, secret, algorithms=["HS256"], options={"verify_exp": False})
{'herald': {'publish': ['chat.*'], 'subscribe': []}, 'iat': 0, 'exp': 60}
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import jwt
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from jwt.algorithms import get_default_algorithms

_PATTERN = re.compile(r"[A-Za-z0-9._:*-]{1,128}")
"""A topic name in which `*` stands for any run of characters (`service.auth`)."""

_DURATION = re.compile(r"(\d+)([smhd]?)")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def make_token(
    key: str,
    algorithm: str,
    *,
    publish: Sequence[str],
    subscribe: Sequence[str],
    ttl: int | None,
    now: int,
    subject: str | None = None,
) -> str:
    """A token granting `publish` and `subscribe` patterns, valid `ttl` seconds from `now`
    (None: it never expires).

    `key` is the HS256 secret, or for RS256/ES256 the private key in PEM: Herald holds
    the public one. Raises `ValueError` saying what is wrong with a pattern or the key.
    """
    for pattern in [*publish, *subscribe]:
        if not _PATTERN.fullmatch(pattern):
            raise ValueError(
                f"{pattern!r} is not a topic pattern: letters, digits and . _ : - with * "
                "for any run of characters, at most 128"
            )
    if algorithm != "HS256":
        signing = get_default_algorithms()[algorithm].prepare_key(key)
        if not isinstance(signing, RSAPrivateKey | EllipticCurvePrivateKey):
            raise ValueError(
                f"the {algorithm} key is a public key, which only verifies: signing needs "
                "the private key (-----BEGIN PRIVATE KEY----- …)"
            )
    claims: dict[str, object] = {
        "herald": {"publish": list(publish), "subscribe": list(subscribe)},
        "iat": now,
    }
    if ttl is not None:
        claims["exp"] = now + ttl
    if subject is not None:
        claims["sub"] = subject
    return jwt.encode(claims, key, algorithm=algorithm)


def parse_duration(text: str) -> int:
    """Seconds in `3600`, `90s`, `15m`, `12h` or `30d`; `ValueError` otherwise."""
    matched = _DURATION.fullmatch(text.strip())
    if matched is None:
        raise ValueError(f"{text!r} is not a duration: seconds, or a number with s, m, h or d")
    return int(matched.group(1)) * _UNIT_SECONDS[matched.group(2)]
