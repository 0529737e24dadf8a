"""A throwaway redis-server (no persistence), the two commands the benchmark sends, its CPU."""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path

from .procs import BenchError, Process, cpu_seconds, pinned, start_on_free_port


class RedisServer:
    def __init__(self, workdir: Path, core: int | None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("bench: redis-server is not installed (apt-get install redis-server)")

        def start(port: int) -> Process:
            self.port = port
            cmd = [
                binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--protected-mode", "no", "--dir", str(workdir),
            ]  # fmt: skip
            process = Process("redis-server", pinned(cmd, core), workdir / f"redis-{port}.log")
            self._wait_ready(process)
            return process

        self.process = start_on_free_port(start)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def _wait_ready(self, process: Process, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if process.bound(self.port) and self.command("PING") == b"+PONG":
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise BenchError("redis-server did not answer PING")

    def command(self, *args: str) -> bytes:
        """One command; the reply's first line, or a bulk reply's payload."""
        request = f"*{len(args)}\r\n" + "".join(f"${len(a)}\r\n{a}\r\n" for a in args)
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as conn:
            conn.sendall(request.encode())
            reply = conn.makefile("rb")
            first = reply.readline().rstrip(b"\r\n")
            if not first.startswith(b"$"):
                return first
            return reply.read(int(first[1:]))

    def command_calls(self) -> int:
        """Commands Redis has executed, from INFO commandstats, the INFO calls left out."""
        total = 0
        for line in self.command("INFO", "commandstats").decode().splitlines():
            if line.startswith("cmdstat_") and not line.startswith("cmdstat_info:"):
                total += int(line.split("calls=", 1)[1].split(",", 1)[0])
        return total

    def cpu(self) -> float:
        return cpu_seconds(self.process.pid)

    def stop(self) -> None:
        self.process.stop()
