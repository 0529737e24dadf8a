"""A replica's record in Redis, kept alive by a loop and taken out when the replica stops.

Online counts and Mercure's active subscriptions are both kept this way: each record
expires by itself when a replica crashes, and is withdrawn at once when it stops.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket

from service.errors import REDIS_DOWN

log = logging.getLogger("herald")

_WITHDRAW_TIMEOUT_SECONDS = 1.0


class Reporter:
    """Runs `_run` until stopped, then `_withdraw`s this replica's record."""

    task_name = "herald-reporter"
    what = "a record"

    def __init__(self) -> None:
        self.replica = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.task_name)

    async def stop(self) -> None:
        """Stop reporting and take this replica's record out at once."""
        # The flag ends the loop even when a Redis client swallows the cancellation
        # of a report under way (seen at a shutdown right after startup).
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        try:
            async with asyncio.timeout(_WITHDRAW_TIMEOUT_SECONDS):
                await self._withdraw()
        except (*REDIS_DOWN, TimeoutError) as exc:
            log.debug("could not withdraw %s, it will expire: %s", self.what, exc)

    async def _run(self) -> None:
        raise NotImplementedError

    async def _withdraw(self) -> None:
        raise NotImplementedError
