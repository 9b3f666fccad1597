"""Shared test helpers: repository paths and the example manifests."""

from __future__ import annotations

from pathlib import Path

import pytest

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
