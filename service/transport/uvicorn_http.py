"""Everything Herald relies on in uvicorn's HTTP/1.1 (httptools) internals, in one place.

uvicorn documents none of it, so `pyproject.toml` pins uvicorn to the releases it was
checked on, and `tests/transport/test_uvicorn_http.py` checks each item below against a real
uvicorn server: an upgrade that changes any of it fails there by name.

- **The protocol**, `HttpToolsProtocol`, which `service.transport.header_timeout` subclasses: the
  hooks `connection_made`, `on_message_begin`, `on_headers_complete`,
  `on_response_complete` and `connection_lost`; the attributes `loop`, `transport`,
  `timeout_keep_alive_task` (set exactly while a kept-alive connection waits for its next
  request) and `server_state.default_headers`; and `STATUS_LINE`.
- **The response cycle** behind an ASGI `send` (`send.__self__`, a `RequestResponseCycle`),
  whose socket `service.transport.direct` writes body chunks to: `transport`, `flow.write_paused`,
  `disconnected`, `response_complete` and `chunked_encoding` (True once a response
  without a length has started).
- **A whole answer** (`service.transport.direct.answer`, for publishes): on a cycle reached straight
  from `send` (no middleware between), `scope`, `access_log`, `default_headers`,
  `keep_alive`, `message_event`, `on_response`, `response_started` and
  `waiting_for_100_continue`, and the state uvicorn's own `send` leaves after a complete
  response, which `answer` reproduces.
- **`send` itself** is a coroutine that writes before its first suspension and suspends
  only while the transport is paused, which `service.transport.send_now` counts on for speed (it
  stays correct without it).

Starlette's CORSMiddleware wraps `send` in a partial that only touches the response
start; `response_cycle` looks through it.
"""

from __future__ import annotations

import functools
import logging

from starlette.types import Send
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

__all__ = [
    "STATUS_LINE",
    "HttpToolsProtocol",
    "RequestResponseCycle",
    "answer_cycle",
    "response_cycle",
]

CYCLE_ATTRIBUTES = ("transport", "flow", "disconnected", "response_complete", "chunked_encoding")
"""What `service.transport.direct` reads on a response cycle."""
ANSWER_ATTRIBUTES = (
    *CYCLE_ATTRIBUTES,
    "scope",
    "access_log",
    "default_headers",
    "keep_alive",
    "message_event",
    "on_response",
    "response_started",
    "waiting_for_100_continue",
)
"""What `service.transport.direct.answer` reads or sets on a response cycle."""

log = logging.getLogger("herald")


def response_cycle(send: Send) -> RequestResponseCycle | None:
    """The uvicorn response `send` belongs to, while its body may be written directly:
    chunked and not complete. None under any other server or protocol."""
    while isinstance(send, functools.partial) and "send" in send.keywords:
        send = send.keywords["send"]
    cycle = getattr(send, "__self__", None)
    if type(cycle) is not RequestResponseCycle:
        return None
    if not all(hasattr(cycle, name) for name in CYCLE_ATTRIBUTES):
        _warn_changed()
        return None
    if cycle.chunked_encoding is not True or cycle.response_complete:
        return None
    return cycle


def answer_cycle(send: Send) -> RequestResponseCycle | None:
    """The uvicorn response `send` is the method of, with no middleware between (which
    may add headers), when it has all a whole answer needs. None otherwise."""
    cycle = getattr(send, "__self__", None)
    if type(cycle) is not RequestResponseCycle:
        return None
    if not all(hasattr(cycle, name) for name in ANSWER_ATTRIBUTES):
        _warn_changed()
        return None
    return cycle


@functools.cache
def _warn_changed() -> None:
    log.warning(
        "this uvicorn's response cycle lacks one of %s: answers and streams fall back to "
        "the ASGI send (slower); see service/transport/uvicorn_http.py",
        ", ".join(ANSWER_ATTRIBUTES),
    )
