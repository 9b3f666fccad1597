"""Delivery status notifications (RFC 3464): a multipart/report for the sender of a message some
of whose recipients failed, are still being retried after a while ("delayed"), or, when they
asked with NOTIFY=SUCCESS, succeeded.

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
    if recipient.status is RcptStatus.DEFERRED:
        return "4.0.0"
    return "5.0.0"


_ACTIONS = {
    RcptStatus.FAILED: "failed",
    RcptStatus.DEFERRED: "delayed",
    RcptStatus.DELIVERED: "delivered",
}


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
    retry_until: datetime | None = None,
) -> bytes:
    """The report on `recipients` (all failed/delivered, or all still being retried with
    `retry_until` the end of the message's lifetime)."""
    now = now or datetime.now(UTC)
    boundary = f"=_{secrets.token_hex(12)}"
    failed = any(r.status is RcptStatus.FAILED for r in recipients)
    delayed = any(r.status is RcptStatus.DEFERRED for r in recipients)
    human = [f"This is the mail system at {hostname}.\r\n\r\n"]
    if failed:
        subject = "Undelivered Mail Returned to Sender"
        human.append(
            "Your message could not be delivered to one or more recipients.\r\n"
            "It is attached below (headers only unless you asked for the full message).\r\n"
        )
    elif delayed:
        subject = "Delayed Mail (still being retried)"
        until = f" until {email.utils.format_datetime(retry_until)}" if retry_until else ""
        human.append(
            "Your message could not be delivered yet to one or more recipients.\r\n"
            f"The mail system will keep trying{until}; you do not need to send it again.\r\n"
            "Its headers are attached below.\r\n"
        )
    else:
        subject = "Successful Mail Delivery Report"
        human.append("Your message was delivered.\r\n")
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
        lines.append(f"Action: {_ACTIONS[recipient.status]}")
        lines.append(f"Status: {_status_code(recipient)}")
        if recipient.remote_mta:
            lines.append(f"Remote-MTA: dns; {_clean(recipient.remote_mta)}")
        if recipient.reply:
            lines.append(f"Diagnostic-Code: smtp; {_clean(recipient.reply)}")
        lines.append(f"Last-Attempt-Date: {email.utils.format_datetime(now)}")
        if recipient.status is RcptStatus.DEFERRED and retry_until is not None:
            lines.append(f"Will-Retry-Until: {email.utils.format_datetime(retry_until)}")
        fields.append("\r\n".join(lines))
    header_end = original.find(b"\r\n\r\n")
    headers = original[: header_end + 2] if header_end >= 0 else original
    # RET=FULL asks for the message back with a failure (RFC 3461 §4.3); a delay warning
    # carries the headers only, as Postfix's does.
    full = message.ret == "FULL" and not delayed and len(original) <= MAX_RETURNED_BYTES
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
