"""SMTP path checks that keep us from ever relaying: a recipient must be a plain
local-part@domain with nothing a downstream system might re-route."""

from __future__ import annotations

import re

from mailpod.errors import SmtpError

_DOT_ATOM = re.compile(r"[A-Za-z0-9#$&'*+=?^_`{|}~-]+(\.[A-Za-z0-9#$&'*+=?^_`{|}~-]+)*")
_DOMAIN = re.compile(r"([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z0-9-]{2,63}")
_UTF8_LOCAL = re.compile(
    r"[^\x00-\x20\x7f\"(),:;<>@\[\\\]%!]+(\.[^\x00-\x20\x7f\"(),:;<>@\[\\\]%!]+)*"
)

RELAY_DENIED = SmtpError(550, "5.7.1", "Relaying denied")


def check_recipient_syntax(address: str, smtputf8: bool) -> tuple[str, str]:
    """(local part, domain) of an acceptable recipient, else the relay-denied error.

    Rejected: source routes and bang paths, `%` hacks, quoted local parts and IP literals.
    Each is a way to make some MTA behind us forward elsewhere; no mailbox of ours needs them.
    Note `%` is left out of _DOT_ATOM on purpose."""
    if address.count("@") != 1 or address.startswith("@"):
        raise _denied(f"source route or bad path {address!r}")
    local, domain = address.split("@")
    if domain.startswith("["):
        raise _denied(f"IP literal {address!r}")
    if '"' in local or "%" in local or "!" in local:
        raise _denied(f"quoted, % or ! local part {address!r}")
    local_ok = _DOT_ATOM.fullmatch(local) or (smtputf8 and _UTF8_LOCAL.fullmatch(local))
    if not local_ok or not _DOMAIN.fullmatch(domain):
        raise SmtpError(
            501, "5.1.3", "Bad recipient address syntax", f"unparsable recipient {address!r}"
        )
    return local, domain


def _denied(reason: str) -> SmtpError:
    return SmtpError(RELAY_DENIED.code, RELAY_DENIED.enhanced, RELAY_DENIED.text, reason)
