"""The one SMTP error type: what the client is told, what we log, and whether to retry."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SmtpError(Exception):
    """`code`/`enhanced`/`text` go on the wire (generic: no internals leak); `reason` is logged."""

    code: int
    enhanced: str
    text: str
    reason: str = ""

    @property
    def temporary(self) -> bool:
        return 400 <= self.code < 500

    def reply(self) -> str:
        return f"{self.code} {self.enhanced} {self.text}"

    def __str__(self) -> str:
        return f"{self.reply()} ({self.reason})" if self.reason else self.reply()


def internal_error(reason: str) -> SmtpError:
    """An unexpected exception: a temporary failure, never a traceback on the wire."""
    return SmtpError(451, "4.3.0", "Internal server error, try again later", reason)
