"""Message structure for FETCH and SEARCH (pure): MIME parts as exact byte ranges, ENVELOPE,
BODYSTRUCTURE, BODY[section] and decoded text for searching.

The `email` package re-serialises what it parses, but IMAP sizes and sections must be the stored
bytes exactly (a client checks RFC822.SIZE against BODY[], and BODY[1.2] against the structure),
so parts are split here on the raw bytes; `email` is only used to read header parameters.
"""

from __future__ import annotations

import base64
import binascii
import email.errors
import email.header
import email.message
import email.utils
import quopri
import re
from dataclasses import dataclass, field
from functools import cached_property

from mailpod.imap.parser import Section
from mailpod.imap.response import Value

__all__ = ["Part", "bodystructure", "envelope", "parse_header", "parse_message", "section_bytes"]

MAX_DEPTH = 20
"""Nesting beyond this is treated as an opaque leaf: deep MIME is an attack, not a message."""

_LINE_END = re.compile(rb"\r?\n")


@dataclass
class Part:
    """One MIME entity: `header` includes the blank line that ends it; `raw` = header + body."""

    header: bytes
    body: bytes
    depth: int = 0
    default_type: str = "text/plain"
    children: list[Part] = field(default_factory=list)
    message: Part | None = None  # the embedded message of a message/rfc822 part

    @property
    def raw(self) -> bytes:
        return self.header + self.body

    @cached_property
    def fields(self) -> list[tuple[str, bytes, str]]:
        """(lower-case name, raw lines with their line ends, unfolded value) per header field."""
        found: list[tuple[str, bytes, str]] = []
        lines = self.header.splitlines(keepends=True)
        for line in lines:
            if not line.strip(b"\r\n"):
                break  # the blank line that ends the header
            if line[:1] in (b" ", b"\t") and found:
                key, raw, text = found[-1]
                found[-1] = (key, raw + line, text + _text(line.rstrip(b"\r\n")))
                continue
            name, colon, value = line.partition(b":")
            if not colon:
                continue  # not a header line: ignored, as every reader does
            found.append(
                (
                    _text(name.strip()).lower(),
                    line,
                    _text(value.rstrip(b"\r\n")).lstrip(" \t"),
                )
            )
        return found

    def get(self, name: str) -> str | None:
        name = name.lower()
        for key, _, value in self.fields:
            if key == name:
                return value.strip()
        return None

    def get_all(self, name: str) -> list[str]:
        name = name.lower()
        return [value.strip() for key, _, value in self.fields if key == name]

    @cached_property
    def _content_type(self) -> email.message.Message:
        holder = email.message.Message()
        holder.set_default_type(self.default_type)
        value = self.get("content-type")
        if value:
            holder["Content-Type"] = value
        return holder

    @property
    def content_type(self) -> tuple[str, str]:
        maintype = self._content_type.get_content_maintype()
        subtype = self._content_type.get_content_subtype()
        return maintype, subtype

    def params(self) -> list[tuple[str, str]]:
        found = []
        for key, value in self._content_type.get_params(failobj=[])[1:]:
            found.append((key, email.utils.collapse_rfc2231_value(value)))
        return found

    @property
    def is_multipart(self) -> bool:
        return self.content_type[0] == "multipart"

    def subparts(self) -> list[Part]:
        """What part numbers index: a multipart's parts; a message/rfc822's embedded message's
        parts (or the message itself when it is not multipart); otherwise the part itself."""
        if self.children:
            return self.children
        if self.message is not None:
            return self.message.subparts()
        return [self]


def _text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def _split_header(data: bytes) -> tuple[bytes, bytes]:
    if data.startswith(b"\r\n"):
        return b"\r\n", data[2:]
    if data.startswith(b"\n"):
        return b"\n", data[1:]
    ends = [(i, 4) for i in (data.find(b"\r\n\r\n"),) if i >= 0]
    ends += [(i, 2) for i in (data.find(b"\n\n"),) if i >= 0]
    if not ends:
        return data, b""
    index, length = min(ends)
    return data[: index + length], data[index + length :]


