"""What the SMTP handler needs from the running pod, behind one object: the current snapshot,
authentication, quota, delivery and metrics."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from mailpod.checks.inbound import InboundChecker
from mailpod.config import ListenerKind
from mailpod.pipeline import Envelope, LocalRecipient, Message
from mailpod.queue.store import RemoteRecipient
from mailpod.ratelimit import ConnectionCounter
from mailpod.state import Snapshot


class AuthOutcome(Protocol):
    @property
    def user(self) -> str | None: ...

    @property
    def locked(self) -> bool: ...


class SmtpRuntime(Protocol):
    hostname: str
    inbound: InboundChecker
    """The MX's checks (port 25 only)."""

    @property
    def connections(self) -> ConnectionCounter:
        """Open connections per client address, pod-wide."""

    def snapshot(self) -> Snapshot: ...

    def is_trusted_proxy(self, peer_ip: str) -> bool: ...

    async def authenticate(self, username: str, password: str, client_ip: str) -> AuthOutcome: ...

    def count_auth_failure(self, mechanism: str, reason: str) -> None: ...

    def check_remote_accepted(self, address: str) -> None:
        """Raise SmtpError unless the outbound queue can take mail for `address`."""

    def reverse_srs(self, address: str) -> str | None:
        """The original address behind one of our valid SRS addresses, else None."""

    async def over_quota(self, mailbox: str, quota_bytes: int, incoming: int) -> bool: ...

    async def deliver(
        self,
        envelope: Envelope,
        local: dict[str, list[LocalRecipient]],
        message: Message,
        *,
        remote: Sequence[RemoteRecipient] = (),
        dsn: Mapping[str, str] | None = None,
    ) -> None:
        """Durably store the message for every local recipient and queue it for every remote
        one (with the RFC 3461 RET/ENVID in `dsn`), or raise."""

    def count_message(
        self, kind: ListenerKind, result: str, size: int = 0, seconds: float = 0.0
    ) -> None: ...
