"""The bulk DATA reader (mailpod.smtp.data) in a real mailpod process, over raw sockets: where the
data ends, transparency, what follows the data, and split packets."""

from __future__ import annotations

import socket
import time

import pytest

from tests.integration.mailpod_harness import MailpodProcess

pytestmark = pytest.mark.integration


class Session:
    def __init__(self, mailpod: MailpodProcess) -> None:
        self.sock = socket.create_connection(("127.0.0.1", mailpod.ports["smtp"]), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = self.sock.makefile("rb")
        assert self.reply().startswith(b"220")
        self.sock.sendall(b"EHLO data.test\r\n")
        while not self.reply().startswith(b"250 "):
            pass

    def reply(self) -> bytes:
        line: bytes = self.reader.readline()
        return line

    def start_data(self) -> None:
        self.sock.sendall(b"MAIL FROM:<d@remote.test>\r\nRCPT TO:<alice@example.com>\r\nDATA\r\n")
        replies = [self.reply() for _ in range(3)]
        assert replies[2].startswith(b"354"), replies

    def close(self) -> None:
        self.sock.close()


def stored(mailpod: MailpodProcess, marker: bytes) -> list[bytes]:
    return [m for m in mailpod.messages("alice@example.com") if marker in m]


def test_transparency_and_commands_pipelined_after_the_data(mailpod: MailpodProcess) -> None:
    marker = f"transparent-{time.monotonic_ns()}".encode()
    session = Session(mailpod)
    session.start_data()
    body = b"Subject: " + marker + b"\r\n\r\n..leading dot\r\n...\r\nend.\r\n"
    session.sock.sendall(body + b".\r\nNOOP\r\nQUIT\r\n")
    assert session.reply().startswith(b"250 2.0.0")
    assert session.reply().startswith(b"250")  # NOOP: read after the data, not as part of it
    assert session.reply().startswith(b"221")
    session.close()
    [message] = stored(mailpod, marker)
    assert message.endswith(b"\r\n\r\n.leading dot\r\n..\r\nend.\r\n")


def test_the_marker_split_across_packets(mailpod: MailpodProcess) -> None:
    marker = f"split-{time.monotonic_ns()}".encode()
    session = Session(mailpod)
    session.start_data()
    body = b"Subject: " + marker + b"\r\n\r\n" + b"x" * 70_000 + b"\r\n.\r\n"
    session.sock.sendall(body[:-4])
    for byte in body[-4:]:
        time.sleep(0.02)
        session.sock.sendall(bytes([byte]))
    assert session.reply().startswith(b"250 2.0.0")
    session.close()
    [message] = stored(mailpod, marker)
    assert message.endswith(b"x" * 70_000 + b"\r\n")  # a 70,000-octet line: accepted, as Postfix


def test_an_empty_message_ends_at_once(mailpod: MailpodProcess) -> None:
    session = Session(mailpod)
    session.start_data()
    session.sock.sendall(b".\r\n")  # the CRLF ending the DATA line is the marker's first CRLF
    assert session.reply().startswith(b"250 2.0.0")
    session.sock.sendall(b"NOOP\r\n")
    assert session.reply().startswith(b"250")
    session.close()
