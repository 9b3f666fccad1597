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
from collections.abc import Iterator, Mapping
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


def _state(pid: int) -> str:
    # /proc/<pid>/stat: "pid (comm) state ..."; comm may hold spaces, the state follows ")".
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]


@contextmanager
def _stopped(worker: int) -> Iterator[None]:
    """Only the other worker accepts connections while this lasts."""
    os.kill(worker, signal.SIGSTOP)
    # kill() returns before the stop takes effect: a worker still running on the other core
    # could accept the next connection and then freeze holding it.
    deadline = time.monotonic() + 10
    while _state(worker) != "T":
        assert time.monotonic() < deadline, f"worker {worker} did not stop"
        time.sleep(0.01)
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


def _two_workers(
    tmp_path: Path,
    rate_limits: Mapping[str, object],
    checks: Mapping[str, object] | None = None,
    limits: Mapping[str, object] | None = None,
) -> Iterator[MailpodProcess]:
    """A pod of two workers with the given rate limits and only those inbound checks on."""
    overrides: dict[str, object] = {
        "checks": {
            **{"spf": False, "dkim": False, "dmarc": False, "arc": False},
            "rate_limits": rate_limits,
            **(checks or {}),
        }
    }
    if limits is not None:
        overrides["limits"] = limits
    server = MailpodProcess(tmp_path, workers=2, overrides=overrides).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pod(tmp_path: Path) -> Iterator[MailpodProcess]:
    rate_limits = {
        "connections_per_ip": {"count": 3, "seconds": 600},
        "connections_per_network": None,
        "messages_per_ip": {"count": 2, "seconds": 600},
        "messages_per_network": None,
    }
    # The test's clients are on loopback, which is exempt by default.
    yield from _two_workers(tmp_path, rate_limits, checks={"exempt_networks": []})


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


@pytest.fixture
def capped_pod(tmp_path: Path) -> Iterator[MailpodProcess]:
    """Two open connections per client address, no rate limits."""
    no_rate_limits = dict.fromkeys(
        ("connections_per_ip", "connections_per_network", "messages_per_ip", "messages_per_network")
    )
    limits = {"max_message_bytes": 200_000, "max_connections_per_ip": 2}
    yield from _two_workers(tmp_path, no_rate_limits, limits=limits)


def test_open_connections_are_counted_across_workers_and_freed_when_one_dies(
    capped_pod: MailpodProcess,
) -> None:
    pod = capped_pod
    first, second = _workers(pod)
    with _stopped(second):
        held = [Client(pod, "127.0.0.7") for _ in range(2)]
    assert all(c.banner.startswith("220") for c in held), [c.banner for c in held]
    with _stopped(first):
        # The other worker sees the two connections the first one holds.
        assert _banner(pod, "127.0.0.7").startswith("421 4.7.0 Too many connections"), pod.log()
        assert _banner(pod, "127.0.0.8").startswith("220")
    # The worker holding them dies: the kernel closes its connections and the supervisor
    # forgets its counts, so the client is not locked out by connections that no longer exist.
    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while not (banner := _banner(pod, "127.0.0.7")).startswith("220"):
        assert time.monotonic() < deadline, (banner, pod.log())
        time.sleep(0.1)
    for client in held:
        client.close()
