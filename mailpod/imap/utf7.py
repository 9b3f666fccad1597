"""Modified UTF-7 (RFC 3501 5.1.3), the form folder names are stored in (as Dovecot does).

Clients that ENABLE UTF8=ACCEPT or IMAP4rev2 speak UTF-8 names; the connection converts at its
edge, so storage and the other clients keep seeing one spelling per folder.
"""

from __future__ import annotations

import base64
import binascii

__all__ = ["decode_mutf7", "encode_mutf7"]


def _b64(chunk: str) -> str:
    data = base64.b64encode(chunk.encode("utf-16-be")).decode("ascii")
    return "&" + data.rstrip("=").replace("/", ",") + "-"


def encode_mutf7(name: str) -> str:
    out: list[str] = []
    pending: list[str] = []
    for char in name:
        if "\x20" <= char <= "\x7e":
            if pending:
                out.append(_b64("".join(pending)))
                pending.clear()
            out.append("&-" if char == "&" else char)
        else:
            pending.append(char)
    if pending:
        out.append(_b64("".join(pending)))
    return "".join(out)


def decode_mutf7(name: str) -> str:
    """The Unicode form of a stored name; a name that is not valid modified UTF-7 (made by
    some other tool) comes back unchanged rather than failing."""
    if "&" not in name:
        return name
    out: list[str] = []
    position = 0
    while position < len(name):
        start = name.find("&", position)
        if start < 0:
            out.append(name[position:])
            break
        out.append(name[position:start])
        end = name.find("-", start)
        if end < 0:
            return name
        encoded = name[start + 1 : end]
        if not encoded:
            out.append("&")
        else:
            padded = encoded.replace(",", "/") + "=" * (-len(encoded) % 4)
            try:
                out.append(base64.b64decode(padded, validate=True).decode("utf-16-be"))
            except (binascii.Error, UnicodeDecodeError):
                return name
        position = end + 1
    return "".join(out)
