"""2,000 clients reconnecting at once with Last-Event-ID, driven by the benchmark's C client."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


def test_a_reconnect_storm_of_2000_clients_is_served_whole(tmp_path: Path) -> None:
    out = tmp_path / "storm.json"
    run = subprocess.run(
        [
            sys.executable,
            "scripts/bench_vs_nchan.py",
            "--servers",
            "herald",
            "--shapes",
            "storm",
            "--storm-clients",
            "2000",
            "--json",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    storm = json.loads(out.read_text())["results"]["herald"]["storm"]

    assert (storm["connected"], storm["failed"], storm["http_errors"]) == (2000, 0, 0)
    assert storm["caught_up"] == 2000
    assert storm["replayed"] == storm["expected"] == 2000 * 100
    assert (storm["gaps"], storm["dups"]) == (0, 0)
