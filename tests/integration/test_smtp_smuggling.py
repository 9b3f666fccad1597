"""SMTP smuggling (CVE-2023-51764/5/6, CVE-2024-27305) and STARTTLS command injection
(CVE-2024-34083) against a real mailpod process over raw sockets."""

from __future__ import annotations

import socket
import ssl
import time

import pytest

from tests.integration.mailpod_harness import MailpodProcess

pytestmark = pytest.mark.integration


def _session(mailpod: MailpodProcess) -> tuple[socket.socket, object]:
    sock = socket.create_connection(("127.0.0.1", mailpod.ports["smtp"]), timeout=10)
    reader = sock.makefile("rb")
    assert reader.readline().startswith(b"220")
    sock.sendall(b"EHLO smuggler.test\r\n")
    while not reader.readline().startswith(b"250 "):
        pass
    return sock, reader


# Each ending is what some MTA treats as end-of-data; after it the attacker smuggles a second
# transaction that must never be delivered.
ENDINGS = [
    b"\n.\n",
    b"\n.\r\n",
    b"\r.\r\n",
    b"\r\n.\r",
    b"\r\n.\n",
    b"\r.\r",
    b"\r\n\x00.\r\n",
]


@pytest.mark.parametrize("ending", ENDINGS, ids=lambda e: repr(e))
def test_smuggled_end_of_data_is_rejected(mailpod: MailpodProcess, ending: bytes) -> None:
    marker = f"smuggled-{time.monotonic_ns()}".encode()
    sock, reader = _session(mailpod)
    sock.sendall(b"MAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@example.com>\r\nDATA\r\n")
    replies = [reader.readline() for _ in range(3)]  # type: ignore[attr-defined]
    assert replies[2].startswith(b"354"), replies
    smuggled = (
        b"MAIL FROM:<admin@example.com>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n"
        b"Subject: " + marker + b"\r\n\r\nforged\r\n"
    )
    sock.sendall(b"Subject: cover\r\n\r\nhello" + ending + smuggled + b"\r\n.\r\n")
    reply = reader.readline()  # type: ignore[attr-defined]
    assert reply.startswith(b"550 5.6.0"), reply
    sock.sendall(b"QUIT\r\n")
    sock.close()
    assert not any(marker in m for m in mailpod.messages("bob@example.com"))
    assert not any(marker in m for m in mailpod.messages("alice@example.com"))


def test_bare_lf_inside_a_line_is_rejected(mailpod: MailpodProcess) -> None:
    sock, reader = _session(mailpod)
    sock.sendall(b"MAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@example.com>\r\nDATA\r\n")
    for _ in range(3):
        reader.readline()  # type: ignore[attr-defined]
    sock.sendall(b"Subject: lf\r\n\r\nline one\nline two\r\n.\r\n")
    assert reader.readline().startswith(b"550 5.6.0")  # type: ignore[attr-defined]
    # The connection lives on for the next transaction.
    sock.sendall(b"NOOP\r\n")
    assert reader.readline().startswith(b"250")  # type: ignore[attr-defined]
    sock.close()


def test_commands_pipelined_before_starttls_are_discarded(mailpod: MailpodProcess) -> None:
    sock, reader = _session(mailpod)
    # Plaintext injected after STARTTLS in the same packet must not be executed after TLS.
    sock.sendall(b"STARTTLS\r\nMAIL FROM:<injected@remote.test>\r\n")
    assert reader.readline().startswith(b"220")  # type: ignore[attr-defined]
    tls = mailpod.client_context().wrap_socket(sock, server_hostname="mail.example.com")
    tls_reader = tls.makefile("rb")
    tls.sendall(b"EHLO again.test\r\n")
    line = tls_reader.readline()
    assert line.startswith(b"250"), line  # the first reply is to our EHLO, not the injected MAIL
    while not line.startswith(b"250 "):
        line = tls_reader.readline()
    tls.sendall(b"RCPT TO:<alice@example.com>\r\n")
    assert tls_reader.readline().startswith(b"503")  # no MAIL transaction was ever started
    tls.close()


def test_garbage_gets_a_protocol_error_not_a_crash(mailpod: MailpodProcess) -> None:
    sock, reader = _session(mailpod)
    for garbage in (
        b"\xff\xfe\x00junk\r\n",
        b"MAIL FROM:<<<>>>\r\n",
        b"RCPT TO:\r\n",
        b"X" * 5000 + b"\r\n",
    ):
        sock.sendall(garbage)
        reply = reader.readline()  # type: ignore[attr-defined]
        assert reply[:1] == b"5", reply
    sock.sendall(b"NOOP\r\n")
    assert reader.readline().startswith(b"250")  # type: ignore[attr-defined]
    sock.close()
    with socket.create_connection(("127.0.0.1", mailpod.ports["smtp"]), timeout=10) as again:
        assert again.recv(100).startswith(b"220")


def test_tls_context_rejects_old_protocols(mailpod: MailpodProcess) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(str(mailpod.ca_file))
    context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.minimum_version = ssl.TLSVersion.TLSv1
    context.set_ciphers("ALL:@SECLEVEL=0")
    with (
        socket.create_connection(("127.0.0.1", mailpod.ports["submissions"]), timeout=10) as sock,
        pytest.raises(ssl.SSLError),
    ):
        context.wrap_socket(sock, server_hostname="mail.example.com")
