"""The `herald` command.

    herald serve [--demo]          the HTTP service (with the demo producers)
    herald worker NAME             one producer worker: stocks, logs, online, typewriter
    herald publish TOPIC DATA      publish one event over HTTP
    herald tail TOPIC…             print a subscription's events as they arrive
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Iterable, Sequence

import uvicorn
from pydantic import ValidationError

# Imported for its effect: uvicorn's exit handler must be patched before uvicorn runs.
import service.shutdown  # noqa: F401
from service.settings import Settings

ENV_PREFIX = "HERALD_"


def main(argv: Sequence[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        serve(args, parser)


def serve(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    # Flags become environment variables so that every uvicorn worker process,
    # which builds its own app, reads the same settings.
    for name in Settings.model_fields:
        value = getattr(args, name)
        if value is not None:
            os.environ[ENV_PREFIX + name.upper()] = str(value)
    try:
        settings = Settings()
    except ValidationError as exc:
        parser.exit(2, f"herald: invalid settings:\n{exc}\n")
    if settings.redis_url is None and settings.workers > 1:
        parser.exit(2, "herald: --workers > 1 needs HERALD_REDIS_URL (workers share Redis)\n")
    # uvicorn re-raises the signal that stopped it; after a graceful stop, exit 0.
    for stop in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop, lambda *_: sys.exit(0))
    uvicorn.run(
        "service.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=int(settings.shutdown_timeout_seconds),
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="herald", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve_cmd = commands.add_parser("serve", help="run the HTTP service")
    _add_settings_flags(serve_cmd, Settings.model_fields)
    return parser


def _add_settings_flags(parser: argparse.ArgumentParser, names: Iterable[str]) -> None:
    """One `--flag` per setting, named like its `HERALD_` variable."""
    for name in names:
        field = Settings.model_fields[name]
        parser.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            default=None,
            metavar=name.upper(),
            help=f"{field.description} Env {ENV_PREFIX}{name.upper()}; default {field.default}.",
        )


if __name__ == "__main__":
    main(sys.argv[1:])
