"""The real client address behind a trusted load balancer (PROXY protocol v2), and per-address
connection limits, against a real mailpod process."""

from __future__ import annotations

import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.mailpod_harness import (
    PASSWORDS,
    MailpodProcess,
    TlsAfterProxy,
    proxy_v2_header,
)

pytestmark = pytest.mark.integration

ALICE = "alice@example.com"


def _pod(tmp_path: Path, trusted: list[str]) -> MailpodProcess:
    pod = MailpodProcess(tmp_path, workers=1)
    config = pod.config()
    config["limits"]["max_connections_per_ip"] = 3
    return pod.expect_proxy("smtp", trusted, config)


def _send_through_proxy(port: int, header: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(header)
        reader = sock.makefile("rb")
        banner = reader.readline()
        if not banner:
            return b""
        sock.sendall(
            b"EHLO lb.test\r\nMAIL FROM:<x@remote.test>\r\nRCPT TO:<alice@example.com>\r\nDATA\r\n"
        )
        while not reader.readline().startswith(b"354"):
            pass
        sock.sendall(b"Subject: proxied\r\n\r\nx\r\n.\r\nQUIT\r\n")
        return reader.readline()


def test_trusted_proxy_passes_the_client_address(tmp_path: Path) -> None:
    pod = _pod(tmp_path, ["127.0.0.0/8"])
    port = pod.ports["smtp"]
    pod.start(probe=lambda: _send_through_proxy(port, proxy_v2_header("203.0.113.7", 40000)) != b"")
    try:
        assert _send_through_proxy(port, proxy_v2_header("198.51.100.9", 40001)).startswith(b"250")
        stored = [m for m in pod.messages("alice@example.com") if b"198.51.100.9" in m]
        assert stored
        assert b"Received: from lb.test ([198.51.100.9])" in stored[0]
    finally:
        pod.stop()


def test_untrusted_peer_cannot_claim_an_address(tmp_path: Path) -> None:
    pod = _pod(tmp_path, ["192.0.2.0/24"])  # loopback is not trusted
    port = pod.ports["smtp"]
    pod.start(probe=lambda: _reachable(port))
    try:
        assert _send_through_proxy(port, proxy_v2_header("198.51.100.9", 40001)) == b""
        assert not any(b"198.51.100.9" in m for m in pod.messages("alice@example.com"))
    finally:
        pod.stop()


def _reachable(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=2):
        return True


def test_connection_limit_per_address(tmp_path: Path) -> None:
    pod = MailpodProcess(tmp_path, workers=1)
    config = pod.config()
    config["limits"]["max_connections_per_ip"] = 3
    pod.write_config(config)
    pod.start()
    try:
        held = [
            socket.create_connection(("127.0.0.1", pod.ports["smtp"]), timeout=5) for _ in range(3)
        ]
        for sock in held:
            assert sock.recv(100).startswith(b"220")
        with socket.create_connection(("127.0.0.1", pod.ports["smtp"]), timeout=5) as extra:
            assert extra.recv(100).startswith(b"421 4.7.0")
        held.pop().close()
        time.sleep(0.3)
        with socket.create_connection(("127.0.0.1", pod.ports["smtp"]), timeout=5) as again:
            assert again.recv(100).startswith(b"220")
        for sock in held:
            sock.close()
    finally:
        pod.stop()


def _implicit_tls_pod(tmp_path: Path) -> MailpodProcess:
    return MailpodProcess(tmp_path, workers=1).expect_proxy("submissions", ["127.0.0.0/8"])


def test_implicit_tls_submission_behind_a_proxy_with_swaks(tmp_path: Path) -> None:
    """465 behind a PROXY load balancer: the header comes in clear, then the TLS handshake."""
    pod = _implicit_tls_pod(tmp_path)
    pod.start()
    port = str(pod.ports["submissions"])
    try:
        proxy = ["--proxy-version", "2", "--proxy-family", "AF_INET"]
        proxy += ["--proxy-source", "198.51.100.23", "--proxy-source-port", "40123"]
        proxy += ["--proxy-dest", "127.0.0.1", "--proxy-dest-port", port]
        auth = ["--auth", "PLAIN", "--auth-user", ALICE, "--auth-password", PASSWORDS[ALICE]]
        done = subprocess.run(
            [
                *("swaks", "--server", "127.0.0.1", "--port", port, "--tls-on-connect"),
                *proxy,
                *auth,
                *("--from", ALICE, "--to", "bob@example.com", "--header", "Subject: via 465"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        [stored] = [m for m in pod.messages("bob@example.com") if b"Subject: via 465" in m]
        received = stored.split(b"\r\n\r\n", 1)[0].decode()
        assert "[198.51.100.23]" in received  # the client, not the balancer
        assert "with ESMTPSA" in received
    finally:
        pod.stop()


def test_implicit_tls_handshake_sent_with_the_proxy_header_in_one_write(tmp_path: Path) -> None:
    pod = _implicit_tls_pod(tmp_path)
    pod.start()
    port = pod.ports["submissions"]
    try:
        for together in (True, False):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
                client = TlsAfterProxy(
                    raw, pod.client_context(), proxy_v2_header("203.0.113.5", 40002)
                )
                client.handshake(together)
                greeting = client.read_lines(1)[0]
                assert greeting.startswith(b"220 "), greeting
        # A client that skips the header is not let in.
        context = pod.client_context()
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            pytest.raises((ssl.SSLError, ConnectionError, OSError)),
            context.wrap_socket(raw, server_hostname="mail.example.com") as direct,
        ):
            direct.recv(100)
    finally:
        pod.stop()
