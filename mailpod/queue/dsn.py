"""Delivery status notifications (RFC 3464): a multipart/report for the sender of a message some
of whose recipients failed (or, when they asked with NOTIFY=SUCCESS, succeeded).

Only ever built for local senders: the scheduler decides that (QueuedMessage.bounce_to), so a
forged external sender never receives backscatter. The report carries the original headers
(RET=HDRS, and the default) or the whole message (RET=FULL).
"""

from __future__ import annotations

import email.utils
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime

from mailpod.outbound.smtp import xtext
from mailpod.queue.store import QueuedMessage, QueuedRecipient, RcptStatus

# The part of a large message that goes back with RET=FULL; beyond it only the headers do.
MAX_RETURNED_BYTES = 256 * 1024


def _status_code(recipient: QueuedRecipient) -> str:
    first = recipient.reply.split(" ", 2)
    for word in first[1:2]:
        parts = word.split(".")
        if len(parts) == 3 and all(p.isdigit() for p in parts) and parts[0] in "245":
            return word
    if recipient.status is RcptStatus.DELIVERED:
        return "2.0.0"
    return "5.0.0"


def _clean(text: str) -> str:
    """A header-safe single line."""
    return " ".join(text.replace("\r", " ").replace("\n", " ").split())[:900]


def build_dsn(
    message: QueuedMessage,
    original: bytes,
    recipients: Sequence[QueuedRecipient],
    hostname: str,
    *,
    now: datetime | None = None,
) -> bytes:
    now = now or datetime.now(UTC)
    boundary = f"=_{secrets.token_hex(12)}"
    failed = [r for r in recipients if r.status is RcptStatus.FAILED]
    subject = "Undelivered Mail Returned to Sender" if failed else "Successful Mail Delivery Report"
    human = []
    if failed:
        human.append(
            f"This is the mail system at {hostname}.\r\n\r\n"
            "Your message could not be delivered to one or more recipients.\r\n"
            "It is attached below (headers only unless you asked for the full message).\r\n"
        )
    else:
        human.append(
            f"This is the mail system at {hostname}.\r\n\r\nYour message was delivered.\r\n"
        )
    for recipient in recipients:
        human.append(
            f"\r\n<{recipient.address}>: {_clean(recipient.reply) or recipient.status}\r\n"
        )
    per_message = [f"Reporting-MTA: dns; {hostname}"]
    if message.envid:
        per_message.append(f"Original-Envelope-Id: {xtext(message.envid)}")
    if message.received_from:
        per_message.append(f"Received-From-MTA: {_clean(message.received_from)}")
    arrival = datetime.fromtimestamp(message.created, UTC)
    per_message.append(f"Arrival-Date: {email.utils.format_datetime(arrival)}")
    fields = ["\r\n".join(per_message)]
    for recipient in recipients:
        lines = []
        if recipient.orcpt:
            lines.append(f"Original-Recipient: rfc822; {recipient.orcpt}")
        lines.append(f"Final-Recipient: rfc822; {recipient.address}")
        lines.append(
            "Action: " + ("failed" if recipient.status is RcptStatus.FAILED else "delivered")
        )
        lines.append(f"Status: {_status_code(recipient)}")
        if recipient.remote_mta:
            lines.append(f"Remote-MTA: dns; {_clean(recipient.remote_mta)}")
        if recipient.reply:
            lines.append(f"Diagnostic-Code: smtp; {_clean(recipient.reply)}")
        lines.append(f"Last-Attempt-Date: {email.utils.format_datetime(now)}")
        fields.append("\r\n".join(lines))
    header_end = original.find(b"\r\n\r\n")
    headers = original[: header_end + 2] if header_end >= 0 else original
    full = message.ret == "FULL" and len(original) <= MAX_RETURNED_BYTES
    if full:
        returned_type, returned = "message/rfc822", original
    else:
        returned_type, returned = "text/rfc822-headers", headers
    if not returned.endswith(b"\r\n"):
        returned += b"\r\n"
    head = (
        f"From: Mail Delivery System <MAILER-DAEMON@{hostname}>\r\n"
        f"To: <{message.bounce_to}>\r\n"
        f"Subject: {subject}\r\n"
        f"Date: {email.utils.format_datetime(now)}\r\n"
        f"Message-ID: <{secrets.token_hex(10)}@{hostname}>\r\n"
        "Auto-Submitted: auto-replied\r\n"
        "MIME-Version: 1.0\r\n"
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"\r\n'
        "\r\n"
        "This is a MIME-encapsulated message.\r\n"
        "\r\n"
        f"--{boundary}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "\r\n" + "".join(human) + "\r\n"
        f"--{boundary}\r\n"
        "Content-Type: message/delivery-status\r\n"
        "\r\n" + "\r\n\r\n".join(fields) + "\r\n\r\n"
        f"--{boundary}\r\n"
        f"Content-Type: {returned_type}\r\n"
        "\r\n"
    ).encode()
    return head + returned + f"\r\n--{boundary}--\r\n".encode()
