"""Herald's errors and the handlers that turn every failure into a JSON `detail`.

    HeraldError           an answer with a status and a JSON `detail`
     ├── BadRequest          400
     ├── Unauthorized        401 (no token, or one that does not verify)
     ├── Forbidden           403 (a topic outside the token)
     ├── NotFound            404
     ├── Conflict            409 (another streaming publish with the same Idempotency-Key)
     ├── PayloadTooLarge     413
     ├── Invalid             422 (detail: pydantic's list of errors)
     ├── TooManyRequests     429 with Retry-After (the client's publish rate)
     ├── Unavailable         503 with Retry-After: nothing was published (Redis
     │                       unreachable, or out of memory)
     ├── PartlyPublished     503 with Retry-After and each event's result (Redis Cluster);
     │                       504 when some event's outcome is unknown
     ├── NotReplicated       503 with Retry-After: stored on the primary, too few replicas
     │                       confirmed it (HERALD_PUBLISH_REPLICAS)
     └── OutcomeUnknown      504 with Retry-After: the write reached Redis, no answer came
                             back; it may have been stored

Redis connection failures anywhere in a request become `Unavailable`; anything
unexpected becomes a 500 whose body says nothing about the code.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    OutOfMemoryError,
    ReadOnlyError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger("herald")

RETRY_AFTER_SECONDS = 1


class HeraldError(Exception):
    status = 500

    def __init__(self, detail: str | list[Any]) -> None:
        super().__init__(str(detail))
        self.detail = detail

    def headers(self) -> dict[str, str]:
        return {}

    def body(self) -> dict[str, Any]:
        return {"detail": self.detail}


class BadRequest(HeraldError):
    status = 400


class Unauthorized(HeraldError):
    status = 401

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


class Forbidden(HeraldError):
    status = 403


class NotFound(HeraldError):
    status = 404


class Conflict(HeraldError):
    status = 409


class PayloadTooLarge(HeraldError):
    status = 413


class Invalid(HeraldError):
    status = 422


class TooManyRequests(HeraldError):
    status = 429

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class Unavailable(HeraldError):
    status = 503

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(RETRY_AFTER_SECONDS)}


class OutcomeUnknown(HeraldError):
    """The write was sent and Redis did not answer in time (frozen, overloaded, or the
    connection broke): it may have been stored, now or once Redis catches up."""

    status = 504

    def __init__(self) -> None:
        super().__init__(
            "Redis did not confirm the write in time: it may have been stored. Retry with "
            "the same Idempotency-Key, which publishes it at most once"
        )

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(RETRY_AFTER_SECONDS)}


class PartlyPublished(Unavailable):
    """Some events of a batch landed and some did not: a batch spans shards on a Cluster.

    `results` holds, in order, `{"topic", "id"}` for each event that landed and
    `{"topic", "error"}` for each that did not; a retry with the same Idempotency-Key
    publishes only the missing ones. When the outcome of some event is unknown, the
    status is 504, as for `OutcomeUnknown`.
    """

    def __init__(self, results: list[dict[str, str]], unknown: bool = False) -> None:
        failed = sum("error" in r for r in results)
        super().__init__(
            f"{failed} of {len(results)} events were not published or not confirmed "
            "(see results); retry with the same Idempotency-Key"
        )
        self.results = results
        if unknown:
            self.status = OutcomeUnknown.status

    def body(self) -> dict[str, Any]:
        return {"detail": self.detail, "results": self.results}


class NotReplicated(Unavailable):
    """WAIT counted fewer replicas than HERALD_PUBLISH_REPLICAS: the primary has the events,
    but a failover now could lose them."""

    def __init__(self, confirmed: int, required: int) -> None:
        super().__init__(
            f"stored on the primary, but only {confirmed} of {required} replicas confirmed it; "
            "retry with the same Idempotency-Key"
        )


# Cluster answers meaning "not here, or not now": the command did not run. A slot the
# client's map does not cover yet (before the first load, during a failover) is the same.
REDIRECTED = (MovedError, AskError, TryAgainError, ClusterDownError, SlotNotCoveredError)
# READONLY: a write reached a primary that a failover demoted (Sentinel's clients turn it
# into a connection error by themselves; a plain redis:// client does not).
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, OSError, ReadOnlyError, *REDIRECTED)


def response_for(
    exc: Exception, method: str, path: str, extra: dict[str, Any] | None = None
) -> JSONResponse:
    """The answer to a request that failed with `exc`; `extra` joins a Herald error's body."""
    if isinstance(exc, REDIS_DOWN):
        log.warning("redis unreachable during %s %s: %s", method, path, exc)
        exc = Unavailable("Redis is unreachable, try again shortly")
    elif isinstance(exc, OutOfMemoryError):
        # Redis refuses a write at maxmemory before running it (a transaction aborts
        # whole), so nothing was stored; reads, and so subscribers, carry on.
        log.warning("redis is out of memory during %s %s: %s", method, path, exc)
        exc = Unavailable("Redis is out of memory (maxmemory); nothing was published")
    elif isinstance(exc, OutcomeUnknown | PartlyPublished):
        log.warning("redis did not take every write during %s %s: %s", method, path, exc)
    if isinstance(exc, HeraldError):
        return JSONResponse(exc.body() | (extra or {}), exc.status, headers=exc.headers())
    log.error("unexpected error during %s %s", method, path, exc_info=exc)
    return JSONResponse({"detail": "internal server error"}, 500)


def install(app: FastAPI) -> None:
    """Register the handlers on `app`."""

    async def handle(request: Request, exc: Exception) -> JSONResponse:
        return response_for(exc, request.method, request.url.path)

    for exc_type in (HeraldError, *REDIS_DOWN, Exception):
        app.add_exception_handler(exc_type, handle)
