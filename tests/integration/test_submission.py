"""Submission (587 STARTTLS, 465 implicit TLS) with AUTH, against a real mailpod process."""

from __future__ import annotations

import smtplib
import subprocess

import pytest

from tests.integration.mailpod_harness import PASSWORDS, MailpodProcess

pytestmark = pytest.mark.integration

ALICE = "alice@example.com"


def _submission(mailpod: MailpodProcess, login: bool = True) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", mailpod.ports["submission"], timeout=10)
    client.starttls(context=mailpod.client_context())
    client.ehlo()
    if login:
        client.login(ALICE, PASSWORDS[ALICE])
    return client


def test_auth_is_refused_before_starttls(mailpod: MailpodProcess) -> None:
    client = smtplib.SMTP("127.0.0.1", mailpod.ports["submission"], timeout=10)
    client.ehlo()
    assert not client.has_extn("auth")
    code, _ = client.docmd("AUTH", "PLAIN AGFsaWNlQGV4YW1wbGUuY29tAHg=")
    assert code == 530  # STARTTLS first
    code, _ = client.docmd("MAIL", "FROM:<alice@example.com>")
    assert code == 530
    client.close()


def test_submission_delivers_locally_after_auth(mailpod: MailpodProcess) -> None:
    client = _submission(mailpod)
    message = (
        b"From: Alice <alice@example.com>\r\nTo: bob@example.com\r\nSubject: from alice\r\n"
        b"\r\nhi\r\n"
    )
    assert client.sendmail(ALICE, ["bob@example.com"], message) == {}
    client.quit()
    stored = [m for m in mailpod.messages("bob@example.com") if b"Subject: from alice" in m]
    assert len(stored) == 1
    assert b"with ESMTPSA id" in stored[0]


def test_wrong_password_is_rejected(mailpod: MailpodProcess) -> None:
    client = _submission(mailpod, login=False)
    with pytest.raises(smtplib.SMTPAuthenticationError) as error:
        client.login(ALICE, "wrong")
    assert error.value.smtp_code == 535
    client.close()


def test_mail_requires_auth(mailpod: MailpodProcess) -> None:
    client = _submission(mailpod, login=False)
    code, text = client.mail(ALICE)
    assert (code, text[:5]) == (530, b"5.7.0")
    client.close()


@pytest.mark.parametrize("sender", ["bob@example.com", "ceo@remote.test"])
def test_envelope_sender_must_be_owned(mailpod: MailpodProcess, sender: str) -> None:
    client = _submission(mailpod)
    code, text = client.mail(sender)
    assert (code, text[:5]) == (553, b"5.7.1")
    client.close()


@pytest.mark.parametrize("sender", ["sales@example.com", "alice+news@example.com"])
def test_send_as_and_alias_and_plus_addresses_are_owned(
    mailpod: MailpodProcess, sender: str
) -> None:
    client = _submission(mailpod)
    message = f"From: {sender}\r\nSubject: as {sender}\r\n\r\nx\r\n".encode()
    assert client.sendmail(sender, ["bob@example.com"], message) == {}
    client.quit()


def test_from_header_must_be_owned(mailpod: MailpodProcess) -> None:
    client = _submission(mailpod)
    message = b"From: Bob <bob@example.com>\r\nSubject: forged\r\n\r\nx\r\n"
    with pytest.raises(smtplib.SMTPDataError) as error:
        client.sendmail(ALICE, ["bob@example.com"], message)
    assert error.value.smtp_code == 553
    client.close()
    assert not any(b"Subject: forged" in m for m in mailpod.messages("bob@example.com"))


def test_remote_recipients_are_accepted_for_the_outbound_queue(
    mailpod: MailpodProcess,
) -> None:
    # Delivery itself: tests/integration/test_queue_pod.py.
    client = _submission(mailpod)
    client.mail(ALICE)
    code, text = client.rcpt("friend@remote.test")
    assert (code, text[:5]) == (250, b"2.1.5")
    client.close()


def test_curl_over_implicit_tls(mailpod: MailpodProcess, tmp_path: object) -> None:
    result = subprocess.run(
        [
            "curl",
            "--silent",
            "--show-error",
            f"smtps://127.0.0.1:{mailpod.ports['submissions']}",
            "--cacert",
            str(mailpod.ca_file),
            "--connect-to",
            f"mail.example.com:{mailpod.ports['submissions']}:127.0.0.1:{mailpod.ports['submissions']}",
            "--url",
            f"smtps://mail.example.com:{mailpod.ports['submissions']}",
            "--mail-from",
            ALICE,
            "--mail-rcpt",
            "bob@example.com",
            "-u",
            f"{ALICE}:{PASSWORDS[ALICE]}",
            "--upload-file",
            "-",
        ],
        input=b"From: alice@example.com\r\nSubject: via curl\r\n\r\nhello from curl\r\n",
        capture_output=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert any(b"Subject: via curl" in m for m in mailpod.messages("bob@example.com"))


def test_swaks_submission_with_starttls(mailpod: MailpodProcess) -> None:
    result = subprocess.run(
        [
            "swaks",
            "--server",
            f"127.0.0.1:{mailpod.ports['submission']}",
            "--tls",
            "--auth",
            "PLAIN",
            "--auth-user",
            ALICE,
            "--auth-password",
            PASSWORDS[ALICE],
            "--from",
            ALICE,
            "--to",
            "bob@example.com",
            "--header",
            "Subject: swaks submission",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "235 2.7.0 Authentication successful" in result.stdout
    # The password never shows up in the server's logs.
    assert PASSWORDS[ALICE] not in mailpod.log()
