"""Redis Sentinel: clients of the service's primary that follow it through a failover.

    redis+sentinel://host:26379,host:26379/service     (rediss+sentinel:// for TLS)

redis-py asks the sentinels where the primary is whenever it opens a connection, and
drops a connection whose server answers READONLY. Herald adds:

- Answers that say "this server cannot serve as the primary now" (NOREPLICAS,
  UNBLOCKED, MASTERDOWN) drop the connection too, so the next one asks the sentinels.
  A failed-over primary that keeps running answers NOREPLICAS when it runs with
  `min-replicas-to-write` (docs/operations/redis.md).
- A connection open to a server other than the primary Sentinel last named is
  reopened before its next command (redis-py closes only the idle ones).
- When any connection learns that the primary moved, the hub readers blocked on the
  former one are cut off: they reconnect to the new primary and resume from the hub's
  positions, and CLIENT UNBLOCK, sent through the commands client, reaches them there.

Herald does not poll the sentinels: while a failed-over primary still takes writes,
moving some processes early would let their subscribers see ids on the old primary
beyond events other processes had already written to the new one, a gap.
"""

from __future__ import annotations

import logging
import weakref
from typing import Any

import redis.asyncio as redis
from redis.asyncio.connection import AbstractConnection, Connection, SSLConnection
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedConnection
from redis.exceptions import ConnectionError, MasterDownError, ResponseError

log = logging.getLogger("herald")

Address = tuple[str, int]

# Error replies of a server that is, for now, no primary Herald can use (MASTERDOWN has
# a class of its own).
_NOT_A_PRIMARY_NOW = ("NOREPLICAS ", "UNBLOCKED ")


class Primary:
    """Clients of one service's primary, sharing what Sentinel last said of it."""

    def __init__(self, sentinels: Sentinel, service: str, tls: bool) -> None:
        self._sentinels = sentinels
        self._service = service
        self._connection_class = _TLSConnection if tls else _Connection
        self.address: Address | None = None
        """Where Sentinel last said the primary is (None before the first answer)."""
        self._readers: weakref.WeakSet[_PrimaryPool] = weakref.WeakSet()

    def client(self, **options: Any) -> redis.Redis:
        """A pooled client for commands; closing it closes the sentinel connections too."""
        return redis.Redis.from_pool(self._pool(options, owns_sentinels=True))

    def reader(self, **options: Any) -> redis.Redis:
        """A client on one connection of its own, cut off when the primary moves."""
        pool = self._pool(options, owns_sentinels=False)
        self._readers.add(pool)
        client = redis.Redis(connection_pool=pool, single_connection_client=True)
        client.auto_close_connection_pool = True  # as from_pool does: the client owns its pool
        return client

    def _pool(self, options: dict[str, Any], owns_sentinels: bool) -> _PrimaryPool:
        return _PrimaryPool(
            self._service,
            self._sentinels,
            primary=self,
            owns_sentinels=owns_sentinels,
            connection_class=self._connection_class,
            **options,
        )

    async def learned(self, address: Address) -> None:
        """Sentinel named `address` as the primary: if it moved, cut the readers off."""
        if address == self.address:
            return
        if self.address is not None:
            log.warning(
                "Sentinel names %s:%d as the primary of %r (was %s:%d)",
                *address,
                self._service,
                *self.address,
            )
        self.address = address
        for pool in list(self._readers):
            if pool.master_address != address:
                await pool.disconnect()

    async def close(self) -> None:
        await self._sentinels.aclose()


class _PrimaryPool(SentinelConnectionPool):
    def __init__(
        self,
        service: str,
        sentinels: Sentinel,
        *,
        primary: Primary,
        owns_sentinels: bool,
        **options: Any,
    ) -> None:
        super().__init__(service, sentinels, **options)  # type: ignore[no-untyped-call]
        self._primary = primary
        self._owns_sentinels = owns_sentinels

    async def get_master_address(self) -> Address:
        address: Address = await super().get_master_address()  # type: ignore[no-untyped-call]
        await self._primary.learned(address)
        return address

    async def ensure_connection(self, connection: AbstractConnection) -> None:
        primary = self._primary.address
        if (
            primary is not None
            and isinstance(connection, Connection)
            and connection.is_connected
            and (connection.host, connection.port) != primary
        ):
            await connection.disconnect()  # open to a former primary
        await super().ensure_connection(connection)

    async def aclose(self) -> None:
        await super().aclose()
        if self._owns_sentinels:
            await self._primary.close()


class _Connection(SentinelManagedConnection):
    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().read_response(*args, **kwargs)
        except ResponseError as exc:
            if not (isinstance(exc, MasterDownError) or str(exc).startswith(_NOT_A_PRIMARY_NOW)):
                raise
            await self.disconnect()
            raise ConnectionError(f"the primary cannot serve now: {exc}") from exc


class _TLSConnection(_Connection, SSLConnection):
    pass
