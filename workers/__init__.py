"""Producer workers: each publishes one kind of live data into Herald.

stocks      stock ticks, a random walk per symbol      event `tick` on stocks.<SYMBOL>
logs        lines of files, followed like `tail -F`     event `log` on logs.<name>
online      subscriber counts summed over replicas     event `online` on presence.<topic>
typewriter  texts streamed token by token, or an       events `token`, `done` on chat.<id>
            LLM's answers relayed (workers.relay)      (relayed: `done` or `failed`)
"""

from __future__ import annotations

import importlib

from workers.runtime import WorkerMain

NAMES = ("stocks", "logs", "online", "typewriter")


def load(name: str) -> WorkerMain:
    """The `run` function of the worker called `name`."""
    if name not in NAMES:
        raise ValueError(f"no worker {name!r}; the workers are {', '.join(NAMES)}")
    main: WorkerMain = importlib.import_module(f"workers.{name}").run
    return main
