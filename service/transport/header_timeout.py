"""A deadline on request headers, like nginx's `client_header_timeout` (slowloris).

uvicorn bounds neither a new connection's first request headers nor, once their first
byte arrived, a kept-alive connection's next ones (its keep-alive timer stops at any
byte). A client sending a header line every few seconds would hold its socket forever,
and enough of them exhaust the process's open files. `herald serve` runs uvicorn with
this protocol instead of its httptools one.
"""

from __future__ import annotations

import asyncio
import functools
import json

from service.settings import Settings
from service.transport.uvicorn_http import STATUS_LINE, HttpToolsProtocol


@functools.cache
def _seconds() -> float:
    # Read once per process: uvicorn's worker processes import the protocol by name and
    # get their settings from the environment that `herald serve` set.
    return Settings().header_timeout_seconds


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol; headers late by `HERALD_HEADER_TIMEOUT_SECONDS` get a 408.

    The deadline runs while the connection waits for a request: from when it opens, and
    from the end of each response it keeps alive, until the next request's headers are
    complete. Request bodies and responses (streams) are never under it, so when it
    expires no response is under way.
    """

    _header_deadline: asyncio.TimerHandle | None = None
    _request_begun = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_deadline()

    def on_message_begin(self) -> None:
        self._request_begun = True
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._stop_deadline()
        self._request_begun = False
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # uvicorn arms its keep-alive timer exactly when the connection now waits for a
        # request: not when it closes, nor when a pipelined request is already running.
        if self.timeout_keep_alive_task is not None:
            self._start_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_deadline()
        super().connection_lost(exc)

    def _start_deadline(self) -> None:
        self._stop_deadline()
        self._header_deadline = self.loop.call_later(_seconds(), self._headers_late)

    def _stop_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_late(self) -> None:
        self._header_deadline = None
        if self.transport.is_closing():
            return
        # A connection that sent nothing is closed silently, as uvicorn's keep-alive
        # timeout does: a 408 there could cross a request the client is just sending.
        if self._request_begun:
            self.transport.write(self._request_timeout())
        self.transport.close()

    def _request_timeout(self) -> bytes:
        # JSON like every other Herald error.
        detail = f"request headers not complete within {_seconds():g} s"
        body = json.dumps({"detail": detail}).encode()
        head = [STATUS_LINE[408]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head.append(b"content-type: application/json\r\nconnection: close\r\n")
        head.append(b"content-length: %d\r\n\r\n" % len(body))
        return b"".join([*head, body])
