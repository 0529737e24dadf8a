"""Every Redis key name Herald uses, in one place."""

from __future__ import annotations

import hashlib

STREAM_PREFIX = "herald:stream:"
_STREAM_PREFIX_BYTES = STREAM_PREFIX.encode()


MERCURE_TOPIC = "{mercure}"
"""The internal topic whose stream holds every Mercure update (`{` is no Herald topic's).

Its braces are the key's Cluster hash tag, shared by the Mercure id index keys, so the
publish script touches one slot."""
MERCURE_IDS = b"herald:mercure-ids:{mercure}"
"""Hash: a publisher's update id -> the entry id of its (earliest retained) update."""
MERCURE_ORDER = b"herald:mercure-order:{mercure}"
"""Sorted set of the ids in MERCURE_IDS, scored by their entry's millisecond, for trimming."""


MERCURE_SUBSCRIBERS = b"herald:mercure-subs:{mercure}"
"""Sorted set: every replica that reports Mercure subscriptions, scored by when it expires."""


def mercure_subscriptions(replica: str) -> bytes:
    """Hash of one replica's active Mercure subscriptions (id -> JSON document)."""
    return MERCURE_SUBSCRIBERS + b":" + replica.encode()


def internal(topic: str) -> bool:
    """Topics of Herald's own making (the Mercure stream), never a user's."""
    return topic.startswith("{")


def stream_key(topic: str) -> bytes:
    """The stream that holds a topic's events."""
    return _STREAM_PREFIX_BYTES + topic.encode()


def scoped_idempotency_key(publisher: str | None, key: str) -> str:
    """An Idempotency-Key within its publisher's own space (see `auth.Grant.publisher`);
    without auth every publisher shares one space, the key itself."""
    if publisher is None:
        return key
    # A digest keeps the key short and the token out of Redis.
    return hashlib.sha256(publisher.encode()).hexdigest()[:32] + ":" + key


def idempotency_key(key: str) -> bytes:
    """Where the answer to a publish with `Idempotency-Key: key` (scoped) is kept."""
    return b"herald:idem:" + key.encode()


def stream_idempotency_key(key: str, topic: str) -> bytes:
    """Where a streaming publish with `Idempotency-Key: key` (scoped) records how far it
    got (a hash). The hash tag of its first topic's stream keeps both on one Cluster slot."""
    return b"herald:idem-stream:{" + stream_key(topic) + b"}:" + key.encode()


def event_idempotency_key(topic: str, key: str, index: int) -> bytes:
    """On a Cluster, where event `index` of a publish with `key` is remembered: the hash
    tag puts it on its stream's slot, so one script can check it and append."""
    return b"{" + stream_key(topic) + b"}:idem:" + f"{key}:{index}".encode()


def worker_mark(worker: str, name: str, topic: str | None = None) -> bytes:
    """Where worker `worker` records its progress on source `name` (a hash).

    With the `topic` it publishes to, the mark carries that stream's key as a hash tag,
    so on a Cluster the events and the mark can move in one transaction.
    """
    mark = f"herald:worker:{worker}:{name}".encode()
    return mark if topic is None else mark + b":{" + stream_key(topic) + b"}"


# The hash tag keeps every presence key on one slot, so a report is one transaction
# on a Cluster too.
PRESENCE_REPLICAS = b"{herald:presence}:replicas"
"""Sorted set: every replica that reports presence, scored by when its report expires."""


def presence(replica: str) -> bytes:
    """Hash of one replica's subscriber count per topic; it expires unless refreshed."""
    return f"{{herald:presence}}:{replica}".encode()
