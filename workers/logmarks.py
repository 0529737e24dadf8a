"""Where the log lines worker got to in each file, and how a batch commits with it.

A mark is the Redis hash `herald:worker:logs:<name>:{herald:stream:logs.<name>}` (the hash
tag keeps it on its stream's Cluster slot): the file (device, inode), the epoch
of this reading of it, `offset` (published up to here) and `pending` (the end of a batch
that may or may not have landed; equal to `offset` when none is in flight). A ledger
publishes batches and keeps the mark, exactly where Redis is there for it:

    TransactionLedger   into Redis: the batch and the mark after it in one MULTI/EXEC
    WriteAheadLedger    over HTTP: mark the range pending, publish it with an
                        Idempotency-Key made of the file, the epoch and the range, then
                        mark it done; after a crash the follower reads the pending range
                        again and commits it once more, which Herald answers with the
                        first ids, appending nothing
    MemoryLedger        over HTTP without Redis: nothing is kept
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol

from service.models import PublishEvent
from service.storage import keys
from service.storage.store import Store
from workers.lines import Line
from workers.runtime import Runtime
from workers.sink import StoreSink

# Over HTTP a batch is [{"topic":"…","event":"log","data":…},…]: besides the topic and
# the data, this much per event must fit HERALD_MAX_BODY_BYTES.
_ENVELOPE_BYTES = len('{"topic":"","event":"log","data":},')


@dataclass(frozen=True, slots=True)
class FileId:
    """A file, whatever it is called now: renames keep it, a new file gets another."""

    device: int
    inode: int

    @classmethod
    def of(cls, status: os.stat_result) -> FileId:
        return cls(status.st_dev, status.st_ino)


@dataclass(frozen=True, slots=True)
class Reading:
    """A file read from some offset on: the same file and epoch until it is read anew."""

    file: FileId
    epoch: str
    """Drawn afresh whenever reading begins anew (a first start, a new file, a truncation):
    a truncated file or a reused inode holds other bytes at offsets already published,
    which must not get the idempotency keys of those."""

    @classmethod
    def anew(cls, file: FileId) -> Reading:
        return cls(file, secrets.token_hex(8))


@dataclass(frozen=True, slots=True)
class Mark:
    """How far a file was published: up to `offset`; up to `pending` if a batch in flight landed."""

    reading: Reading
    offset: int
    pending: int

    @classmethod
    def at(cls, reading: Reading, offset: int) -> Mark:
        return cls(reading, offset, offset)

    @classmethod
    def parse(cls, fields: Mapping[str, str]) -> Mark | None:
        if not fields:
            return None
        file = FileId(int(fields["device"]), int(fields["inode"]))
        reading = Reading(file, fields["epoch"])
        return cls(reading, int(fields["offset"]), int(fields["pending"]))

    def fields(self) -> dict[str, str]:
        return {
            "device": str(self.reading.file.device),
            "inode": str(self.reading.file.inode),
            "epoch": self.reading.epoch,
            "offset": str(self.offset),
            "pending": str(self.pending),
        }


def http_bytes(event: PublishEvent) -> int:
    """What `event` adds to the body of a batch published over HTTP."""
    return len(event.text.encode()) + len(event.topic) + _ENVELOPE_BYTES


@dataclass
class Batch:
    """The lines of a file from byte `start` to `end`, as events."""

    reading: Reading
    start: int
    end: int
    events: list[PublishEvent] = field(default_factory=list)
    size: int = 0
    """Bytes it takes in an HTTP body."""

    @classmethod
    def at(cls, reading: Reading, offset: int) -> Batch:
        return cls(reading, offset, offset)

    def add(self, event: PublishEvent, line: Line) -> None:
        self.events.append(event)
        self.size += http_bytes(event)
        self.end = line.end

    def idempotency_key(self, name: str) -> str:
        """The same for the same bytes of the same reading of a file, and only for them."""
        file = self.reading.file
        parts = (name, file.device, file.inode, self.reading.epoch, self.start, self.end)
        return "logs:" + hashlib.sha256("\0".join(map(str, parts)).encode()).hexdigest()


class Ledger(Protocol):
    """Publishes one file's batches and keeps its mark, waiting out outages."""

    async def load(self) -> Mark | None: ...

    async def save(self, mark: Mark) -> None: ...

    async def commit(self, batch: Batch) -> None:
        """Publish `batch` and record its end; a repeat of a committed batch appends nothing."""


class _RedisMarks:
    def __init__(self, rt: Runtime, name: str, store: Store) -> None:
        self._rt = rt
        self._name = name
        self._store = store
        self._key = keys.worker_mark("logs", name, topic=f"logs.{name}")

    async def load(self) -> Mark | None:
        fields = await self._rt.retry(
            "reading a position", partial(self._store.read_mark, self._key)
        )
        return Mark.parse(fields)

    async def save(self, mark: Mark) -> None:
        write = partial(self._store.write_mark, self._key, mark.fields())
        await self._rt.retry("recording a position", write)


class TransactionLedger(_RedisMarks):
    """Straight into Redis: the lines and the mark after them in one MULTI/EXEC."""

    async def commit(self, batch: Batch) -> None:
        mark = Mark.at(batch.reading, batch.end)
        entries = [(e.topic, e.event, e.text) for e in batch.events]
        retention = self._rt.settings.retention
        tried = False

        async def publish() -> None:
            nonlocal tried
            # A transaction whose answer was lost may have landed: then the mark says so.
            if tried and Mark.parse(await self._store.read_mark(self._key)) == mark:
                return
            tried = True
            await self._store.publish_and_mark(entries, retention, self._key, mark.fields())

        await self._rt.retry(f"publishing the lines of {self._name}", publish)


class WriteAheadLedger(_RedisMarks):
    """Over HTTP with Redis for the marks: the range in flight is written down first."""

    async def commit(self, batch: Batch) -> None:
        await self.save(Mark(batch.reading, batch.start, batch.end))
        key = batch.idempotency_key(self._name)
        publish = partial(self._rt.sink.publish, batch.events, key)
        await self._rt.retry(f"publishing the lines of {self._name}", publish)
        await self.save(Mark.at(batch.reading, batch.end))


class MemoryLedger:
    """Over HTTP without Redis: nothing outlives the process."""

    def __init__(self, rt: Runtime, name: str) -> None:
        self._rt = rt
        self._name = name

    async def load(self) -> Mark | None:
        return None

    async def save(self, mark: Mark) -> None:
        """Nowhere to keep it: the follower itself knows where it is."""

    async def commit(self, batch: Batch) -> None:
        key = batch.idempotency_key(self._name)
        publish = partial(self._rt.sink.publish, batch.events, key)
        await self._rt.retry(f"publishing the lines of {self._name}", publish)


def ledger_for(rt: Runtime, name: str) -> Ledger:
    """The exact way when there is Redis for marks, the in-memory one otherwise."""
    if isinstance(rt.sink, StoreSink):
        return TransactionLedger(rt, name, rt.need_store())
    if rt.store is not None:
        return WriteAheadLedger(rt, name, rt.store)
    return MemoryLedger(rt, name)
