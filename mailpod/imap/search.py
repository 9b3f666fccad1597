"""Evaluating SEARCH programs (pure).

Flag, size, date, UID and sequence keys need only the index; header and body keys need the
message, which the caller parses only when `needs_message` says so. Strings match as
case-insensitive substrings of the decoded (RFC 2047, transfer encoding, charset) text, as
RFC 3501 asks; \\Recent is never set here, so NEW matches nothing and OLD everything.
"""

from __future__ import annotations

import email.utils
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

from mailpod.imap.backend import MessageInfo
from mailpod.imap.mime import Part, body_text, decode_header_value, header_text
from mailpod.imap.parser import SearchKey

__all__ = ["Candidate", "SearchContext", "matches", "needs_message"]

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


def needs_message(key: SearchKey) -> bool:
    return key.name in _MESSAGE_KEYS or any(needs_message(child) for child in key.children)


@dataclass(frozen=True)
class SearchContext:
    """What sequence-set keys are resolved against."""

    uids: list[int]  # the folder's UIDs, ascending (seq n is uids[n-1])
    saved: frozenset[int] = frozenset()  # SEARCHRES "$"


@dataclass
class Candidate:
    seq: int
    info: MessageInfo
    message: Part | None = None
    _texts: dict[str, str] = field(default_factory=dict)

    def text(self, kind: str) -> str:
        if kind not in self._texts:
            assert self.message is not None
            self._texts[kind] = (
                body_text(self.message)
                if kind == "body"
                else header_text(self.message) + "\n" + body_text(self.message)
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
