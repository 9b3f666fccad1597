"""The delivery pipeline (after maddy): checks return verdicts, modifiers rewrite headers, delivery
targets store or queue. The SMTP adapter drives one `Delivery` per transaction:
`start → add_rcpt… → body → commit` (or `abort`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol


@dataclass(frozen=True)
class Envelope:
    """What the SMTP transaction said, plus who said it."""

    session_id: str
    client_ip: str
    helo: str
    mail_from: str  # "" for the null sender (bounces)
    authenticated_user: str | None = None
    received_at: datetime | None = None
    smtputf8: bool = False


@dataclass(frozen=True)
class LocalRecipient:
    """A recipient resolved to a local mailbox: `rcpt` as given, `mailbox` the owner's address,
    `folder` the Maildir++ folder ("" is INBOX)."""

    rcpt: str
    mailbox: str
    folder: str = ""


@dataclass
class Message:
    """The message as it will be stored: extra header lines (each ending CRLF) prepended to the
    original bytes, which are kept untouched (DKIM signatures stay valid)."""

    header_prefix: list[bytes] = field(default_factory=list)
    data: bytes = b""

    def prepend(self, line: str) -> None:
        self.header_prefix.insert(0, line.encode() + b"\r\n")

    def size(self) -> int:
        return sum(map(len, self.header_prefix)) + len(self.data)


class Delivery(Protocol):
    """One transaction's delivery to one target. `body` must make the message durable for every
    recipient (the 250 after DATA is only sent once it returns); `commit` publishes it."""

    async def add_rcpt(self, recipient: LocalRecipient) -> None: ...

    async def body(self, message: Message) -> None: ...

    async def commit(self) -> None: ...

    async def abort(self) -> None: ...


class DeliveryTarget(Protocol):
    async def start(self, envelope: Envelope) -> Delivery: ...
