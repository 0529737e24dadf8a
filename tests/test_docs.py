"""The documentation site builds strictly, and says what the code does."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from pydantic.fields import FieldInfo

from service.metrics import Metrics
from service.settings import Settings
from tests.conftest import ROOT
from workers import NAMES

DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
CONFIGURATION = DOCS / "operations" / "configuration.md"
# A row of a settings table: | `HERALD_NAME` | default | meaning |
SETTING_ROW = re.compile(r"\| `HERALD_([A-Z0-9_]+)` \| ([^|]+) \|")


def text(page: Path) -> str:
    return page.read_text(encoding="utf-8")


def settings_rows(page: Path) -> list[tuple[str, str]]:
    """(NAME, default) from every table of `page` headed `| setting | default | …`."""
    rows: list[tuple[str, str]] = []
    in_table = False
    for line in text(page).splitlines():
        if line.startswith("| setting | default |"):
            in_table = True
        elif not line.startswith("|"):
            in_table = False
        elif in_table and (row := SETTING_ROW.match(line)):
            rows.append((row.group(1), row.group(2).strip()))
    return rows


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site as `scripts/docs` builds it: strictly, and with no network where we can
    take it away (root: a network namespace of its own), so nothing is fetched."""
    directory = tmp_path_factory.mktemp("docs") / "site"
    command = [str(ROOT / "scripts" / "docs"), "--site-dir", str(directory)]
    if os.geteuid() == 0 and shutil.which("unshare"):
        command = ["unshare", "--net", *command]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    # --strict: a broken link or anchor, or a page missing from the nav, fails the build.
    assert done.returncode == 0, done.stdout + done.stderr
    return directory


def test_the_site_builds_strictly_with_every_page(site: Path) -> None:
    assert "Herald" in (site / "index.html").read_text(encoding="utf-8")
    for page in PAGES:
        relative = page.relative_to(DOCS).with_suffix("")
        built = relative.parent if relative.name == "index" else relative
        assert (site / built / "index.html").exists(), page


def test_the_built_pages_load_nothing_from_another_site(site: Path) -> None:
    for page in site.rglob("*.html"):
        html = page.read_text(encoding="utf-8")
        external = re.findall(r'<(?:script|link|img)[^>]+(?:src|href)="(https?://[^"]+)"', html)
        assert external == [], f"{page}: {external}"


def documented_default(field: FieldInfo) -> str:
    """How a settings table writes `field`'s default."""
    value = field.default
    if value is None or value == "":
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float) and value.is_integer():
        return f"`{int(value)}`"
    if isinstance(value, list):
        return f"`{value}`"
    return f"`{value}`"


@pytest.mark.parametrize("name", sorted(Settings.model_fields))
def test_the_configuration_page_lists_every_setting_with_its_default(name: str) -> None:
    rows = dict(settings_rows(CONFIGURATION))
    assert name.upper() in rows, f"HERALD_{name.upper()} is not on {CONFIGURATION.name}"
    expected = documented_default(Settings.model_fields[name])
    assert rows[name.upper()] == expected


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(DOCS)))
def test_every_default_a_page_gives_is_the_true_one(page: Path) -> None:
    for name, default in settings_rows(page):
        field = Settings.model_fields.get(name.lower())
        assert field is not None, f"{page.name}: HERALD_{name} is no setting"
        assert default == documented_default(field), f"{page.name}: HERALD_{name}"


@pytest.mark.parametrize("name", NAMES)
def test_every_worker_is_documented(name: str) -> None:
    assert f"`herald worker {name}`" in text(DOCS / "guide" / "workers.md")


def test_every_metric_is_documented() -> None:
    page = text(DOCS / "operations" / "monitoring.md")
    for family in Metrics().registry.collect():
        name = f"{family.name}_total" if family.type == "counter" else family.name
        assert f"`{name}" in page, name


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(DOCS)))
def test_lists_and_tables_render_in_python_markdown_as_on_github(page: Path) -> None:
    """GitHub starts a list or table right after a paragraph line and nests lists by two
    spaces; Python-Markdown, which builds the site, needs a blank line and four spaces."""
    fence = False
    previous = ""
    for number, line in enumerate(text(page).splitlines(), 1):
        if line.lstrip().startswith("```"):
            fence = not fence
        if fence:
            previous = line
            continue
        where = f"{page.relative_to(DOCS)}:{number}"
        item = re.match(r"( *)(?:[-*+]|\d+\.) ", line)
        paragraph = previous.strip() and not re.match(r"\s*(?:[-*+]|\d+\.) |\s|\|", previous)
        if item and not item.group(1):
            assert not paragraph, f"{where}: a list needs a blank line before it"
        if item and item.group(1):
            assert len(item.group(1)) % 4 == 0, f"{where}: nest lists by four spaces"
        if line.startswith("|") and not previous.startswith("|"):
            assert not previous.strip(), f"{where}: a table needs a blank line before it"
        previous = line


@pytest.mark.parametrize("page", [ROOT / "README.md", *PAGES], ids=lambda p: p.name)
def test_no_link_leads_out_of_the_repository(page: Path) -> None:
    for target in re.findall(r"\]\(([^)\s]+)\)", text(page)):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # a web page, or a heading on the same page
        path = (page.parent / target.split("#")[0]).resolve()
        assert path.is_relative_to(ROOT), f"{page.name}: {target} leaves the repository"
        assert path.exists(), f"{page.name}: {target} does not exist"
