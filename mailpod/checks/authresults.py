"""Authentication-Results (RFC 8601): the header we add, and removal of forged ones.

Any incoming Authentication-Results whose authserv-id is ours is removed before delivery
(§5): only we may speak for our name. Other header bytes are kept exactly as they arrived, so
DKIM signatures over them stay verifiable later."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

_HEADER_FIELD: Final = re.compile(rb"[^ \t\r\n][^\r\n]*\r\n(?:[ \t][^\r\n]*\r\n)*")
_COMMENT: Final = re.compile(r"\([^()]*\)")
_UNSAFE: Final = re.compile(r"[^\x21-\x7e]|[;()\\\"]")


def _authserv_id(raw_value: str) -> str:
    value = _COMMENT.sub(" ", raw_value.replace("\r\n", ""))
    return value.split(";", 1)[0].strip().split()[0].lower() if value.strip() else ""


def strip_ours(data: bytes, authserv_id: str) -> tuple[bytes, int]:
    """`data` without the Authentication-Results fields claiming `authserv_id`, and how many
    were removed. Only the header section is touched; nothing is re-encoded."""
    end = data.find(b"\r\n\r\n")
    header_end = len(data) if end < 0 else end + 2
    header = data[:header_end]
    if b"uthentication-" not in header and b"UTHENTICATION-" not in header:
        return data, 0  # the common case costs one scan
    wanted = authserv_id.lower()
    kept: list[bytes] = []
    removed = 0
    position = 0
    for match in _HEADER_FIELD.finditer(header):
        raw = match.group(0)
        name, colon, value = raw.partition(b":")
        if (
            colon
            and name.rstrip(b" \t").lower() == b"authentication-results"
            and _authserv_id(value.decode("utf-8", "replace")) == wanted
        ):
            kept.append(header[position : match.start()])
            position = match.end()
            removed += 1
    if not removed:
        return data, 0
    kept.append(data[position:])
    return b"".join(kept), removed


def _safe(value: str) -> str:
    """A property value as a token: anything that could end or escape it is dropped."""
    return _UNSAFE.sub("", value)[:255]


def method(name: str, result: str, comment: str = "", **properties: str) -> str:
    """One resinfo: `name=result (comment) ptype.prop=value…`; `header_d` means header.d."""
    text = f"{name}={result}"
    if comment:
        text += " (" + comment.replace("(", "").replace(")", "").replace("\\", "")[:200] + ")"
    for key, value in properties.items():
        if value:
            text += f" {key.replace('_', '.', 1)}={_safe(value)}"
    return text


def header(authserv_id: str, results: Iterable[str]) -> str:
    """The whole field, folded one method a line (without the final CRLF)."""
    parts = list(results) or ["none"]
    return f"Authentication-Results: {authserv_id};\r\n\t" + ";\r\n\t".join(parts)
