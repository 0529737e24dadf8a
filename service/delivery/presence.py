"""Online counts: each replica keeps its subscribers per topic in Redis, with a TTL.

A replica reports whenever its counts changed (at most every half second) and at
least every `presence_seconds`; a report lives three intervals, so the counts of a
replica that crashed expire by themselves. `Store.online()` sums the live reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from redis.exceptions import ResponseError

from service.delivery.hub import Hub
from service.delivery.reporter import Reporter
from service.errors import REDIS_DOWN
from service.settings import Settings
from service.storage.store import Store

log = logging.getLogger("herald")

_CHECK_SECONDS = 0.5
_REPORT_LIFETIMES = 3


class Presence(Reporter):
    task_name = "herald-presence"
    what = "presence"

    def __init__(self, store: Store, hub: Hub, settings: Settings) -> None:
        super().__init__()
        self._store = store
        self._hub = hub
        self._interval = settings.presence_seconds

    async def _withdraw(self) -> None:
        await self._store.withdraw_presence(self.replica)

    async def _run(self) -> None:
        reported = -1
        reported_at = 0.0
        failing = False
        while not self._stopping.is_set():
            now = time.monotonic()
            if self._hub.membership != reported or now - reported_at >= self._interval:
                membership = self._hub.membership
                try:
                    await self._store.report_presence(
                        self.replica, self._hub.counts(), self._interval * _REPORT_LIFETIMES
                    )
                except (*REDIS_DOWN, ResponseError) as exc:
                    # ResponseError: Redis at maxmemory refuses the report; it comes back.
                    if not failing:
                        log.warning("could not report online counts: %s", exc)
                    failing = True
                else:
                    reported, reported_at, failing = membership, now, False
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(_CHECK_SECONDS, self._interval)):
                    await self._stopping.wait()
