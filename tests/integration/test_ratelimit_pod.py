"""Rate limits are pod-wide: a real `mailpod run` with two workers, where the test decides which
worker takes each connection by stopping the other one (SIGSTOP; a stopped process cannot
accept, so the running one takes everything from the shared listening socket). Tokens spent in
one worker are gone in the other; with per-worker limits the second worker would let the client
in again."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.integration.mailpod_harness import MailpodProcess, SmtpLines

pytestmark = pytest.mark.integration


def _workers(pod: MailpodProcess) -> list[int]:
    assert pod.proc is not None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        children = Path(f"/proc/{pod.proc.pid}/task/{pod.proc.pid}/children").read_text().split()
        if len(children) == 2:
            return [int(pid) for pid in children]
        time.sleep(0.1)
    raise AssertionError(f"two workers did not start:\n{pod.log()}")


@contextmanager
def _stopped(worker: int) -> Iterator[None]:
    """Only the other worker accepts connections while this lasts."""
    os.kill(worker, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(worker, signal.SIGCONT)


class Client(SmtpLines):
    """One SMTP connection from a chosen loopback source address."""

    def __init__(self, pod: MailpodProcess, source: str) -> None:
        super().__init__(
            socket.create_connection(
                ("127.0.0.1", pod.ports["smtp"]), timeout=10, source_address=(source, 0)
            )
        )


def _banner(pod: MailpodProcess, source: str) -> str:
    client = Client(pod, source)
    client.close()
    return client.banner


@pytest.fixture
def pod(tmp_path: Path) -> Iterator[MailpodProcess]:
    overrides = {
        "checks": {
            "exempt_networks": [],  # the test's clients are on loopback
            "spf": False,
            "dkim": False,
            "dmarc": False,
            "arc": False,
            "rate_limits": {
                "connections_per_ip": {"count": 3, "seconds": 600},
                "connections_per_network": None,
                "messages_per_ip": {"count": 2, "seconds": 600},
                "messages_per_network": None,
            },
        },
    }
    server = MailpodProcess(tmp_path, workers=2, overrides=overrides).start()
    try:
        yield server
    finally:
        server.stop()


def test_connection_limit_spans_the_workers(pod: MailpodProcess) -> None:
    # 127.0.0.1 is the harness's start-up probe: the limited client is another address.
    first, second = _workers(pod)
    with _stopped(second):
        banners = [_banner(pod, "127.0.0.5") for _ in range(4)]
    assert all(b.startswith("220") for b in banners[:3]), banners
    assert banners[3].startswith("421 4.7.0 Too many connections"), banners
    with _stopped(first):
        # The other worker knows the client has spent its tokens...
        assert _banner(pod, "127.0.0.5").startswith("421 4.7.0"), pod.log()
        # ...and is serving everyone else.
        assert _banner(pod, "127.0.0.6").startswith("220")


def test_message_limit_spans_the_workers(pod: MailpodProcess) -> None:
    first, second = _workers(pod)
    with _stopped(second):
        client = Client(pod, "127.0.0.3")
        client.command("EHLO client.rl-pod.test")
        replies = []
        for _ in range(3):
            replies.append(client.command("MAIL FROM:<a@rl-pod.test>"))
            client.command("RSET")
        client.close()
    assert [r[:3] for r in replies] == ["250", "250", "450"], replies
    with _stopped(first):
        client = Client(pod, "127.0.0.3")
        client.command("EHLO client.rl-pod.test")
        assert client.command("MAIL FROM:<a@rl-pod.test>").startswith("450 4.7.1"), pod.log()
        other = Client(pod, "127.0.0.4")
        other.command("EHLO client.rl-pod.test")
        assert other.command("MAIL FROM:<a@rl-pod.test>").startswith("250")
        client.close()
        other.close()
