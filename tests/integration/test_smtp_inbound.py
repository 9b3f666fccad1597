"""Inbound SMTP (the MX on port 25) against a real mailpod process, with real clients."""

from __future__ import annotations

import smtplib
import socket
import subprocess

import pytest

from tests.integration.mailpod_harness import MailpodProcess

pytestmark = pytest.mark.integration

MESSAGE = (
    b"From: Carol <carol@remote.test>\r\nTo: alice@example.com\r\nSubject: hello\r\n\r\n"
    b"Hi Alice!\r\n"
)


def _smtp(mailpod: MailpodProcess) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", mailpod.ports["smtp"], timeout=10)
    client.ehlo("client.remote.test")
    return client


def test_ehlo_advertises_the_extensions(mailpod: MailpodProcess) -> None:
    client = _smtp(mailpod)
    for extension in (
        "pipelining",
        "size",
        "8bitmime",
        "smtputf8",
        "enhancedstatuscodes",
        "starttls",
    ):
        assert client.has_extn(extension), extension
    assert not client.has_extn("auth")  # the MX never offers AUTH
    client.quit()


def test_delivery_writes_headers_and_is_durable_before_250(mailpod: MailpodProcess) -> None:
    client = _smtp(mailpod)
    assert client.sendmail("carol@remote.test", ["alice@example.com"], MESSAGE) == {}
    client.quit()
    stored = [m for m in mailpod.messages("alice@example.com") if b"Subject: hello" in m]
    assert len(stored) == 1  # present as soon as the 250 arrived
    lines = stored[0].split(b"\r\n")
    assert lines[0] == b"Return-Path: <carol@remote.test>"
    assert lines[1] == b"Delivered-To: alice@example.com"
    assert lines[2].startswith(b"Received: from client.remote.test ([127.0.0.1])")
    assert stored[0].endswith(MESSAGE)


def test_a_bounce_keeps_the_null_reverse_path(mailpod: MailpodProcess) -> None:
    client = _smtp(mailpod)
    bounce = b"From: MAILER-DAEMON@remote.test\r\nSubject: null sender\r\n\r\nreport\r\n"
    assert client.sendmail("", ["alice@example.com"], bounce) == {}
    client.quit()
    [stored] = [m for m in mailpod.messages("alice@example.com") if b"Subject: null sender" in m]
    assert stored.startswith(b"Return-Path: <>\r\n")


@pytest.mark.parametrize(
    ("rcpt", "mailbox"),
    [
        ("Alice@Example.COM", "alice@example.com"),
        ("alice+lists@example.com", "alice@example.com"),
        ("sales@example.com", "alice@example.com"),
        ("anything@example.org", "alice@example.com"),  # catch-all
    ],
)
def test_recipient_forms(mailpod: MailpodProcess, rcpt: str, mailbox: str) -> None:
    subject = f"Subject: to {rcpt}".encode()
    client = _smtp(mailpod)
    client.sendmail("carol@remote.test", [rcpt], subject + b"\r\n\r\nbody\r\n")
    client.quit()
    assert any(subject in m for m in mailpod.messages(mailbox))


def test_alias_reaches_every_member_once(mailpod: MailpodProcess) -> None:
    client = _smtp(mailpod)
    client.sendmail(
        "c@remote.test", ["team@example.com", "alice@example.com"], b"Subject: team\r\n\r\nx\r\n"
    )
    client.quit()
    assert sum(b"Subject: team" in m for m in mailpod.messages("alice@example.com")) == 1
    assert sum(b"Subject: team" in m for m in mailpod.messages("bob@example.com")) == 1


def test_unknown_user_is_rejected_at_rcpt(mailpod: MailpodProcess) -> None:
    client = _smtp(mailpod)
    client.mail("carol@remote.test")
    code, text = client.rcpt("nobody@example.com")
    assert (code, text[:5]) == (550, b"5.1.1")
    client.quit()


@pytest.mark.parametrize(
    "rcpt",
    [
        "victim@remote.test",
        "victim%remote.test@example.com",
        '"victim@remote.test"@example.com',
        "@example.com:victim@remote.test",
        "victim@[127.0.0.1]",
        "remote.test!victim@example.com",
        "victim@remote.test@example.com",
    ],
)
@pytest.mark.parametrize("sender", ["carol@remote.test", "alice@example.com", ""])
def test_never_an_open_relay(mailpod: MailpodProcess, rcpt: str, sender: str) -> None:
    with socket.create_connection(("127.0.0.1", mailpod.ports["smtp"]), timeout=10) as sock:
        reader = sock.makefile("rb")
        reader.readline()
        sock.sendall(b"EHLO relay.test\r\n")
        while not reader.readline().startswith(b"250 "):
            pass
        sock.sendall(f"MAIL FROM:<{sender}>\r\n".encode())
        assert reader.readline().startswith(b"250")
        sock.sendall(f"RCPT TO:<{rcpt}>\r\n".encode())
        reply = reader.readline()
        assert reply[:3] in (b"550", b"501", b"553"), reply
        assert not reply.startswith(b"250")


