"""RFC 3464 reports: structure, per-recipient fields, RET=HDRS versus FULL."""

from __future__ import annotations

import email
import email.policy
import time
from datetime import UTC, datetime

from mailpod.queue.dsn import build_dsn
from mailpod.queue.store import QueuedMessage, QueuedRecipient, RcptStatus

ORIGINAL = b"From: <alice@example.com>\r\nSubject: report me\r\n\r\nsecret body\r\n"


def _message(ret: str = "FULL") -> QueuedMessage:
    failed = QueuedRecipient(
        "bob@remote.example",
        orcpt="team@example.com",
        status=RcptStatus.FAILED,
        reply="550 5.1.1 No such user",
        remote_mta="mx.remote.example",
    )
    return QueuedMessage(
        "0123456789abcdef",
        "alice@example.com",
        time.time(),
        [failed],
        bounce_to="alice@example.com",
        ret=ret,
        envid="track+1",
    )


def test_a_failure_report_has_the_three_parts_and_the_fields() -> None:
    message = _message()
    dsn = build_dsn(
        message,
        ORIGINAL,
        message.recipients,
        "mail.example.com",
        now=datetime(2026, 1, 1, tzinfo=UTC),
    )
    assert b"\n" not in dsn.replace(b"\r\n", b"")  # CRLF only
    parsed = email.message_from_bytes(dsn, policy=email.policy.default)
    assert parsed["To"] == "alice@example.com"
    assert parsed["Auto-Submitted"] == "auto-replied"
    assert parsed.get_content_type() == "multipart/report"
    kinds = [part.get_content_type() for part in parsed.iter_parts()]
    assert kinds == ["text/plain", "message/delivery-status", "message/rfc822"]
    text = dsn.decode()
    for field in (
        "Reporting-MTA: dns; mail.example.com",
        "Original-Envelope-Id: track+2B1",
        "Original-Recipient: rfc822; team@example.com",
        "Final-Recipient: rfc822; bob@remote.example",
        "Action: failed",
        "Status: 5.1.1",
        "Remote-MTA: dns; mx.remote.example",
        "Diagnostic-Code: smtp; 550 5.1.1 No such user",
    ):
        assert field in text
    assert "secret body" in text


def test_ret_hdrs_returns_only_the_headers() -> None:
    message = _message("HDRS")
    dsn = build_dsn(message, ORIGINAL, message.recipients, "mail.example.com")
    assert b"text/rfc822-headers" in dsn
    assert b"Subject: report me" in dsn
    assert b"secret body" not in dsn


def test_a_delay_warning_says_when_retries_end_and_returns_only_the_headers() -> None:
    message = _message(ret="FULL")
    message.recipients[0].status = RcptStatus.DEFERRED
    message.recipients[0].reply = "451 4.3.0 Try again later"
    until = datetime(2026, 1, 5, tzinfo=UTC)
    dsn = build_dsn(message, ORIGINAL, message.recipients, "mail.example.com", retry_until=until)
    parsed = email.message_from_bytes(dsn, policy=email.policy.default)
    assert parsed["Subject"] == "Delayed Mail (still being retried)"
    kinds = [part.get_content_type() for part in parsed.iter_parts()]
    assert kinds == ["text/plain", "message/delivery-status", "text/rfc822-headers"]
    text = dsn.decode()
    assert "Action: delayed" in text
    assert "Status: 4.3.0" in text
    assert "Will-Retry-Until: Mon, 05 Jan 2026 00:00:00 +0000" in text
    assert "keep trying until Mon, 05 Jan 2026" in text
    assert "Subject: report me" in text
    assert "secret body" not in text  # RET=FULL is for failures only
