"""The `herald` command.

herald serve [--demo]          the HTTP service (with the demo producers)
herald worker NAME             one producer worker: stocks, logs, online, typewriter
herald publish TOPIC DATA      publish one event over HTTP
herald publish --ndjson        publish stdin's events (one JSON object a line) as they come
herald tail TOPIC…             print a subscription's events as they arrive
herald check                   publish one event and read it back over SSE
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import BinaryIO

import uvicorn
from pydantic import JsonValue, ValidationError

from service import metrics
from service.check import DEFAULT_TIMEOUT, CheckFailed, round_trip
from service.client import AsyncPublisher, ClientError, LineRejected, Publisher, Rejected
from service.models import PublishEvent, StreamPublished
from service.settings import Settings
from service.tail import Tail, format_event, start_position
from workers import NAMES

ENV_PREFIX = "HERALD_"
DEFAULT_URL = "http://127.0.0.1:8000"
# How long the demo producers may take to stop (their own timeout is 3 s) before a SIGKILL.
_STOP_TIMEOUT_SECONDS = 10.0


def main(argv: Sequence[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        serve(args, parser)
    elif args.command == "worker":
        worker(args, parser)
    elif args.command == "publish":
        publish(args, parser)
    elif args.command == "tail":
        tail(args, parser)
    elif args.command == "check":
        check(args, parser)


def serve(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    settings = _settings(args, parser)
    if settings.redis_url is None and settings.workers > 1:
        parser.exit(
            2,
            f"herald: --workers {settings.workers} needs HERALD_REDIS_URL: the worker processes "
            "share one Redis, and the embedded fakeredis lives inside a single process\n",
        )
    if settings.redis_url is None and settings.publish_replicas:
        parser.exit(2, "herald: --publish-replicas needs HERALD_REDIS_URL (fakeredis has none)\n")
    # uvicorn re-raises the signal that stopped it; after a graceful stop, exit 0.
    for stop in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop, lambda *_: sys.exit(0))
    with contextlib.ExitStack() as beside:
        if settings.workers > 1 or metrics.MULTIPROCESS_DIR in os.environ:
            beside.enter_context(metrics.shared_across_processes())
        if settings.workers > 1 and settings.demo:
            beside.enter_context(_process(_demo_producers, "herald-demo"))
        uvicorn.run(
            "service.app:create_app",
            factory=True,
            # By name: every worker process imports it and reads the header timeout itself.
            http="service.header_timeout:HeaderTimeoutProtocol",
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            log_level=settings.log_level.lower(),
            access_log=settings.access_log,
            timeout_graceful_shutdown=int(settings.shutdown_timeout_seconds),
        )


@contextlib.contextmanager
def _process(target: Callable[[], None], name: str) -> Iterator[None]:
    """`target` in a process of its own while the block runs; SIGTERM at its end."""
    process = multiprocessing.get_context("spawn").Process(target=target, name=name)
    process.start()
    try:
        yield
    finally:
        process.terminate()
        process.join(_STOP_TIMEOUT_SECONDS)
        if process.is_alive():
            process.kill()
            process.join()


def _demo_producers() -> None:
    """`--demo` with several worker processes: the producers run once, here, not in each."""
    from workers import demo
    from workers.runtime import run_process

    settings = Settings()
    _configure_logging(settings.log_level)
    asyncio.run(run_process("demo", demo.run, settings))


def worker(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    from workers import load
    from workers.runtime import run_process

    settings = _settings(args, parser)
    _configure_logging(settings.log_level)
    asyncio.run(run_process(args.name, load(args.name), settings))


def publish(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    url, token = _target(args, parser)
    if args.ndjson:
        if args.topic is not None or args.event is not None or args.json:
            parser.exit(
                2, "herald publish: with --ndjson each line is a whole event: no TOPIC or DATA\n"
            )
        publish_lines(url, token, args.idempotency_key, parser)
        return
    if args.data is None:
        parser.exit(2, "herald publish: TOPIC and DATA are required (or --ndjson)\n")
    # `echo text | herald publish t -` means "text", not "text" and a line break.
    text = sys.stdin.read().removesuffix("\n") if args.data == "-" else args.data
    data: JsonValue = text
    if args.json:
        try:
            data = json.loads(text)
        except ValueError as exc:
            parser.exit(2, f"herald publish: DATA is not valid JSON: {exc}\n")
    try:
        with Publisher(url, token=token) as publisher:
            published = publisher.publish(
                args.topic, data, args.event or "message", idempotency_key=args.idempotency_key
            )
    except ValidationError as exc:
        parser.exit(2, f"herald publish: invalid event: {_problems(exc)}\n")
    except ValueError as exc:
        parser.exit(2, f"herald publish: {exc}\n")
    except ClientError as exc:
        parser.exit(1, f"herald publish: {exc}\n")
    print(json.dumps(published.model_dump()))


def publish_lines(
    url: str, token: str | None, key: str | None, parser: argparse.ArgumentParser
) -> None:
    """`herald publish --ndjson`: stdin's events in one streaming publish, each sent as
    soon as its line is read."""
    try:
        published = asyncio.run(_stream_lines(sys.stdin.buffer, url, token, key))
    except _BadLine as exc:
        parser.exit(1, f"herald publish: {exc}\n")
    except ClientError as exc:
        parser.exit(1, f"herald publish: {exc}\n")
    except ValueError as exc:
        parser.exit(2, f"herald publish: {exc}\n")
    print(json.dumps(published.model_dump()))


class _BadLine(Exception):
    """An input line that is not an event; the events before it were published."""


async def _stream_lines(
    source: BinaryIO, url: str, token: str | None, key: str | None
) -> StreamPublished:
    # The input line of each event sent, for Herald's line numbers count events only.
    numbers: list[int] = []
    number = 0
    bad = ""
    async with AsyncPublisher(url, token=token) as publisher:
        stream = publisher.stream(idempotency_key=key)
        try:
            async with stream:
                # A thread reads, so that a pipe or a file both work and the loop runs on.
                while line := await asyncio.to_thread(source.readline):
                    number += 1
                    if not line.strip():
                        continue
                    try:
                        event = PublishEvent.model_validate_json(line)
                    except ValidationError as exc:
                        bad = f"line {number} is not a valid event: {_problems(exc)}"
                        break
                    await stream.send(event.topic, event.data, event.event)
                    numbers.append(number)
        except LineRejected as exc:
            # Past the last event is the input's end (a key reused for a longer body).
            line_number = numbers[exc.line - 1] if exc.line <= len(numbers) else number + 1
            raise LineRejected(exc.status, exc.detail, line_number, exc.count) from None
    if bad:
        before = "1 event" if len(numbers) == 1 else f"{len(numbers)} events"
        raise _BadLine(f"{bad}; {before} before it published")
    return stream.result


def _problems(exc: ValidationError) -> str:
    return "; ".join(_each_problem(exc))


def tail(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    url, token = _target(args, parser)
    position = start_position(args.topics) if args.from_start else args.last_event_id
    try:
        follower = Tail(url, args.topics, token=token, last_event_id=position)
    except ValueError as exc:
        parser.exit(2, f"herald tail: {exc}\n")
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        follower.run(
            lambda event: print(format_event(event, args.json), flush=True),
            lambda notice: print(f"herald tail: {notice}", file=sys.stderr, flush=True),
        )
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:
        # The reader left (`herald tail … | head`): stdout cannot be flushed at exit either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except Rejected as exc:
        parser.exit(1, f"herald tail: {exc}\n")


def check(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    url, token = _target(args, parser)
    try:
        print(round_trip(url, token=token, timeout=args.timeout))
    except ValueError as exc:
        parser.exit(2, f"herald check: {exc}\n")
    except CheckFailed as exc:
        parser.exit(1, f"herald check: {exc}\n")


def _target(args: argparse.Namespace, parser: argparse.ArgumentParser) -> tuple[str, str | None]:
    """Herald's URL and token: the flags, else HERALD_URL and HERALD_TOKEN."""
    try:
        settings = Settings()
    except ValidationError as exc:
        parser.exit(2, f"herald: invalid settings:\n{settings_problems(exc)}\n")
    token = args.token or (settings.token.get_secret_value() if settings.token else None)
    return args.url or settings.url or DEFAULT_URL, token


