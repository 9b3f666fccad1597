from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.ports import free_port
from tests.integration.mailpod_harness import MailpodProcess


@pytest.fixture(scope="module")
def mailpod(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MailpodProcess]:
    """One running mail pod (2 workers) shared by a test module."""
    server = MailpodProcess(Path(tmp_path_factory.mktemp("mailpod"))).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def blackhole() -> Iterator[str]:
    """A UDP and TCP port (`host:port`) that takes DNS queries and never answers: a dead DNS
    server for the resolver, the inbound checks and their reload."""
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", port))
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", port))
            tcp.listen()
            yield f"127.0.0.1:{port}"