def parse_message(data: bytes, depth: int = 0) -> Part:
    header, body = _split_header(data)
    part = Part(header, body, depth)
    _parse_children(part)
    return part


def parse_header(header: bytes) -> Part:
    """A message of which only the header section is at hand (as `parse_message` would split
    it): enough for its fields, ENVELOPE and BODY[HEADER…], not for its structure or body."""
    return Part(header, b"")


def _parse_children(part: Part) -> None:
    if part.depth >= MAX_DEPTH:
        return
    maintype, subtype = part.content_type
    if maintype == "multipart":
        boundary = part._content_type.get_boundary()
        if not boundary:
            return
        digest = subtype == "digest"
        for chunk in _split_multipart(part.body, boundary.encode("utf-8", "surrogateescape")):
            header, body = _split_header(chunk)
            # RFC 2046 5.1.5: in a digest, a part without Content-Type is a message.
            default = "message/rfc822" if digest else "text/plain"
            child = Part(header, body, part.depth + 1, default_type=default)
            _parse_children(child)
            part.children.append(child)
    elif (maintype, subtype) in (("message", "rfc822"), ("message", "global")):
        part.message = parse_message(part.body, part.depth + 1)


def _split_multipart(body: bytes, boundary: bytes) -> list[bytes]:
    """The parts between delimiter lines; the preamble and epilogue are dropped. A part ends
    before the line break that precedes the next delimiter (RFC 2046 5.1.1)."""
    delimiter = re.compile(
        rb"(?:\A|\r?\n)--" + re.escape(boundary) + rb"(--)?[ \t]*(?=\r?\n|\Z)", re.MULTILINE
    )
    parts: list[bytes] = []
    start: int | None = None
    for match in delimiter.finditer(body):
        if start is not None:
            parts.append(body[start : match.start()])
        if match[1]:
            return parts
        end = match.end()
        if body.startswith(b"\r\n", end):
            end += 2
        elif body.startswith(b"\n", end):
            end += 1
        start = end
    if start is not None:  # no closing delimiter: the last part runs to the end
        parts.append(body[start:])
    return parts


# --- ENVELOPE -----------------------------------------------------------------------------------


def _addresses(value: str | None) -> Value:
    if not value:
        return None
    found: list[Value] = []
    for name, address in email.utils.getaddresses([value]):
        if not address:
            continue
        mailbox, at, host = address.rpartition("@")
        if not at:
            mailbox, host = address, ""
        found.append([name or None, None, mailbox or None, host or None])
    return found or None


def envelope(message: Part) -> list[Value]:
    sender_default = message.get("from")
    return [
        message.get("date"),
        message.get("subject"),
        _addresses(message.get("from")),
        _addresses(message.get("sender") or sender_default),
        _addresses(message.get("reply-to") or sender_default),
        _addresses(message.get("to")),
        _addresses(message.get("cc")),
        _addresses(message.get("bcc")),
        message.get("in-reply-to"),
        message.get("message-id"),
    ]


# --- BODYSTRUCTURE ------------------------------------------------------------------------------


def _lines(body: bytes) -> int:
    count = body.count(b"\n")
    return count + 1 if body and not body.endswith(b"\n") else count


def _param_list(pairs: list[tuple[str, str]]) -> Value:
    flat: list[Value] = []
    for key, value in pairs:
        flat += [key.upper(), value]
    return flat or None


def _disposition(part: Part) -> Value:
    value = part.get("content-disposition")
    if not value:
        return None
    holder = email.message.Message()
    holder["Content-Disposition"] = value
    params = holder.get_params(header="content-disposition", failobj=[])
    if not params:
        return None
    kind = params[0][0]
    rest = [(k, email.utils.collapse_rfc2231_value(v)) for k, v in params[1:]]
    return [kind.upper(), _param_list(rest)]


