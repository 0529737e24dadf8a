"""Per-client publish rate limiting: a token bucket per client, in this process."""

from __future__ import annotations

import math

# Past this many clients, buckets that have refilled completely are dropped: a full
# bucket is what a new one would be, so forgetting it changes nothing.
_PRUNE_AT = 10_000


class RateLimiter:
    """Each client may publish `rate` events a second on average, `burst` at once."""

    def __init__(self, rate: float, burst: int) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._buckets: dict[str, tuple[float, float]] = {}
        """client -> (tokens left, when they were counted)"""

    def take(self, client: str, events: int, now: float) -> float:
        """Take `events` tokens; 0 when allowed, else the seconds until they would be."""
        tokens, since = self._buckets.get(client, (self._burst, now))
        tokens = min(self._burst, tokens + (now - since) * self._rate)
        if tokens >= events:
            self._buckets[client] = (tokens - events, now)
            if len(self._buckets) > _PRUNE_AT:
                self._prune(now)
            return 0.0
        self._buckets[client] = (tokens, now)
        return (events - tokens) / self._rate

    def _prune(self, now: float) -> None:
        full = [
            client
            for client, (tokens, since) in self._buckets.items()
            if tokens + (now - since) * self._rate >= self._burst
        ]
        for client in full:
            del self._buckets[client]


def retry_after(seconds: float) -> int:
    """Whole seconds for a Retry-After header, at least 1."""
    return max(1, math.ceil(seconds))