def test_message_size_limit(mailpod: MailpodProcess) -> None:
    big = b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * 250  # 250 kB > 200 kB limit
    client = _smtp(mailpod)
    # Declared with SIZE: refused before the data is sent.
    with pytest.raises(smtplib.SMTPSenderRefused) as refused:
        client.sendmail("c@remote.test", ["alice@example.com"], big)
    assert refused.value.smtp_code == 552
    # Not declared: the data is read and discarded, then refused.
    client.mail("c@remote.test")
    client.rcpt("alice@example.com")
    code, _ = client.data(big)
    assert code == 552
    client.quit()
    assert not any(b"Subject: big" in m for m in mailpod.messages("alice@example.com"))


def test_quota_is_checked_at_rcpt(mailpod: MailpodProcess) -> None:
    client = _smtp(mailpod)
    body = b"Subject: fill\r\n\r\n" + (b"z" * 998 + b"\r\n") * 15  # 15 kB of bob's 20 kB
    client.sendmail("c@remote.test", ["bob@example.com"], body)
    client.mail("c@remote.test", [f"SIZE={len(body)}"])
    code, text = client.rcpt("bob@example.com")
    assert (code, text[:5]) == (452, b"4.2.2")
    client.quit()


def test_swaks_delivers(mailpod: MailpodProcess) -> None:
    result = subprocess.run(
        [
            "swaks",
            "--server",
            f"127.0.0.1:{mailpod.ports['smtp']}",
            "--to",
            "alice@example.com",
            "--from",
            "swaks@remote.test",
            "--header",
            "Subject: via swaks",
            "--tls",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "250 2.0.0 Ok" in result.stdout
    assert any(b"Subject: via swaks" in m for m in mailpod.messages("alice@example.com"))


@pytest.mark.parametrize(
    ("flag", "accepted"),
    [("-tls1", False), ("-tls1_1", False), ("-tls1_2", True), ("-tls1_3", True)],
)
def test_tls_versions(mailpod: MailpodProcess, flag: str, accepted: bool) -> None:
    result = subprocess.run(
        [
            "openssl",
            "s_client",
            "-connect",
            f"127.0.0.1:{mailpod.ports['smtp']}",
            "-starttls",
            "smtp",
            flag,
            "-CAfile",
            str(mailpod.ca_file),
        ],
        input="QUIT\n",
        capture_output=True,
        text=True,
        timeout=30,
    )
    negotiated = (
        "Verify return code: 0 (ok)" in result.stdout and "Cipher is (NONE)" not in result.stdout
    )
    assert negotiated is accepted, result.stdout[-800:] + result.stderr[-800:]


def test_hundred_parallel_sessions(mailpod: MailpodProcess) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def send(i: int) -> dict[str, tuple[int, bytes]]:
        with smtplib.SMTP("127.0.0.1", mailpod.ports["smtp"], timeout=30) as client:
            return client.sendmail(
                "c@remote.test",
                ["alice@example.com"],
                f"Subject: parallel {i}\r\n\r\nx\r\n".encode(),
            )

    with ThreadPoolExecutor(max_workers=100) as pool:
        results = list(pool.map(send, range(100)))
    assert all(r == {} for r in results)
    stored = mailpod.messages("alice@example.com")
    for i in range(100):
        assert sum(f"Subject: parallel {i}\r\n".encode() in m for m in stored) == 1


def test_health_and_metrics(mailpod: MailpodProcess) -> None:
    import httpx

    base = f"http://127.0.0.1:{mailpod.ports['http']}"
    assert httpx.get(f"{base}/healthz").text.strip() == "ok"
    assert httpx.get(f"{base}/readyz").status_code == 200
    client = _smtp(mailpod)
    client.sendmail("c@remote.test", ["alice@example.com"], b"Subject: metric\r\n\r\nx\r\n")
    client.quit()
    text = httpx.get(f"{base}/metrics").text
    accepted = [
        line
        for line in text.splitlines()
        if line.startswith('mailpod_messages_total{listener="smtp",result="accepted"}')
    ]
    assert accepted
    assert float(accepted[0].split()[-1]) >= 1
    assert 'mailpod_connections_total{listener="smtp"}' in text
