"""The README documents what a user can set and run."""

from __future__ import annotations

import re

import pytest

from service.settings import Settings
from tests.conftest import ROOT
from workers import NAMES

README = (ROOT / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("name", sorted(Settings.model_fields))
def test_every_setting_is_documented(name: str) -> None:
    assert f"`HERALD_{name.upper()}`" in README


@pytest.mark.parametrize("name", NAMES)
def test_every_worker_is_documented(name: str) -> None:
    assert f"`herald worker {name}`" in README


def test_the_readme_opens_with_the_two_set_up_commands() -> None:
    first_block = re.search(r"```sh\n(.*?)```", README, re.S)
    assert first_block is not None
    assert first_block.group(1).splitlines() == [
        "python3 -m venv .venv && .venv/bin/pip install -q -e . && .venv/bin/herald serve --demo",
        "scripts/test",
    ]
