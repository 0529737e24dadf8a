"""Compiles loadgen.c with gcc at bench time, once per version of the source."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

SOURCE = Path(__file__).with_name("loadgen.c")
CFLAGS = ["-O2", "-std=c11", "-Wall", "-Wextra", "-Werror"]


def build_loadgen(cache_dir: Path) -> Path:
    """The path of a compiled loadgen in `cache_dir`, named after a hash of its source."""
    gcc = shutil.which("gcc")
    if gcc is None:
        raise SystemExit("bench: gcc is needed to build the load generator (apt-get install gcc)")
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join(CFLAGS).encode()).hexdigest()[:12]
    binary = cache_dir / f"loadgen-{digest}"
    if binary.exists():
        return binary
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = binary.with_suffix(f".{os.getpid()}.tmp")
    result = subprocess.run(
        [gcc, *CFLAGS, "-o", str(partial), str(SOURCE), "-lm"], capture_output=True, text=True
    )
    if result.returncode != 0:
        raise SystemExit(f"bench: building {SOURCE} failed:\n{result.stderr}")
    # A rename is atomic, so a concurrent run never executes a half-written binary.
    partial.rename(binary)
    return binary
