"""The container image's install step, checked without a Docker engine."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.integration


def test_the_image_install_step_makes_a_venv_that_serves_and_passes_herald_check() -> None:
    # Builds the wheel and installs it and its dependencies from the index (pip's
    # cache helps), as the Dockerfile does; see the script for what it checks.
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "check_image_install")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ok: herald check: ok: published check." in done.stdout
    assert done.stdout.endswith("s\n") and "passed in" in done.stdout
