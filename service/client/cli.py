"""The `herald` command.

herald serve [--demo]          the HTTP service (with the demo producers)
herald worker NAME             one producer worker: stocks, logs, online, typewriter
herald publish TOPIC DATA      publish one event over HTTP
herald publish --ndjson        publish stdin's events (one JSON object a line) as they come
herald tail TOPIC…             print a subscription's events as they arrive
herald check                   publish one event and read it back over SSE
herald token --publish P …     make a JWT for HERALD_JWT_KEY's deployment

Exit status: 0 done; 1 the command ran and failed (an event refused, by Herald or by
the checks before sending; Herald unreachable); 2 the command itself is wrong (unknown
or missing arguments, invalid settings).
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
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import uvicorn
from pydantic import JsonValue, SecretStr, ValidationError

from service import metrics
from service.client.check import DEFAULT_TIMEOUT, CheckFailed, round_trip
from service.client.publisher import AsyncPublisher, ClientError, LineRejected, Publisher, Rejected
from service.client.tail import Tail, format_event, start_position
from service.client.tokens import make_token, parse_duration
from service.models import PublishEvent, StreamPublished
from service.settings import Settings
from workers import NAMES

ENV_PREFIX = "HERALD_"
DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_TOKEN_TTL = "1h"
CLIENT_SETTINGS = ("url", "token")
"""What `herald publish`, `tail`, `check` and the workers over HTTP talk to."""
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
    elif args.command == "token":
        token(args, parser)


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
            "service.web.app:create_app",
            factory=True,
            # By name: every worker process imports it and reads the header timeout itself.
            http="service.transport.header_timeout:HeaderTimeoutProtocol",
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
            parser.exit(1, f"herald publish: DATA is not valid JSON: {exc}\n")
    try:
        with Publisher(url, token=token) as publisher:
            published = publisher.publish(
                args.topic, data, args.event or "message", idempotency_key=args.idempotency_key
            )
    except ValidationError as exc:
        # The same event refused by Herald exits 1: so does one refused before sending.
        parser.exit(1, f"herald publish: invalid event: {_problems(exc)}\n")
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


def token(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """`herald token`: a JWT for the deployment whose key is HERALD_JWT_KEY (or --key-file)."""
    if not args.publish and not args.subscribe:
        parser.exit(2, "herald token: give at least one --publish or --subscribe pattern\n")
    try:
        ttl = None if args.ttl == "never" else parse_duration(args.ttl)
    except ValueError as exc:
        parser.exit(2, f"herald token: --ttl: {exc}\n")
    if ttl == 0:
        parser.exit(2, "herald token: --ttl 0 makes a token that has already expired\n")
    key = None
    if args.key_file is not None:
        try:
            # `openssl rand -base64 32 > key` ends the secret with a line break.
            key = SecretStr(Path(args.key_file).read_text().rstrip("\r\n"))
        except (OSError, UnicodeDecodeError) as exc:
            parser.exit(2, f"herald token: cannot read --key-file: {exc}\n")
    try:
        settings = Settings() if key is None else Settings(jwt_key=key)
    except ValidationError as exc:
        parser.exit(2, f"herald token: invalid settings:\n{settings_problems(exc)}\n")
    if settings.jwt_key is None:
        parser.exit(
            2,
            "herald token: no key: set HERALD_JWT_KEY (the HS256 secret Herald has) or give "
            "--key-file PATH (for RS256/ES256, the private key)\n",
        )
    try:
        made = make_token(
            settings.jwt_key.get_secret_value(),
            settings.jwt_algorithm,
            publish=args.publish,
            subscribe=args.subscribe,
            ttl=ttl,
            now=int(time.time()),
            subject=args.subject,
        )
    except ValueError as exc:
        parser.exit(2, f"herald token: {exc}\n")
    print(made)


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
    serve_cmd = commands.add_parser(
        "serve",
        help="run the HTTP service",
        description="Run Herald. Every flag is also an environment variable: "
        "--heartbeat-seconds 5 is HERALD_HEARTBEAT_SECONDS=5.",
        epilog="The producer workers' settings (--stocks-*, --logs-*, --online-*, "
        "--typewriter-*) are accepted too, for --demo: `herald worker --help` lists them.",
    )
    _add_settings_flags(serve_cmd, _server_settings())
    _add_settings_flags(serve_cmd, _worker_settings(), shown=False)
    _add_settings_flags(serve_cmd, CLIENT_SETTINGS, shown=False)
    worker_cmd = commands.add_parser(
        "worker",
        help="run one producer worker",
        description="Run one producer worker. Every flag is also an environment variable: "
        "--stocks-rate 5 is HERALD_STOCKS_RATE=5.",
        epilog="The service's settings (`herald serve --help`) are accepted too; a worker "
        "uses those it shares with the service, such as --retention and --topic-ttl.",
    )
    worker_cmd.add_argument("name", choices=NAMES, help="which worker")
    _add_settings_flags(
        worker_cmd.add_argument_group("where it publishes"),
        ["redis_url", *CLIENT_SETTINGS, "log_level"],
    )
    for name in NAMES:
        _add_settings_flags(
            worker_cmd.add_argument_group(f"herald worker {name}"), _worker_settings(name)
        )
    _add_settings_flags(
        worker_cmd,
        [n for n in _server_settings() if n not in ("redis_url", "log_level")],
        shown=False,
    )
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
    token_cmd = commands.add_parser(
        "token",
        help="make a JWT that grants publish and subscribe patterns",
        description="Print a JWT that Herald accepts, signed with HERALD_JWT_KEY (the HS256 "
        "secret) and HERALD_JWT_ALGORITHM, or with --key-file. A pattern is a topic name in "
        "which * stands for any run of characters.",
        epilog="example: export HERALD_TOKEN=$(herald token --publish 'chat.*' "
        "--subscribe 'chat.*' --ttl 1h)",
    )
    token_cmd.add_argument(
        "--publish", action="append", default=[], metavar="PATTERN", help="repeatable"
    )
    token_cmd.add_argument(
        "--subscribe", action="append", default=[], metavar="PATTERN", help="repeatable"
    )
    token_cmd.add_argument(
        "--ttl",
        default=DEFAULT_TOKEN_TTL,
        metavar="DURATION",
        help="how long it is valid: seconds, or 90s, 15m, 12h, 30d; never for no expiry; "
        f"default {DEFAULT_TOKEN_TTL}",
    )
    token_cmd.add_argument(
        "--subject", metavar="SUB", help="the `sub` claim: who publishes (rate limits, keys)"
    )
    token_cmd.add_argument(
        "--key-file",
        metavar="PATH",
        help="sign with the key in this file instead of HERALD_JWT_KEY: the HS256 secret, "
        "or the RS256/ES256 private key (PEM)",
    )
    return parser


def _add_client_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help=f"Herald's URL; env HERALD_URL, default {DEFAULT_URL}")
    parser.add_argument("--token", help="bearer token (a JWT); env HERALD_TOKEN")


def _worker_settings(worker: str | None = None) -> list[str]:
    """The settings of one producer worker (`stocks_…`), or of all of them."""
    prefixes = tuple(f"{name}_" for name in ([worker] if worker else NAMES))
    return [name for name in Settings.model_fields if name.startswith(prefixes)]


def _server_settings() -> list[str]:
    """The settings of `herald serve`: all but the workers' and the client's."""
    others = {*_worker_settings(), *CLIENT_SETTINGS}
    return [name for name in Settings.model_fields if name not in others]


def _add_settings_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    names: Iterable[str],
    shown: bool = True,
) -> None:
    """One `--flag` per setting, named like its `HERALD_` variable; accepted but left out
    of the help unless `shown`."""
    for name in names:
        field = Settings.model_fields[name]
        flag = "--" + name.replace("_", "-")
        # argparse expands %-formats in help; descriptions say "1%".
        described = f"{field.description} Env {ENV_PREFIX}{name.upper()}; default {field.default}."
        about = described.replace("%", "%%") if shown else argparse.SUPPRESS
        if field.annotation is bool:
            parser.add_argument(flag, dest=name, action="store_const", const="true", help=about)
        else:
            parser.add_argument(flag, dest=name, default=None, metavar=name.upper(), help=about)


if __name__ == "__main__":
    main(sys.argv[1:])
