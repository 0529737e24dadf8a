"""`herald serve --demo`: every producer at once, inside the service, for the demo page.

Stock ticks, a typewriter on chat.demo, online counts, and a made-up web server's
access log (rotated every few hundred lines) followed on logs.demo.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import tempfile
import time
from pathlib import Path

from service.settings import Settings
from workers import NAMES, load
from workers.runtime import Runtime, run_until_stopped

_LINES_PER_FILE = 300
_PATHS = ("/", "/api/quotes/AAPL", "/api/quotes/NVDA", "/api/chat", "/events", "/login")
_STATUSES = (200, 200, 200, 200, 200, 204, 301, 304, 404, 500)


async def run(rt: Runtime) -> None:
    directory = Path(tempfile.mkdtemp(prefix="herald-demo-"))
    access_log = directory / "access.log"
    settings = rt.settings.model_copy(update={"logs_files": f"demo={access_log}"})
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(run_until_stopped(_write_access_log, _child(rt, "web", settings)))
            for name in NAMES:
                runtime = _child(rt, name, settings)
                group.create_task(run_until_stopped(load(name), runtime), name=f"demo-{name}")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _child(rt: Runtime, name: str, settings: Settings) -> Runtime:
    return Runtime(f"demo-{name}", settings, rt.sink, rt.store, rt.stopping)


def access_line(rng: random.Random, now: float) -> str:
    """One line in the combined log format, with the response time at the end."""
    client = f"203.0.113.{rng.randint(1, 254)}"
    stamp = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now))
    status = rng.choice(_STATUSES)
    size = 0 if status in (204, 304) else rng.randint(120, 9000)
    return (
        f'{client} - - [{stamp}] "GET {rng.choice(_PATHS)} HTTP/1.1" {status} {size} '
        f"{rng.lognormvariate(-4.5, 0.8):.3f}\n"
    )


async def _write_access_log(rt: Runtime) -> None:
    """Appends lines to the log and rotates it (rename, new file), as logrotate would."""
    path = Path(rt.settings.logs_files.partition("=")[2])
    rng = random.Random()
    written = 0
    while True:
        written += 1
        _append(path, access_line(rng, time.time()), rotate=written % _LINES_PER_FILE == 0)
        await rt.sleep(rng.expovariate(2.5))


def _append(path: Path, line: str, rotate: bool) -> None:
    # A small append to a local file: cheaper than a thread hop.
    with path.open("a", encoding="utf-8") as log:
        log.write(line)
    if rotate:
        path.replace(path.with_suffix(".log.1"))
