"""Topic lifetime: which streams an append must also give a fresh expiry (HERALD_TOPIC_TTL).

A topic that receives nothing for the TTL disappears with its history. Refreshing the
expiry at every append would double the commands of a publish, so each process
refreshes a stream's expiry at most once per `slack` and sets it to TTL + slack: the
stream then expires between TTL and TTL + slack after its last append, never earlier.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

_SLACK_SHARE = 0.01
_SLACK_MAX_SECONDS = 60.0
_FORGET_AT = 100_000
"""Streams remembered before the ones refreshed longer than `slack` ago are dropped."""


class TopicExpiry:
    """Tracks when this process last refreshed each stream's expiry."""

    def __init__(self, ttl_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_seconds = ttl_seconds
        self.slack = min(ttl_seconds * _SLACK_SHARE, _SLACK_MAX_SECONDS)
        self.expire_ms = round((ttl_seconds + self.slack) * 1000)
        """The PEXPIRE an append sets: 0 when topics never expire."""
        self._clock = clock
        self._refreshed: dict[bytes, float] = {}

    def due(self, keys: Iterable[bytes]) -> list[bytes]:
        """The streams among `keys` whose expiry this append must refresh; counted as done."""
        if not self.expire_ms:
            return []
        now = self._clock()
        refreshed = self._refreshed
        due = [
            k for k in dict.fromkeys(keys) if k not in refreshed or now - refreshed[k] >= self.slack
        ]
        for key in due:
            self._refreshed[key] = now
        if len(self._refreshed) > _FORGET_AT:
            self._refreshed = {k: t for k, t in self._refreshed.items() if now - t < self.slack}
        return due
