"""Every Redis key name Herald uses, in one place."""

from __future__ import annotations

STREAM_PREFIX = "herald:stream:"
_STREAM_PREFIX_BYTES = STREAM_PREFIX.encode()


def stream_key(topic: str) -> bytes:
    """The stream that holds a topic's events."""
    return _STREAM_PREFIX_BYTES + topic.encode()


def idempotency_key(key: str) -> bytes:
    """Where the answer to a publish with `Idempotency-Key: key` is kept."""
    return b"herald:idem:" + key.encode()


def worker_mark(worker: str, name: str) -> bytes:
    """Where worker `worker` records its progress on source `name` (a hash)."""
    return f"herald:worker:{worker}:{name}".encode()
