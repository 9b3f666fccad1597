from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.mailpod_harness import MailpodProcess


@pytest.fixture(scope="module")
def mailpod(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MailpodProcess]:
    """One running mail pod (2 workers) shared by a test module."""
    server = MailpodProcess(Path(tmp_path_factory.mktemp("mailpod"))).start()
    try:
        yield server
    finally:
        server.stop()
