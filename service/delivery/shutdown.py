"""Whether the server was told to stop, so that streams can end cleanly before it does.

uvicorn keeps its stop flag to itself and, in a stream, waits for the stream to end
before it stops. So when the app starts, `watch()` wraps the handlers uvicorn installed
for SIGTERM and SIGINT: the signal raises this module's flag, then reaches uvicorn. It
runs inside each process that serves: with `--workers N` uvicorn installs its handlers in
every worker process, before the app's startup, and only there.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_requested = False


def requested() -> bool:
    return _requested


def watch() -> None:
    """Raise the flag on SIGTERM or SIGINT, before the handler that is installed now."""
    # Python runs signal handlers on the main thread only, and only it may set them.
    if threading.current_thread() is not threading.main_thread():
        return
    for number in _SIGNALS:
        handler = signal.getsignal(number)
        if callable(handler) and not isinstance(handler, _Flagging):
            signal.signal(number, _Flagging(handler))


class _Flagging:
    """A signal handler that raises the flag, then calls the one it replaced."""

    def __init__(self, then: Any) -> None:
        self._then = then

    def __call__(self, number: int, frame: FrameType | None) -> None:
        global _requested
        _requested = True
        self._then(number, frame)
