"""Log lines: files followed like `tail -F`, each line an event `log` on logs.<name>.

    HERALD_LOGS_FILES="api=/var/log/api.log,web=/srv/web.log" herald worker logs

An event's data is `{"line": "<the line without its ending>"}`. A file renamed away
(rotation) is read to its end, its unterminated last line included, then the new file
from its start; a truncated file is read again from its start; a missing file is waited
for. A first start begins after the last complete line, as `tail -F` does.

Where each file was published up to is kept in Redis (see `workers.logmarks`), so that
a restart neither repeats nor skips a line; over HTTP without Redis positions live in
memory, and a restart starts at the end of each file.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from service.models import TOPIC_PATTERN, PublishEvent
from service.settings import Settings
from workers.lines import MIN_LIMIT, Line, LineSplitter
from workers.logmarks import Batch, FileId, Ledger, Mark, Reading, http_bytes, ledger_for
from workers.runtime import Runtime, Stopped

log = logging.getLogger("herald.worker")

READ_BYTES = 1024 * 1024
"""Most bytes read from a file at once."""

# The data `{"line":"…"}` must fit HERALD_MAX_EVENT_BYTES whatever the line holds, and
# JSON writes a control byte as the six bytes \u00XX.
_DATA_OVERHEAD = len('{"line":""}')
_WORST_ESCAPE = 6


@dataclass(frozen=True, slots=True)
class Source:
    """A followed file and the name its topic is made of."""

    name: str
    path: Path

    @property
    def topic(self) -> str:
        return f"logs.{self.name}"

    def event(self, line: Line) -> PublishEvent:
        return PublishEvent(topic=self.topic, event="log", data={"line": line.text})


def parse_files(spec: str) -> list[Source]:
    """`"api=/var/log/api.log,web=/srv/web.log"` → the files to follow."""
    sources: dict[str, Source] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, sep, path = item.partition("=")
        name, path = name.strip(), path.strip()
        if not (sep and name and path and re.fullmatch(TOPIC_PATTERN, f"logs.{name}")):
            raise ValueError(f"{item!r} is not NAME=PATH (e.g. api=/var/log/api.log)")
        if name in sources:
            raise ValueError(f"{name!r} names two files")
        sources[name] = Source(name, Path(path))
    if not sources:
        raise ValueError("no files: set HERALD_LOGS_FILES, e.g. api=/var/log/api.log")
    return list(sources.values())


@dataclass(frozen=True, slots=True)
class Limits:
    """How much goes into one event and one publish, within what Herald accepts."""

    line_bytes: int
    """Longest piece of a line; longer lines are split."""
    batch_lines: int
    batch_bytes: int
    """Most bytes of a batch sent over HTTP."""

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        line_bytes = (settings.max_event_bytes - _DATA_OVERHEAD) // _WORST_ESCAPE
        if line_bytes < MIN_LIMIT:
            raise ValueError("HERALD_MAX_EVENT_BYTES is too small to hold log lines")
        batch_lines = min(settings.logs_batch, settings.max_batch)
        return cls(line_bytes, batch_lines, settings.max_body_bytes - len("[]"))


class OpenFile:
    """A descriptor and the file it reads, which it keeps reading across renames."""

    def __init__(self, path: Path) -> None:
        # O_NONBLOCK: opening a FIFO by mistake must not hang the worker.
        self._fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        status = os.fstat(self._fd)
        if not stat.S_ISREG(status.st_mode):
            os.close(self._fd)
            raise OSError(f"{path} is not a regular file")
        self.id = FileId.of(status)

    def size(self) -> int:
        return os.fstat(self._fd).st_size

    def read(self, offset: int, size: int) -> bytes:
        return os.pread(self._fd, size, offset)

    def close(self) -> None:
        os.close(self._fd)


def identity(path: Path) -> FileId | None:
    """The file `path` names now; None when there is none."""
    try:
        return FileId.of(os.stat(path))
    except OSError:
        return None


class Follower:
    """One file followed like `tail -F`, its lines published to one topic."""

    def __init__(self, rt: Runtime, source: Source, ledger: Ledger, limits: Limits) -> None:
        self._rt = rt
        self._source = source
        self._ledger = ledger
        self._limits = limits
        self._file: OpenFile | None = None
        self._reading = Reading(FileId(0, 0), "")
        """What `_file` is being read as; meaningless while there is no file."""
        self._read = 0
        """Bytes of the file given to the splitter."""
        self._published = 0
        """Bytes of the file published: the next batch starts here."""
        self._splitter = LineSplitter(0, limits.line_bytes)
        self._problem: str | None = None
        """Why the file cannot be opened, as last logged."""

    async def start(self) -> None:
        """Take up where the mark says, or at the end of the file when there is none."""
        mark = await self._ledger.load()
        if mark is not None:
            await self._resume(mark)
        elif (file := self._open(self._source.path)) is not None:
            await self._begin(file, after_last_line(file))

    async def poll(self) -> None:
        """Publish what was written since the last poll; notice rotation and truncation."""
        file = self._file
        if file is None:
            file = self._open(self._source.path)
            if file is None:
                return
            await self._begin(file, 0)
        replaced = identity(self._source.path) != file.id
        size = file.size()
        if size < self._read:
            log.warning(
                "%s: %s was truncated to %d bytes, below the position %d: reading it again "
                "from the start",
                self._rt.name,
                self._source.path,
                size,
                self._read,
            )
            await self._begin(file, 0)
        await self._publish(self._lines_to_end(file, final=replaced))
        if replaced:
            log.info(
                "%s: %s was rotated or removed: read it to its end; the next file there "
                "is read from its start",
                self._rt.name,
                self._source.path,
            )
            self.close()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    async def _resume(self, mark: Mark) -> None:
        file = find(self._source.path, mark.reading.file)
        if file is None:
            log.warning(
                "%s: the file last read as %s (inode %d) is gone; lines written to it after "
                "byte %d, if any, are lost",
                self._rt.name,
                self._source.path,
                mark.reading.file.inode,
                mark.offset,
            )
        elif file.size() < mark.pending:
            log.warning(
                "%s: %s was truncated while the worker was away: reading it from the start",
                self._rt.name,
                self._source.path,
            )
            await self._begin(file, 0)
        else:
            self._follow(file, mark.reading, mark.offset)
            if mark.pending > mark.offset:
                await self._commit(self._pending_batch(file, mark.pending))
                self._follow(file, mark.reading, mark.pending)

    async def _begin(self, file: OpenFile, offset: int) -> None:
        """Read `file` anew from `offset`."""
        reading = Reading.anew(file.id)
        self._follow(file, reading, offset)
        await self._ledger.save(Mark.at(reading, offset))

    def _follow(self, file: OpenFile, reading: Reading, offset: int) -> None:
        self._file, self._reading = file, reading
        self._read = self._published = offset
        self._splitter = LineSplitter(offset, self._limits.line_bytes)

    def _open(self, path: Path) -> OpenFile | None:
        """`path` opened, or None after saying why (once, not at every poll)."""
        try:
            file = OpenFile(path)
        except OSError as exc:
            problem = "it does not exist" if isinstance(exc, FileNotFoundError) else str(exc)
            if problem != self._problem:
                log.warning("%s: waiting for %s: %s", self._rt.name, path, problem)
                self._problem = problem
            return None
        if self._problem is not None:
            log.info("%s: %s is there: following it", self._rt.name, path)
            self._problem = None
        return file

    def _lines_to_end(self, file: OpenFile, final: bool) -> Iterator[Line]:
        """The complete lines up to the end of the file; with `final`, the rest too."""
        while chunk := file.read(self._read, READ_BYTES):
            self._read += len(chunk)
            yield from self._splitter.feed(chunk)
        if final:
            yield from self._splitter.finish()

    def _pending_batch(self, file: OpenFile, end: int) -> Batch:
        """The batch that was in flight, read again: the same bytes make the same events."""
        splitter = LineSplitter(self._published, self._limits.line_bytes)
        batch = Batch.at(self._reading, self._published)
        for offset in range(self._published, end, READ_BYTES):
            chunk = file.read(offset, min(READ_BYTES, end - offset))
            for line in splitter.feed(chunk):
                batch.add(self._source.event(line), line)
        for line in splitter.finish():
            batch.add(self._source.event(line), line)
        return batch

    async def _publish(self, lines: Iterable[Line]) -> None:
        """Publish `lines` in batches of at most the configured lines and bytes."""
        limits = self._limits
        batch = Batch.at(self._reading, self._published)
        for line in lines:
            event = self._source.event(line)
            if batch.events and (
                len(batch.events) == limits.batch_lines
                or batch.size + http_bytes(event) > limits.batch_bytes
            ):
                await self._commit(batch)
                batch = Batch.at(self._reading, batch.end)
            batch.add(event, line)
        if batch.events:
            await self._commit(batch)

    async def _commit(self, batch: Batch) -> None:
        # A long catch-up never waits, so it looks for the stop signal itself.
        if self._rt.stopping.is_set():
            raise Stopped
        await self._ledger.commit(batch)
        self._published = batch.end


def after_last_line(file: OpenFile) -> int:
    """Where a first start begins: after the last line ending near the end of the file."""
    size = file.size()
    start = max(0, size - READ_BYTES)
    newline = file.read(start, size - start).rfind(b"\n")
    if newline >= 0:
        return start + newline + 1
    return 0 if start == 0 else size


def find(path: Path, file_id: FileId) -> OpenFile | None:
    """The file `file_id` opened: at `path`, or renamed away to a file beside it."""
    candidates = [path]
    try:
        with os.scandir(path.parent) as entries:
            candidates += [Path(e.path) for e in entries if e.inode() == file_id.inode]
    except OSError:
        pass
    for candidate in candidates:
        try:
            file = OpenFile(candidate)
        except OSError:
            continue
        if file.id == file_id:
            return file
        file.close()
    return None


async def follow(rt: Runtime, source: Source, limits: Limits) -> None:
    """Follow one file until the worker is told to stop."""
    follower = Follower(rt, source, ledger_for(rt, source.name), limits)
    try:
        await follower.start()
        while True:
            await follower.poll()
            await rt.sleep(rt.settings.logs_poll_seconds)
    except Stopped:
        return
    finally:
        follower.close()


async def run(rt: Runtime) -> None:
    try:
        sources = parse_files(rt.settings.logs_files)
        limits = Limits.of(rt.settings)
    except ValueError as exc:
        raise SystemExit(f"herald worker logs: {exc}") from None
    if rt.store is None:
        log.warning(
            "%s: without HERALD_REDIS_URL positions are kept in memory only: after a "
            "restart each file is read from its end, and lines written meanwhile are skipped",
            rt.name,
        )
    async with asyncio.TaskGroup() as group:
        for source in sources:
            group.create_task(follow(rt, source, limits), name=f"{rt.name}-{source.name}")
