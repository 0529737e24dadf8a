"""What every worker runs with: its settings, a sink, Redis for its state, a stop signal.

    herald worker stocks        # one process per worker, as its own Deployment

A worker is an `async def run(rt: Runtime) -> None` that returns once `rt.stopping`
is set. Outages never end it: `rt.retry` waits them out with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from redis.exceptions import OutOfMemoryError

from service.client.publisher import Unavailable
from service.errors import REDIS_DOWN, NotReplicated, OutcomeUnknown
from service.settings import Settings
from service.storage.store import Store
from service.storage.stores import open_store
from workers.sink import HttpSink, Sink, StoreSink

log = logging.getLogger("herald.worker")

T = TypeVar("T")

_BACKOFF_FIRST = 0.1
_BACKOFF_MAX = 5.0
_STOP_TIMEOUT_SECONDS = 3.0


class Stopped(Exception):
    """The worker was told to stop while it waited."""


# NotReplicated: the primary has the events but too few replicas confirmed them yet.
# OutcomeUnknown: Redis did not answer in time; OutOfMemoryError: Redis at maxmemory.
_OUTAGES = (*REDIS_DOWN, NotReplicated, OutcomeUnknown, OutOfMemoryError, Unavailable)


@dataclass
class Runtime:
    name: str
    settings: Settings
    sink: Sink
    store: Store | None
    """Redis, for workers that keep state there or read presence; None over HTTP only."""
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    async def retry(self, what: str, operation: Callable[[], Awaitable[T]]) -> T:
        """`operation()`, repeated with backoff while Redis or Herald is unreachable.

        Raises `Stopped` when the worker is told to stop meanwhile.
        """
        backoff = _BACKOFF_FIRST
        failing = False
        while True:
            try:
                result = await operation()
            except _OUTAGES as exc:
                if not failing:
                    log.warning("%s: %s failed (%s); retrying with backoff", self.name, what, exc)
                    failing = True
                await self.sleep(backoff * random.uniform(0.5, 1.5))
                backoff = min(backoff * 2, _BACKOFF_MAX)
                continue
            if failing:
                log.info("%s: %s works again", self.name, what)
            return result

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds`, or raise `Stopped` as soon as the worker is told to stop."""
        try:
            await asyncio.wait_for(self.stopping.wait(), timeout=max(seconds, 0))
        except TimeoutError:
            return
        raise Stopped

    def need_store(self) -> Store:
        if self.store is None:
            raise SystemExit(f"herald worker {self.name}: needs HERALD_REDIS_URL")
        return self.store


WorkerMain = Callable[[Runtime], Awaitable[None]]


async def run_until_stopped(main: WorkerMain, rt: Runtime) -> None:
    with contextlib.suppress(Stopped):
        await main(rt)


class InProcess:
    """A worker running as a task of another process: the service's `--demo`."""

    def __init__(self, runtime: Runtime, task: asyncio.Task[None]) -> None:
        self._runtime = runtime
        self._task = task

    @classmethod
    def start(
        cls, name: str, main: WorkerMain, settings: Settings, sink: Sink, store: Store | None
    ) -> InProcess:
        runtime = Runtime(name, settings, sink, store)
        task = asyncio.create_task(run_until_stopped(main, runtime), name=f"herald-{name}")
        task.add_done_callback(_report_crash)
        return cls(runtime, task)

    async def stop(self) -> None:
        self._runtime.stopping.set()
        try:
            async with asyncio.timeout(_STOP_TIMEOUT_SECONDS):
                await asyncio.gather(self._task, return_exceptions=True)
        except TimeoutError:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


def _report_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("%s stopped with an error", task.get_name(), exc_info=task.exception())


async def run_process(name: str, main: WorkerMain, settings: Settings) -> None:
    """Run one worker as its own process until SIGTERM or SIGINT."""
    store = open_store(settings) if settings.redis_url else None
    if store is not None:
        await store.start()
    if settings.url:
        token = settings.token.get_secret_value() if settings.token else None
        sink: Sink = HttpSink(settings.url, token)
    elif store is not None:
        sink = StoreSink(store, settings)
    else:
        raise SystemExit(
            f"herald worker {name}: set HERALD_REDIS_URL (publish into Redis) "
            "or HERALD_URL (publish over HTTP)"
        )
    rt = Runtime(name, settings, sink, store)
    loop = asyncio.get_running_loop()
    for stop in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(stop, rt.stopping.set)
    log.info("%s: publishing %s", name, f"to {settings.url}" if settings.url else "into Redis")
    try:
        await run_until_stopped(main, rt)
    finally:
        await sink.close()
        if store is not None:
            await store.close()
    log.info("%s: stopped", name)
