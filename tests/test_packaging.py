"""Herald's package as pip builds it: no warning for the user, the metadata it declares."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from tests.conftest import ROOT


def test_pip_builds_the_wheel_without_a_deprecation_warning(tmp_path: Path) -> None:
    # -v shows what the build backend prints, as a plain `pip install .` does on recent pips.
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    warnings = [
        line
        for line in output.splitlines()
        if "deprecat" in line.lower() or "BuildBackendWarning" in line
    ]
    assert warnings == []
    (wheel,) = tmp_path.glob("herald-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = archive.read(name).decode()
    assert "License-Expression: MIT" in metadata.splitlines()