def _settings(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Settings:
    # Flags become environment variables so that every uvicorn worker process,
    # which builds its own app, reads the same settings.
    for name in Settings.model_fields:
        value = getattr(args, name)
        if value is not None:
            os.environ[ENV_PREFIX + name.upper()] = str(value)
    try:
        return Settings()
    except ValidationError as exc:
        parser.exit(2, f"herald: invalid settings:\n{settings_problems(exc)}\n")


def settings_problems(exc: ValidationError) -> str:
    """One line per problem."""
    return "\n".join(f"  {problem}" for problem in _each_problem(exc, unnamed="settings: "))


def _each_problem(exc: ValidationError, unnamed: str = "") -> Iterator[str]:
    """`where: what` for each of pydantic's errors, without the values given: they may
    hold secrets."""
    for e in exc.errors(include_url=False, include_input=False):
        where = ".".join(map(str, e["loc"]))
        yield f"{where}: {e['msg']}" if where else unnamed + e["msg"]


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="herald", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve_cmd = commands.add_parser("serve", help="run the HTTP service")
    _add_settings_flags(serve_cmd, Settings.model_fields)
    worker_cmd = commands.add_parser("worker", help="run one producer worker")
    worker_cmd.add_argument("name", choices=NAMES, help="which worker")
    _add_settings_flags(worker_cmd, Settings.model_fields)
    publish_cmd = commands.add_parser(
        "publish",
        help="publish one event, or stdin's events as they come, over HTTP",
        usage="%(prog)s [--event E] [--json] [options] TOPIC DATA\n"
        "       %(prog)s --ndjson [options] < events.ndjson",
    )
    publish_cmd.add_argument("topic", metavar="TOPIC", nargs="?")
    publish_cmd.add_argument(
        "data", metavar="DATA", nargs="?", help="the event's data; - reads stdin"
    )
    publish_cmd.add_argument("--event", help="event type; default message")
    publish_cmd.add_argument("--json", action="store_true", help="DATA is JSON, sent as such")
    publish_cmd.add_argument(
        "--ndjson",
        action="store_true",
        help='stream stdin: one event a line, {"topic", "event", "data"}, sent as it is read',
    )
    publish_cmd.add_argument(
        "--idempotency-key", metavar="K", help="retry-safe key; default a fresh UUID"
    )
    _add_client_flags(publish_cmd)
    tail_cmd = commands.add_parser("tail", help="print a subscription's events as they arrive")
    tail_cmd.add_argument("topics", nargs="+", metavar="TOPIC")
    start = tail_cmd.add_mutually_exclusive_group()
    start.add_argument("--from-start", action="store_true", help="replay the retained history")
    start.add_argument("--last-event-id", metavar="ID", help="resume after this event id")
    tail_cmd.add_argument("--json", action="store_true", help="one JSON object per event")
    _add_client_flags(tail_cmd)
    check_cmd = commands.add_parser("check", help="publish one event and read it back over SSE")
    check_cmd.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="S",
        help=f"seconds the whole check may take; default {DEFAULT_TIMEOUT:g}",
    )
    _add_client_flags(check_cmd)
    return parser


def _add_client_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help=f"Herald's URL; env HERALD_URL, default {DEFAULT_URL}")
    parser.add_argument("--token", help="bearer token (a JWT); env HERALD_TOKEN")


def _add_settings_flags(parser: argparse.ArgumentParser, names: Iterable[str]) -> None:
    """One `--flag` per setting, named like its `HERALD_` variable."""
    for name in names:
        field = Settings.model_fields[name]
        flag = "--" + name.replace("_", "-")
        about = f"{field.description} Env {ENV_PREFIX}{name.upper()}; default {field.default}."
        if field.annotation is bool:
            parser.add_argument(flag, dest=name, action="store_const", const="true", help=about)
        else:
            parser.add_argument(flag, dest=name, default=None, metavar=name.upper(), help=about)


if __name__ == "__main__":
    main(sys.argv[1:])
