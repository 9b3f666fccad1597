"""docs/: the pages this chart's issue owns exist, and every relative link in docs/ and the
README's deploy sections points at a file that exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.harness.reference import REPO

DOCS = REPO / "docs"
PAGES = (
    "install.md",
    "crd-reference.md",
    "client-ip.md",
    "outbound-25-and-smarthosts.md",
    "backup-restore.md",
    "upgrading.md",
    "gitops.md",
)
LINK = re.compile(r"\]\(([^)#\s]+)(#[^)]*)?\)")


@pytest.mark.parametrize("page", PAGES)
def test_page_exists_with_a_title(page: str) -> None:
    text = (DOCS / page).read_text()
    assert text.startswith("# ")


@pytest.mark.parametrize(
    "source", [*(DOCS / p for p in PAGES), REPO / "README.md"], ids=lambda p: p.name
)
def test_relative_links_resolve(source: Path) -> None:
    for target, _ in LINK.findall(source.read_text()):
        if "://" in target or target.startswith("mailto:"):
            continue
        assert (source.parent / target).exists(), f"{source.name}: broken link {target}"


def test_documented_values_exist_in_the_chart() -> None:
    values = (REPO / "charts/letterbox/values.yaml").read_text()
    install = (DOCS / "install.md").read_text()
    for name in re.findall(r"^\| `([a-zA-Z]+)\.", install, re.M):
        assert re.search(rf"^{name}:", values, re.M), f"{name} is not a chart value"
