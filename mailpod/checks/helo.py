"""HELO sanity (RFC 5321 §4.1.1.1 / §4.1.3): the name a client gives must be a domain name or
an address literal, an address literal must be the client's own, and no client may claim to be
us. Only forged or malformed names are refused; a real but unresolvable name is not."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection
from typing import Final

_LABEL: Final = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?"
_NAME: Final = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*\.?$")


def problem(helo: str, client_ip: str, our_names: Collection[str]) -> str:
    """Why `helo` is refused, or "" if it is acceptable."""
    if not helo:
        return "empty HELO"
    if helo.startswith("[") and helo.endswith("]"):
        literal = helo[1:-1]
        if literal.lower().startswith("ipv6:"):
            literal = literal[5:]
        try:
            claimed = ipaddress.ip_address(literal)
            client = ipaddress.ip_address(client_ip)
        except ValueError:
            return "malformed address literal"
        if isinstance(client, ipaddress.IPv6Address) and client.ipv4_mapped is not None:
            client = client.ipv4_mapped
        return "" if claimed == client else "address literal is not the client's address"
    if len(helo) > 253 or not _NAME.match(helo):
        return "HELO is not a domain name"
    if helo.lower().rstrip(".") in our_names:
        return "HELO claims to be this server"
    return ""
