"""A seconds-long run of the benchmark, so it cannot rot; no timing is asserted."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NCHAN_MODULE = Path("/usr/lib/nginx/modules/ngx_nchan_module.so")
NCHAN = shutil.which("nginx") is not None and NCHAN_MODULE.exists()

pytestmark = pytest.mark.integration


def test_the_quick_benchmark_runs_every_shape_losing_nothing(tmp_path: Path) -> None:
    if not NCHAN and os.environ.get("CI") != "true":
        pytest.skip("nginx with the Nchan module is not installed (scripts/install adds it)")
    out = tmp_path / "bench.json"
    run = subprocess.run(
        [sys.executable, "scripts/bench_vs_nchan.py", "--quick", "--json", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results = json.loads(out.read_text())["results"]

    assert set(results) == {"herald", "nchan", "baseline"}
    # The baseline starts each XREAD at "$", so it may miss what was published before
    # its first read: that is the design it stands for, so it only has to have run.
    assert results["baseline"]["broadcast"]["burst"]["delivered"] > 0
    for server in ("herald", "nchan"):
        burst = results[server]["broadcast"]["burst"]
        assert burst["delivered"] == burst["expected"], server
        assert (burst["gaps"], burst["dups"]) == (0, 0), server
        assert results[server]["topics"]["lost"] == 0, server
        storm = results[server]["storm"]
        assert storm["caught_up"] == storm["clients"]
        assert (storm["gaps"], storm["dups"]) == (0, 0)
        assert results[server]["idle"]["open"] == results[server]["idle"]["conns"]
    token_runs = [("herald", "post"), ("herald", "stream"), ("nchan", "post")]
    for server, mode in token_runs:
        (step,) = results[server][f"tokens_{mode}"]["steps"]
        assert (step["lost"], step["gaps"], step["dups"]) == (0, 0, 0), (server, mode, step)
        assert step["delivered"] == step["published"] == step["tokens"], (server, mode, step)
        assert step["publish_errors"] == 0, (server, mode, step)
        for figure in ("p50_ms", "p99_ms", "server_us_per_token", "server_cpu_share"):
            assert isinstance(step[figure], int | float), (server, mode, figure)
    ingest_runs = [("herald", "post"), ("herald", "batch"), ("herald", "stream"), ("nchan", "post")]
    for server, mode in ingest_runs:
        ingest = results[server][f"ingest_{mode}"]
        assert ingest["published"] == ingest["events"], (server, mode, ingest)
        assert ingest["publish_errors"] == 0, (server, mode, ingest)
        for figure in ("events_per_s", "server_us_per_event", "server_cpu_share"):
            assert isinstance(ingest[figure], int | float), (server, mode, figure)


def test_the_quick_benchmark_runs_servers_with_two_worker_processes(tmp_path: Path) -> None:
    if not NCHAN and os.environ.get("CI") != "true":
        pytest.skip("nginx with the Nchan module is not installed (scripts/install adds it)")
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("two worker processes are pinned to two cores")
    out = tmp_path / "bench.json"
    run = subprocess.run(
        [sys.executable, "scripts/bench_vs_nchan.py", "--quick", "--json", str(out),
         "--servers", "herald", "nchan", "--shapes", "broadcast", "tokens", "--workers", "2"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results = json.loads(out.read_text())["results"]

    assert set(results) == {"herald x2", "nchan x2"}
    for server in results.values():
        burst = server["broadcast"]["burst"]
        assert burst["delivered"] == burst["expected"]
        assert (burst["gaps"], burst["dups"]) == (0, 0)
        # Every subscriber is held by one of the two workers.
        conns = server["broadcast"]["conns_per_worker"]
        assert len(conns) == 2 and sum(conns) == server["broadcast"]["subscribers"]
        assert len(burst["worker_cpu_shares"]) == 2
    for server, mode in [("herald x2", "post"), ("herald x2", "stream"), ("nchan x2", "post")]:
        (step,) = results[server][f"tokens_{mode}"]["steps"]
        assert (step["lost"], step["gaps"], step["dups"]) == (0, 0, 0), (server, mode, step)
        assert step["delivered"] == step["published"] == step["tokens"], (server, mode, step)