def _language(part: Part) -> Value:
    value = part.get("content-language")
    if not value:
        return None
    return [tag.strip() for tag in value.split(",") if tag.strip()] or None


def bodystructure(part: Part, extensible: bool = True) -> list[Value]:
    """BODYSTRUCTURE (extensible) or BODY (not) of `part`."""
    if part.children:
        result: list[Value] = [bodystructure(child, extensible) for child in part.children]
        result.append(part.content_type[1].upper())
        if extensible:
            result += [
                _param_list(part.params()),
                _disposition(part),
                _language(part),
                part.get("content-location"),
            ]
        return result
    maintype, subtype = part.content_type
    if maintype == "multipart":  # no parts (or no boundary): show an empty text part
        maintype, subtype = "text", "plain"
    params = part.params()
    if maintype == "text" and not any(k.lower() == "charset" for k, _ in params):
        params = [("charset", "us-ascii"), *params]
    result = [
        maintype.upper(),
        subtype.upper(),
        _param_list(params),
        part.get("content-id"),
        part.get("content-description"),
        (part.get("content-transfer-encoding") or "7BIT").upper(),
        len(part.body),
    ]
    if part.message is not None:
        result += [
            envelope(part.message),
            bodystructure(part.message, extensible),
            _lines(part.body),
        ]
    elif maintype == "text":
        result.append(_lines(part.body))
    if extensible:
        result += [part.get("content-md5"), _disposition(part), _language(part)]
        result.append(part.get("content-location"))
    return result


# --- BODY[section] ------------------------------------------------------------------------------


def section_bytes(root: Part, section: Section) -> bytes:
    """The bytes of `section`; empty for a section the message does not have."""
    part = root
    for number in section.parts:
        subparts = part.subparts()
        if number > len(subparts):
            return b""
        part = subparts[number - 1]
    text = section.text
    if not text:
        return part.raw if not section.parts else part.body
    if text == "MIME":
        return part.header
    message = part if not section.parts else part.message
    if message is None:
        return b""
    if text == "TEXT":
        return message.body
    if text == "HEADER":
        return message.header
    wanted = {name.lower() for name in section.fields}
    keep = text == "HEADER.FIELDS"
    lines = [raw for name, raw, _ in message.fields if (name in wanted) == keep]
    return b"".join(lines) + b"\r\n"


# --- decoded text, for SEARCH -------------------------------------------------------------------


def decode_header_value(value: str) -> str:
    """RFC 2047 encoded words decoded; a value that cannot be decoded is searched as it is."""
    if "=?" not in value:
        return value
    try:
        return str(email.header.make_header(email.header.decode_header(value)))
    except (LookupError, UnicodeError, ValueError, email.errors.HeaderParseError):
        return value


def _decode_body(part: Part) -> str:
    encoding = (part.get("content-transfer-encoding") or "").lower()
    data = part.body
    try:
        if encoding == "base64":
            data = base64.b64decode(re.sub(rb"[^A-Za-z0-9+/=]", b"", data) + b"==")
        elif encoding == "quoted-printable":
            data = quopri.decodestring(data)
    except (binascii.Error, ValueError):
        pass  # search what is there
    charset = {k.lower(): v for k, v in part.params()}.get("charset", "utf-8")
    try:
        return data.decode(charset, "replace")
    except LookupError:
        return data.decode("utf-8", "replace")


def body_text(message: Part) -> str:
    """The decoded text of every text/* leaf (and of embedded messages), for BODY/TEXT."""
    texts: list[str] = []

    def walk(part: Part) -> None:
        if part.children:
            for child in part.children:
                walk(child)
        elif part.message is not None:
            texts.append(header_text(part.message))
            walk(part.message)
        elif part.content_type[0] in ("text", "message"):
            texts.append(_decode_body(part))

    walk(message)
    return "\n".join(texts)


def header_text(message: Part) -> str:
    return "\n".join(f"{name}: {decode_header_value(value)}" for name, _, value in message.fields)
