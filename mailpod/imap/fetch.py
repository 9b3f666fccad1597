"""Rendering one message's FETCH response (pure)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from mailpod.imap.backend import MessageInfo
from mailpod.imap.mime import (
    Part,
    bodystructure,
    envelope,
    parse_header,
    parse_message,
    section_bytes,
)
from mailpod.imap.parser import FetchAttr, Section, format_date_time
from mailpod.imap.response import render_list
from mailpod.imap.selected import flags_value

__all__ = ["needs_body", "needs_header_only", "render_fetch", "sets_seen"]

_CONTENT = frozenset(
    {"ENVELOPE", "BODYSTRUCTURE", "BODY", "RFC822", "RFC822.HEADER", "RFC822.TEXT"}
)
_ALIASES = {  # RFC822.* are old names for BODY sections
    "RFC822": Section(),
    "RFC822.HEADER": Section(text="HEADER"),
    "RFC822.TEXT": Section(text="TEXT"),
}


_HEADER_SECTIONS = frozenset({"HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT"})


def needs_body(attrs: Sequence[FetchAttr]) -> bool:
    return any(attr.name in _CONTENT for attr in attrs)


def _header_only(attr: FetchAttr) -> bool:
    if attr.name not in _CONTENT:
        return True
    if attr.name in ("ENVELOPE", "RFC822.HEADER"):
        return True
    section = attr.section
    return (
        attr.name == "BODY"
        and section is not None
        and not section.parts
        and section.text in _HEADER_SECTIONS
    )


def needs_header_only(attrs: Sequence[FetchAttr]) -> bool:
    """The message is needed, but only its top-level header section (ENVELOPE, BODY[HEADER…],
    RFC822.HEADER): `render_fetch` then takes just that, with `header_only`."""
    return needs_body(attrs) and all(_header_only(attr) for attr in attrs)


def sets_seen(attrs: Sequence[FetchAttr]) -> bool:
    """BODY[...] without .PEEK, RFC822 and RFC822.TEXT mark the message \\Seen."""
    return any(
        (attr.section is not None and not attr.peek) or attr.name in ("RFC822", "RFC822.TEXT")
        for attr in attrs
    )


def _literal(data: bytes) -> bytes:
    return b"{%d}\r\n" % len(data) + data


def render_fetch(
    seq: int,
    info: MessageInfo,
    attrs: Sequence[FetchAttr],
    data: bytes | None,
    *,
    add_flags: bool = False,
    header_only: bool = False,
) -> bytes:
    """`* seq FETCH (...)` with CRLF. `data` is the message (needed if `needs_body`), or only
    its header section when `header_only` (enough if `needs_header_only`); `add_flags` appends
    FLAGS when the fetch itself changed them (implicit \\Seen)."""
    items: list[bytes] = []
    message: Part | None = None

    def parsed() -> Part:
        nonlocal message
        if message is None:
            message = parse_header(data or b"") if header_only else parse_message(data or b"")
        return message

    for attr in attrs:
        name = attr.name
        if name == "FLAGS":
            items.append(b"FLAGS " + flags_value(info.flags))
        elif name == "UID":
            items.append(b"UID %d" % info.uid)
        elif name == "INTERNALDATE":
            moment = datetime.fromtimestamp(info.internaldate, UTC)
            items.append(b'INTERNALDATE "' + format_date_time(moment).encode() + b'"')
        elif name == "RFC822.SIZE":
            items.append(b"RFC822.SIZE %d" % info.size)
        elif name == "MODSEQ":
            items.append(b"MODSEQ (%d)" % info.modseq)
        elif name == "ENVELOPE":
            items.append(b"ENVELOPE " + render_list(envelope(parsed())))
        elif name == "BODYSTRUCTURE":
            items.append(b"BODYSTRUCTURE " + render_list(bodystructure(parsed())))
        elif name == "BODY" and attr.section is None:
            items.append(b"BODY " + render_list(bodystructure(parsed(), extensible=False)))
        elif name in _ALIASES:
            content = section_bytes(parsed(), _ALIASES[name])
            items.append(name.encode() + b" " + _literal(content))
        else:
            assert attr.section is not None
            if attr.section == Section():
                content = data or b""  # BODY[]: the stored bytes, no parsing needed
            else:
                content = section_bytes(parsed(), attr.section)
            if attr.partial is not None:
                origin, length = attr.partial
                content = content[origin : origin + length]
            items.append(attr.response_name().encode() + b" " + _literal(content))
    if add_flags and not any(attr.name == "FLAGS" for attr in attrs):
        items.append(b"FLAGS " + flags_value(info.flags))
    return b"* %d FETCH (" % seq + b" ".join(items) + b")\r\n"
