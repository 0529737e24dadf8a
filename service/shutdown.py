"""Whether the server was told to stop, so that streams can end cleanly before it does.

sse-starlette patches uvicorn's exit handler to raise this flag; `herald serve`
imports this module before uvicorn starts, so the patched handler is the one
uvicorn installs for SIGTERM and SIGINT.
"""

from __future__ import annotations

from sse_starlette.sse import AppStatus


def requested() -> bool:
    return bool(AppStatus.should_exit)
