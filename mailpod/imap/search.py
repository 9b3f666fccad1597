"""Evaluating SEARCH programs (pure).

Flag, size, date, UID and sequence keys need only the index; header and body keys need the
message, which the caller parses only when `needs_message` says so. Strings match as
case-insensitive substrings of the decoded (RFC 2047, transfer encoding, charset) text, as
RFC 3501 asks; \\Recent is never set here, so NEW matches nothing and OLD everything.
"""

from __future__ import annotations

import email.utils
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime

from mailpod.imap.backend import MessageInfo
from mailpod.imap.mime import (
    Part,
    body_text,
    decode_header_value,
    header_text,
    parse_header,
    parse_message,
)
from mailpod.imap.parser import SearchKey

__all__ = [
    "Candidate",
    "Predicate",
    "SearchContext",
    "compile_key",
    "index_only_part",
    "matches",
    "needs_message",
    "needs_text",
]

_MESSAGE_KEYS = frozenset(
    {"BCC", "BODY", "CC", "FROM", "SUBJECT", "TEXT", "TO", "HEADER"}
    | {"SENTBEFORE", "SENTON", "SENTSINCE"}
)
_FLAG_KEYS = {
    "ANSWERED": ("\\Answered", True),
    "DELETED": ("\\Deleted", True),
    "DRAFT": ("\\Draft", True),
    "FLAGGED": ("\\Flagged", True),
    "SEEN": ("\\Seen", True),
    "UNANSWERED": ("\\Answered", False),
    "UNDELETED": ("\\Deleted", False),
    "UNDRAFT": ("\\Draft", False),
    "UNFLAGGED": ("\\Flagged", False),
    "UNSEEN": ("\\Seen", False),
}


_TEXT_KEYS = frozenset({"BODY", "TEXT"})
_FOLDS = (b"\n ", b"\n\t", b"\r ", b"\r\t")  # a line break inside a field value
_HEADER_STRING_KEYS = frozenset({"FROM", "TO", "CC", "BCC", "SUBJECT", "HEADER"})


def needs_message(key: SearchKey) -> bool:
    return key.name in _MESSAGE_KEYS or any(needs_message(child) for child in key.children)


def needs_text(key: SearchKey) -> bool:
    """The body is searched (BODY, TEXT); other message keys need only the header section."""
    return key.name in _TEXT_KEYS or any(needs_text(child) for child in key.children)


def index_only_part(key: SearchKey) -> SearchKey | None:
    """The keys of a top-level conjunction that the index alone decides: a message that fails
    them fails `key` whatever it contains, so it need not be read. None if there are none."""
    children = key.children if key.name == "AND" else (key,)
    cheap = tuple(child for child in children if not needs_message(child))
    if not cheap:
        return None
    return cheap[0] if len(cheap) == 1 else SearchKey("AND", children=cheap)


@dataclass(frozen=True)
class SearchContext:
    """What sequence-set keys are resolved against."""

    uids: list[int]  # the folder's UIDs, ascending (seq n is uids[n-1])
    saved: frozenset[int] = frozenset()  # SEARCHRES "$"


class Candidate:
    """One message being searched: its sequence number, its index record and, when a key
    needs it, the message (given parsed, or as bytes by `load`, parsed when a key looks)."""

    __slots__ = ("_flat_header", "_message", "_raw", "_texts", "_whole", "info", "seq")

    def __init__(self, seq: int, info: MessageInfo, message: Part | None = None) -> None:
        self.seq = seq
        self.info = info
        self._message = message
        self._raw: bytes | None = None
        self._whole = True
        self._texts: dict[str, str] | None = None
        self._flat_header: str | None = None

    def load(self, data: bytes, whole: bool) -> None:
        """The message's bytes (`whole`), or only its header section."""
        self._raw = data
        self._whole = whole
        self._message = None

    @property
    def message(self) -> Part | None:
        if self._message is None and self._raw is not None:
            self._message = parse_message(self._raw) if self._whole else parse_header(self._raw)
        return self._message

    def _header(self) -> bytes | None:
        if self._raw is not None and not self._whole:
            return self._raw
        message = self.message
        return None if message is None else message.header

    def may_contain(self, needle: str) -> bool:
        """False when no header field of the message can contain `needle` (then FROM, SUBJECT,
        HEADER… cannot match): a look at the raw header, skipping the parse of its fields. The
        header without its line ends holds every unfolded field value; encoded words (RFC 2047)
        can hide anything."""
        if "\r" in needle or "\n" in needle:
            return True
        if self._flat_header is None:
            header = self._header()
            if header is None:
                return False
            if header.isascii() and b"=?" not in header:
                # The common case, in C: ASCII lower-casing is case folding there.
                folded = needle.casefold()
                if not folded.isascii():
                    return False  # ASCII text folds to ASCII only
                lowered = header.lower()
                if folded.encode() in lowered:
                    return True
                if not any(mark in header for mark in _FOLDS):
                    return False
            text = header.decode("utf-8", "surrogateescape")
            self._flat_header = text.replace("\r", "").replace("\n", "").casefold()
        if "=?" in self._flat_header:
            return True
        return needle.casefold() in self._flat_header

    def text(self, kind: str) -> str:
        if self._texts is None:
            self._texts = {}
        if kind not in self._texts:
            message = self.message
            assert message is not None
            self._texts[kind] = (
                body_text(message)
                if kind == "body"
                else header_text(message) + "\n" + body_text(message)
            )
        return self._texts[kind]


