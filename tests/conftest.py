"""Shared test helpers: repository paths and the example manifests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.powerdns import PowerDns

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
INVALID_EXAMPLES = sorted((EXAMPLES / "invalid").glob("*.yaml"))


def expectations(path: Path, where: str) -> list[str]:
    """The messages an invalid example must produce: `# expect:` lines apply everywhere,
    `# expect-<where>:` lines only offline or only at the API server."""
    found = []
    for line in path.read_text().splitlines():
        for prefix in ("# expect:", f"# expect-{where}:"):
            if line.startswith(prefix):
                found.append(line.removeprefix(prefix).strip())
    return found


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture(scope="session")
def powerdns() -> Iterator[PowerDns]:
    """One real PowerDNS (API + RFC 2136 + queries) for the session; tests create their own
    zones in it, under names no other test uses."""
    with PowerDns() as server:
        yield server
