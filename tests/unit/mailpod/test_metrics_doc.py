"""docs/monitoring.md names every metric the mail pod exports, and nothing it does not."""

from __future__ import annotations

import re

from mailpod.metrics import REGISTRY
from tests.conftest import REPO


def test_the_monitoring_page_lists_exactly_the_exported_metrics() -> None:
    exported = set()
    for family in REGISTRY.collect():
        suffix = "_total" if family.type == "counter" else ""
        exported.add(family.name + suffix)
    page = (REPO / "docs" / "monitoring.md").read_text()
    documented = set(re.findall(r"^\| `(mailpod_[a-z_]+)", page, re.MULTILINE))
    assert documented == exported