def _contains(haystack: str, needle: str) -> bool:
    return needle.casefold() in haystack.casefold()


def _sent_date(message: Part) -> date | None:
    value = message.get("date")
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(value).date()
    except (TypeError, ValueError, IndexError):
        return None


def _in_set(key: SearchKey, value: int, star: int, saved: frozenset[int]) -> bool:
    assert key.seqset is not None
    if key.seqset.saved:
        return value in saved
    for low, high in key.seqset.ranges:
        a = star if low is None else low
        b = star if high is None else high
        if min(a, b) <= value <= max(a, b):
            return True
    return False


Predicate = Callable[[Candidate], bool]


def _true(_candidate: Candidate) -> bool:
    return True


def _false(_candidate: Candidate) -> bool:
    return False


def compile_key(key: SearchKey, context: SearchContext) -> Predicate:
    """`key` as a function of a candidate, for evaluating it over a whole folder: the program's
    structure and its flag keys are resolved once instead of once per message. The same answers
    as `matches`."""
    name = key.name
    if name in ("AND", "OR"):
        parts = [compile_key(child, context) for child in key.children]
        if len(parts) == 1:
            return parts[0]
        if len(parts) == 2:
            first, second = parts
            if name == "AND":
                return lambda c: first(c) and second(c)
            return lambda c: first(c) or second(c)
        if name == "AND":
            return lambda c: all(part(c) for part in parts)
        return lambda c: any(part(c) for part in parts)
    if name == "NOT":
        inner = compile_key(key.children[0], context)
        return lambda c: not inner(c)
    if name in ("ALL", "OLD"):
        return _true
    if name in ("NEW", "RECENT"):
        return _false
    if name in _FLAG_KEYS:
        flag, wanted = _FLAG_KEYS[name]
        if wanted:
            return lambda c: flag in c.info.flags
        return lambda c: flag not in c.info.flags
    if name in _HEADER_STRING_KEYS and key.text:
        # Most messages fail the look at the raw header: no parse, no trip through `matches`.
        needle = key.text
        return lambda c: c.may_contain(needle) and matches(key, c, context)
    return lambda c: matches(key, c, context)


def matches(key: SearchKey, candidate: Candidate, context: SearchContext) -> bool:
    name = key.name
    info = candidate.info
    if name == "AND":
        return all(matches(child, candidate, context) for child in key.children)
    if name == "OR":
        return any(matches(child, candidate, context) for child in key.children)
    if name == "NOT":
        return not matches(key.children[0], candidate, context)
    if name in ("ALL", "OLD"):
        return True
    if name in ("NEW", "RECENT"):
        return False
    if name in _FLAG_KEYS:
        flag, wanted = _FLAG_KEYS[name]
        return (flag in info.flags) == wanted
    if name == "KEYWORD":
        return key.text in info.flags
    if name == "UNKEYWORD":
        return key.text not in info.flags
    if name == "LARGER":
        return info.size > key.number
    if name == "SMALLER":
        return info.size < key.number
    if name == "MODSEQ":
        return info.modseq >= key.number
    if name == "SEQ":
        star = len(context.uids)
        if key.seqset is not None and key.seqset.saved:
            return info.uid in context.saved
        return _in_set(key, candidate.seq, star, context.saved)
    if name == "UID":
        star = context.uids[-1] if context.uids else 0
        return _in_set(key, info.uid, star, context.saved)
    if name in ("BEFORE", "ON", "SINCE"):
        day = datetime.fromtimestamp(info.internaldate, UTC).date()
        return _compare(name, day, key.day)
    message = candidate.message
    if message is None:
        return False
    if name in _HEADER_STRING_KEYS and key.text and not candidate.may_contain(key.text):
        return False
    if name in ("SENTBEFORE", "SENTON", "SENTSINCE"):
        sent = _sent_date(message)
        return sent is not None and _compare(name[4:], sent, key.day)
    if name == "HEADER":
        values = message.get_all(key.field)
        if not key.text:
            return bool(values)  # an empty string matches every message with the field
        return any(_contains(decode_header_value(v), key.text) for v in values)
    if name in ("FROM", "TO", "CC", "BCC", "SUBJECT"):
        return any(
            _contains(decode_header_value(v), key.text) for v in message.get_all(name.lower())
        )
    if name == "BODY":
        return _contains(candidate.text("body"), key.text)
    if name == "TEXT":
        return _contains(candidate.text("text"), key.text)
    raise ValueError(f"unknown search key {name}")  # the parser admits no other


def _compare(name: str, day: date, wanted: date | None) -> bool:
    assert wanted is not None
    if name == "BEFORE":
        return day < wanted
    if name == "ON":
        return day == wanted
    return day >= wanted  # SINCE
