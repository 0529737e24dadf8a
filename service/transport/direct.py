"""Bytes written straight to the client's socket, under uvicorn's HTTP/1.1 protocol.

A broadcast is one socket write per subscriber, and on one core a write costs about
9 µs (measured: uvloop writing one 60-byte chunk to 5,000 loopback TCP sockets).
Through the ASGI `send` a delivery took about 18 µs; here the hub writes the
chunk it framed once for the whole batch and pays little more than the write.
A publish's answer, likewise, is one write (`answer`) instead of uvicorn's two, and
skips its per-header checks.

Only uvicorn's httptools protocol is recognised (also beneath Starlette's
CORSMiddleware), and only while the response is chunked, open and the transport is
not paused. Anything else, or any other server, gets no `DirectWriter`, and frames
go through the ASGI `send` as usual. What this relies on in uvicorn is listed, and
checked, in `service.transport.uvicorn_http`.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterable

from starlette.types import Send

from service.transport.uvicorn_http import (
    STATUS_LINE,
    RequestResponseCycle,
    answer_cycle,
    response_cycle,
)

log = logging.getLogger("herald")


def answer(
    send: Send, status: int, headers: Iterable[tuple[bytes, bytes]], body: bytes | memoryview
) -> bool:
    """Write a whole response in one write: the status line, uvicorn's default headers,
    `headers` (lower-case names, Content-Length among them) and `body`.

    False, having written nothing, where it must go through `send`: behind middleware
    that wraps `send` (CORS adds its headers there), with the access log on, for HEAD,
    once a response started, or while the client reads slowly (`send` waits for it).
    """
    cycle = answer_cycle(send)
    if (
        cycle is None
        or cycle.access_log
        or cycle.scope["method"] == "HEAD"
        or cycle.response_started
        or cycle.disconnected
        or cycle.flow.write_paused
        or cycle.transport.is_closing()
    ):
        return False
    parts: list[bytes | memoryview] = [STATUS_LINE[status]]
    for name, value in (*cycle.default_headers, *headers):
        parts += (name, b": ", value, b"\r\n")
    if not cycle.keep_alive:
        parts.append(b"connection: close\r\n")
    parts += (b"\r\n", body)
    # What uvicorn's `send` records of a complete response, in its order.
    cycle.response_started = cycle.response_complete = True
    cycle.waiting_for_100_continue = False
    cycle.chunked_encoding = False
    cycle.transport.write(b"".join(parts))
    cycle.message_event.set()
    if not cycle.keep_alive:
        cycle.transport.close()
    cycle.on_response()
    return True


def chunk(data: bytes) -> bytes:
    """`data` framed as one HTTP/1.1 chunk."""
    return b"%x\r\n%s\r\n" % (len(data), data)


class DirectWriter:
    """The connection beneath one uvicorn response, for writing body chunks directly."""

    __slots__ = ("_cycle",)

    def __init__(self, cycle: RequestResponseCycle) -> None:
        self._cycle = cycle

    @classmethod
    def of(cls, send: Send) -> DirectWriter | None:
        """A writer for the response `send` belongs to, once its headers are sent."""
        cycle = response_cycle(send)
        return None if cycle is None else cls(cycle)

    def write(self, framed: bytes) -> bool:
        """Write an already framed chunk; False when it must go through `send` instead.

        A paused transport means the client reads slowly: the caller then waits for
        it through `send`, which is where uvicorn applies its flow control. A closing
        or failing transport also answers False.
        """
        cycle = self._cycle
        if cycle.flow.write_paused or cycle.disconnected or cycle.response_complete:
            return False
        transport = cycle.transport
        if transport.is_closing():
            return False
        try:
            transport.write(framed)
        except Exception:
            # Never into the hub's loop: the ASGI path will find the connection gone.
            return False
        return True

    def close_when_unacknowledged(self, seconds: float) -> None:
        """Have the kernel drop the connection when sent data stays unacknowledged this long.

        A client that vanished without a FIN (a dead NAT entry, a pulled cable) never
        fills the socket buffer with heartbeats alone, so no write ever blocks; the
        TCP user timeout is what notices it.
        """
        sock = self._cycle.transport.get_extra_info("socket")
        option = getattr(socket, "TCP_USER_TIMEOUT", None)
        if sock is None or option is None:
            return
        try:
            sock.setsockopt(socket.IPPROTO_TCP, option, int(seconds * 1000))
        except OSError as exc:
            log.debug("could not set TCP_USER_TIMEOUT: %s", exc)
