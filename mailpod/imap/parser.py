"""A pure IMAP command parser (RFC 3501/9051 grammar, plus LITERAL+, UIDPLUS, MOVE, ESEARCH).

`parse_command(data)` takes one complete command as the client sent it — the line, and every
literal `{n}`/`{n+}` with its bytes, inline — and returns a typed `Command`. It does no I/O: the
connection handler frames commands (see `literal_at_end`) and dispatches `do_<command.name>`.
A `ParseError` carries the tag when it could be read, so the reply can be a tagged BAD.

Strings come back as `str` decoded from UTF-8 with surrogateescape: nothing is lost, and a
password with arbitrary bytes reaches the authenticator intact.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from typing import TypeVar

__all__ = [
    "SYSTEM_FLAGS",
    "Append",
    "Authenticate",
    "Command",
    "CopyMove",
    "Enable",
    "Expunge",
    "Fetch",
    "FetchAttr",
    "Id",
    "ListCommand",
    "Login",
    "MailboxCommand",
    "ParseError",
    "QresyncParams",
    "Rename",
    "Search",
    "SearchKey",
    "Section",
    "Select",
    "SequenceSet",
    "Status",
    "Store",
    "literal_at_end",
    "normalize_mailbox",
    "parse_command",
]

_T = TypeVar("_T")

SYSTEM_FLAGS = {
    flag.lower(): flag for flag in ("\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft")
}
_RECENT = "\\Recent"

# atom-specials: ( ) { SP CTL % * " \ ] (RFC 3501 section 9). ATOM-CHAR is any other CHAR.
_ATOM_SPECIALS = frozenset(b'(){ %*"\\]') | frozenset(range(0x20)) | {0x7F}
_ATOM_CHARS = bytes(c for c in range(0x20, 0x7F) if c not in _ATOM_SPECIALS)
_ASTRING_CHARS = _ATOM_CHARS + b"]"
_LIST_CHARS = _ASTRING_CHARS + b"%*"
_TAG_CHARS = _ASTRING_CHARS.replace(b"+", b"")

_LITERAL_AT_END = re.compile(rb"\{(\d{1,19})(\+?)\}\r?\n\Z")
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DATE_TIME = re.compile(
    r"([ \d]\d)-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)", re.ASCII
)

MAX_NESTING = 32
"""Parenthesised SEARCH keys deeper than this are an attack on the stack, not a search."""


class ParseError(Exception):
    """Syntax error: answer BAD (tagged when `tag` is known) and keep the connection."""

    def __init__(self, text: str, tag: str | None = None) -> None:
        super().__init__(text)
        self.text = text
        self.tag = tag


def literal_at_end(line: bytes) -> tuple[int, bool] | None:
    """(size, non-synchronizing) when `line` ends with a literal announcement `{n}`/`{n+}`."""
    match = _LITERAL_AT_END.search(line)
    if match is None:
        return None
    return int(match[1]), bool(match[2])


def normalize_mailbox(name: str) -> str:
    """INBOX is case-insensitive (also as the first level of a hierarchy); other names are not."""
    head, dot, rest = name.partition(".")
    if head.upper() == "INBOX":
        return "INBOX" + dot + rest
    return name


# --- values -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SequenceSet:
    """A sequence set: ranges of numbers, `None` standing for `*`; or `$` (the saved result)."""

    ranges: tuple[tuple[int | None, int | None], ...] = ()
    saved: bool = False

    def largest_explicit(self) -> int:
        return max((n for pair in self.ranges for n in pair if n is not None), default=0)

    def select(self, values: Sequence[int]) -> list[int]:
        """The members of `values` (sorted ascending, e.g. a folder's UIDs or `range(1, n+1)`)
        that fall in this set, ascending and without duplicates. `*` is the last value."""
        if not values:
            return []
        star = values[-1]
        spans: list[tuple[int, int]] = []
        for low, high in self.ranges:
            a = star if low is None else low
            b = star if high is None else high
            if a > b:  # "5:2" means 2:5; "n:*" with n beyond the largest includes the largest
                a, b = b, a
            start = bisect.bisect_left(values, a)
            stop = bisect.bisect_right(values, b)
            if start < stop:
                spans.append((start, stop))
        spans.sort()
        result: list[int] = []
        covered = 0
        for start, stop in spans:
            start = max(start, covered)
            if start < stop:
                result.extend(values[start:stop])
                covered = stop
        return result

    def __str__(self) -> str:
        if self.saved:
            return "$"

        def one(n: int | None) -> str:
            return "*" if n is None else str(n)

        return ",".join(one(a) if a == b else f"{one(a)}:{one(b)}" for a, b in self.ranges)

    @classmethod
    def of(cls, numbers: Sequence[int]) -> SequenceSet:
        """The compact set of `numbers` (e.g. for COPYUID): runs become ranges."""
        ranges: list[tuple[int | None, int | None]] = []
        for number in numbers:
            if ranges:
                low, high = ranges[-1]
                if high is not None and number == high + 1:
                    ranges[-1] = (low, number)
                    continue
            ranges.append((number, number))
        return cls(tuple(ranges))


@dataclass(frozen=True, slots=True)
class Section:
    """A BODY[...] section: part numbers, then HEADER, HEADER.FIELDS[.NOT] (fields), TEXT, MIME
    or nothing (the whole part)."""

    parts: tuple[int, ...] = ()
    text: str = ""
    fields: tuple[str, ...] = ()

    def __str__(self) -> str:
        spec = ".".join(map(str, self.parts))
        if self.text:
            spec = f"{spec}.{self.text}" if spec else self.text
        if self.text.startswith("HEADER.FIELDS"):
            spec += " (" + " ".join(self.fields) + ")"
        return spec


@dataclass(frozen=True, slots=True)
class FetchAttr:
    """One FETCH data item. `name` is FLAGS, UID, INTERNALDATE, RFC822.SIZE, ENVELOPE,
    BODYSTRUCTURE, BODY (structure without extensions when `section` is None), RFC822,
    RFC822.HEADER, RFC822.TEXT or MODSEQ."""

    name: str
    section: Section | None = None
    partial: tuple[int, int] | None = None
    peek: bool = False

    def response_name(self) -> str:
        if self.section is None:
            return self.name
        origin = f"<{self.partial[0]}>" if self.partial else ""
        return f"BODY[{self.section}]{origin}"


@dataclass(frozen=True, slots=True)
class SearchKey:
    """A node of a SEARCH program. `name` is the key (FROM, SINCE, NOT, OR…); "AND" is a
    parenthesised list and the whole program; "SEQ" a bare sequence set."""

    name: str
    text: str = ""
    field: str = ""
    number: int = 0
    day: date | None = None
    seqset: SequenceSet | None = None
    children: tuple[SearchKey, ...] = ()


# --- commands -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Command:
    """A command without arguments (CAPABILITY, NOOP, IDLE…); the base of all others."""

    tag: str
    name: str


@dataclass(frozen=True, slots=True)
class Login(Command):
    username: str
    password: str

    def __repr__(self) -> str:  # never let a password reach a log line through repr()
        return f"Login(tag={self.tag!r}, username={self.username!r}, password=<hidden>)"


@dataclass(frozen=True, slots=True)
class Authenticate(Command):
    mechanism: str
    initial: bytes | None  # SASL-IR, already base64-decoded ("=" is b"")

    def __repr__(self) -> str:
        return f"Authenticate(tag={self.tag!r}, mechanism={self.mechanism!r})"


@dataclass(frozen=True, slots=True)
class Id(Command):
    params: tuple[tuple[str, str | None], ...] | None


@dataclass(frozen=True, slots=True)
class Enable(Command):
    capabilities: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class QresyncParams:
    """SELECT's QRESYNC parameter (RFC 7162 3.2.5): what the client has cached."""

    uidvalidity: int
    modseq: int
    known_uids: SequenceSet | None = None


@dataclass(frozen=True, slots=True)
class Select(Command):
    """SELECT or EXAMINE."""

    mailbox: str
    condstore: bool
    qresync: QresyncParams | None = None


@dataclass(frozen=True, slots=True)
class MailboxCommand(Command):
    """CREATE (with optional USE special-use attributes), DELETE, SUBSCRIBE, UNSUBSCRIBE."""

    mailbox: str
    special_use: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Rename(Command):
    old: str
    new: str


@dataclass(frozen=True, slots=True)
class ListCommand(Command):
    """LIST (basic or extended) and LSUB."""

    reference: str
    patterns: tuple[str, ...]
    selection: tuple[str, ...]
    returns: tuple[str, ...]
    status_items: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Status(Command):
    mailbox: str
    items: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Append(Command):
    mailbox: str
    flags: tuple[str, ...]
    date: datetime | None
    message: bytes

    def __repr__(self) -> str:
        return f"Append(tag={self.tag!r}, mailbox={self.mailbox!r}, size={len(self.message)})"


@dataclass(frozen=True, slots=True)
class Search(Command):
    uid: bool
    charset: str | None
    key: SearchKey
    returns: tuple[str, ...] | None  # None: plain SEARCH; otherwise ESEARCH RETURN options


@dataclass(frozen=True, slots=True)
class Fetch(Command):
    uid: bool
    seqset: SequenceSet
    attrs: tuple[FetchAttr, ...]
    changedsince: int | None
    vanished: bool = False  # QRESYNC: also report expunged UIDs as VANISHED (EARLIER)


@dataclass(frozen=True, slots=True)
class Store(Command):
    uid: bool
    seqset: SequenceSet
    mode: str  # "+", "-" or "" (replace)
    silent: bool
    flags: tuple[str, ...]
    unchangedsince: int | None


@dataclass(frozen=True, slots=True)
class CopyMove(Command):
    """COPY or MOVE."""

    uid: bool
    seqset: SequenceSet
    mailbox: str


@dataclass(frozen=True, slots=True)
class Expunge(Command):
    uids: SequenceSet | None  # UID EXPUNGE's set


# --- the cursor ---------------------------------------------------------------------------------


class _Cursor:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.depth = 0

    def error(self, text: str) -> ParseError:
        return ParseError(text)

    def peek(self) -> int | None:
        return self.data[self.pos] if self.pos < len(self.data) else None

    def at_end(self) -> bool:
        return self.pos >= len(self.data)

    def expect(self, literal: bytes) -> None:
        if not self.data.startswith(literal, self.pos):
            raise self.error(f"expected {literal.decode()!r}")
        self.pos += len(literal)

    def sp(self) -> None:
        self.expect(b" ")

    def maybe(self, literal: bytes) -> bool:
        if self.data.startswith(literal, self.pos):
            self.pos += len(literal)
            return True
        return False

    def maybe_upper(self, word: bytes) -> bool:
        """Consume the case-insensitive keyword `word` if it is next (followed by a delimiter)."""
        end = self.pos + len(word)
        if self.data[self.pos : end].upper() == word:
            following = self.data[end : end + 1]
            if following in (b"", b" ", b")", b"("):
                self.pos = end
                return True
        return False

    def end(self) -> None:
        if not self.at_end():
            raise self.error("unexpected characters at the end of the command")

    def _run(self, allowed: bytes) -> bytes:
        start = self.pos
        data = self.data
        while self.pos < len(data) and data[self.pos] in allowed:
            self.pos += 1
        return data[start : self.pos]

    def atom(self) -> str:
        value = self._run(_ATOM_CHARS)
        if not value:
            raise self.error("expected an atom")
        return value.decode("ascii")

    def number(self, nonzero: bool = False) -> int:
        value = self._run(b"0123456789")
        if not value or len(value) > 19:
            raise self.error("expected a number")
        number = int(value)
        if nonzero and number == 0:
            raise self.error("expected a non-zero number")
        return number

    def quoted(self) -> bytes:
        self.expect(b'"')
        out = bytearray()
        data = self.data
        while True:
            if self.pos >= len(data):
                raise self.error("unterminated quoted string")
            c = data[self.pos]
            self.pos += 1
            if c == 0x22:  # closing quote
                return bytes(out)
            if c == 0x5C:  # backslash quotes only " and \
                if self.pos >= len(data) or data[self.pos] not in b'"\\':
                    raise self.error("bad escape in quoted string")
                c = data[self.pos]
                self.pos += 1
            elif c in (0x0D, 0x0A, 0x00):
                raise self.error("CR, LF or NUL in a quoted string")
            out.append(c)

    def literal(self) -> bytes:
        self.expect(b"{")
        size = self.number()
        self.maybe(b"+")
        self.expect(b"}")
        if not self.maybe(b"\r\n"):
            self.expect(b"\n")
        if self.pos + size > len(self.data):
            raise self.error("literal shorter than announced")
        value = self.data[self.pos : self.pos + size]
        self.pos += size
        return value

    def string(self) -> bytes:
        c = self.peek()
        if c == 0x22:
            return self.quoted()
        if c == 0x7B:
            return self.literal()
        raise self.error("expected a string")

    def astring_bytes(self) -> bytes:
        if self.peek() in (0x22, 0x7B):
            return self.string()
        value = self._run(_ASTRING_CHARS)
        if not value:
            raise self.error("expected an atom or a string")
        return value

    def astring(self) -> str:
        return self.astring_bytes().decode("utf-8", "surrogateescape")

    def nstring(self) -> str | None:
        if self.maybe_upper(b"NIL"):
            return None
        return self.string().decode("utf-8", "surrogateescape")

    def mailbox(self) -> str:
        return normalize_mailbox(self.astring())

    def list_mailbox(self) -> str:
        if self.peek() in (0x22, 0x7B):
            return self.string().decode("utf-8", "surrogateescape")
        value = self._run(_LIST_CHARS)
        if not value:
            raise self.error("expected a mailbox pattern")
        return value.decode("ascii")

    def parenthesised(self, item: Callable[[], _T], allow_empty: bool = True) -> list[_T]:
        self.expect(b"(")
        items: list[_T] = []
        if self.maybe(b")"):
            if not allow_empty:
                raise self.error("empty list")
            return items
        while True:
            items.append(item())
            if self.maybe(b")"):
                return items
            self.sp()

    def flag(self) -> str:
        if self.maybe(b"\\"):
            if self.maybe(b"*"):
                raise self.error("\\* is not a flag")
            name = "\\" + self.atom()
            canonical = SYSTEM_FLAGS.get(name.lower())
            if canonical is None:
                if name.lower() == _RECENT.lower():
                    raise self.error("\\Recent cannot be set")
                raise self.error(f"unknown system flag {name}")
            return canonical
        return self.atom()

    def flag_name(self) -> str:
        """A backslash attribute such as \\Sent (mailbox attributes, not message flags)."""
        self.expect(b"\\")
        return "\\" + self.atom()

    def flag_list(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.parenthesised(self.flag)))

    def seqset(self) -> SequenceSet:
        if self.maybe(b"$"):
            return SequenceSet(saved=True)
        ranges: list[tuple[int | None, int | None]] = []
        while True:
            low = self._seq_number()
            high = self._seq_number() if self.maybe(b":") else low
            ranges.append((low, high))
            if not self.maybe(b","):
                return SequenceSet(tuple(ranges))

    def _seq_number(self) -> int | None:
        if self.maybe(b"*"):
            return None
        return self.number(nonzero=True)

    def day(self) -> date:
        quoted = self.maybe(b'"')
        text = self._run(b"0123456789-" + bytes(range(0x41, 0x5B)) + bytes(range(0x61, 0x7B)))
        if quoted:
            self.expect(b'"')
        match = re.fullmatch(rb"(\d{1,2})-([A-Za-z]{3})-(\d{4})", text)
        if match is None or match[2].lower().decode() not in _MONTHS:
            raise self.error("expected a date like 1-Feb-2024")
        try:
            return date(int(match[3]), _MONTHS.index(match[2].lower().decode()) + 1, int(match[1]))
        except ValueError:
            raise self.error("no such date") from None

    def date_time(self) -> datetime:
        text = self.quoted().decode("ascii", "replace")
        match = _DATE_TIME.fullmatch(text)
        if match is None or match[2].lower() not in _MONTHS:
            raise self.error('expected a date-time like "01-Feb-2024 10:00:00 +0000"')
        day, month, year, hour, minute, second, sign, zone_h, zone_m = match.groups()
        offset = timedelta(hours=int(zone_h), minutes=int(zone_m))
        try:
            return datetime(
                int(year),
                _MONTHS.index(month.lower()) + 1,
                int(day),
                int(hour),
                int(minute),
                int(second),
                tzinfo=timezone(-offset if sign == "-" else offset),
            )
        except ValueError:
            raise self.error("no such date-time") from None


# --- commands -----------------------------------------------------------------------------------

_NO_ARGS = frozenset(
    {"CAPABILITY", "NOOP", "LOGOUT", "STARTTLS", "CHECK", "CLOSE", "UNSELECT", "IDLE", "NAMESPACE"}
)
_UID_COMMANDS = frozenset({"FETCH", "STORE", "SEARCH", "COPY", "MOVE", "EXPUNGE"})


def parse_command(data: bytes) -> Command:
    """Parse one complete command (trailing CRLF optional). Raises ParseError."""
    if data.endswith(b"\r\n"):
        data = data[:-2]
    elif data.endswith(b"\n"):
        data = data[:-1]
    cursor = _Cursor(data)
    tag_bytes = cursor._run(_TAG_CHARS)
    if not tag_bytes:
        raise ParseError("missing or invalid tag")
    tag = tag_bytes.decode("ascii")
    try:
        cursor.sp()
        name = cursor.atom().upper()
        uid = False
        if name == "UID":
            cursor.sp()
            name = cursor.atom().upper()
            if name not in _UID_COMMANDS:
                raise ParseError(f"UID {name} is not a command")
            uid = True
        command = _parse_arguments(cursor, tag, name, uid)
        cursor.end()
        return command
    except ParseError as error:
        raise ParseError(error.text, tag) from None
    except RecursionError:
        raise ParseError("command nested too deeply", tag) from None


def _parse_arguments(c: _Cursor, tag: str, name: str, uid: bool) -> Command:
    if name in _NO_ARGS:
        return Command(tag, name)
    if name == "EXPUNGE":
        if uid:
            c.sp()
            return Expunge(tag, name, c.seqset())
        return Expunge(tag, name, None)
    c.sp()
    if name == "LOGIN":
        username = c.astring()
        c.sp()
        return Login(tag, name, username, c.astring())
    if name == "AUTHENTICATE":
        return _authenticate(c, tag)
    if name == "ID":
        return _id(c, tag)
    if name == "ENABLE":
        capabilities = [c.atom().upper()]
        while c.maybe(b" "):
            capabilities.append(c.atom().upper())
        return Enable(tag, name, tuple(capabilities))
    if name in ("SELECT", "EXAMINE"):
        return _select(c, tag, name)
    if name == "GETQUOTA":
        return MailboxCommand(tag, name, c.astring(), ())
    if name == "GETQUOTAROOT":
        return MailboxCommand(tag, name, c.mailbox(), ())
    if name in ("CREATE", "DELETE", "SUBSCRIBE", "UNSUBSCRIBE"):
        mailbox = c.mailbox()
        special: tuple[str, ...] = ()
        if name == "CREATE" and c.maybe(b" "):
            special = _create_params(c)
        return MailboxCommand(tag, name, mailbox, special)
    if name == "RENAME":
        old = c.mailbox()
        c.sp()
        return Rename(tag, name, old, c.mailbox())
    if name in ("LIST", "LSUB"):
        return _list(c, tag, name)
    if name == "STATUS":
        mailbox = c.mailbox()
        c.sp()
        items = tuple(item.upper() for item in c.parenthesised(c.atom, allow_empty=False))
        return Status(tag, name, mailbox, items)
    if name == "APPEND":
        return _append(c, tag)
    if name == "SEARCH":
        return _search(c, tag, uid)
    if name == "FETCH":
        return _fetch(c, tag, uid)
    if name == "STORE":
        return _store(c, tag, uid)
    if name in ("COPY", "MOVE"):
        seqset = c.seqset()
        c.sp()
        return CopyMove(tag, name, uid, seqset, c.mailbox())
    raise ParseError(f"unknown command {name}")


def _select(c: _Cursor, tag: str, name: str) -> Select:
    mailbox = c.mailbox()
    condstore = False
    qresync: QresyncParams | None = None
    if c.maybe(b" "):

        def param() -> None:
            nonlocal condstore, qresync
            word = c.atom().upper()
            if word == "CONDSTORE":
                condstore = True
            elif word == "QRESYNC":
                c.sp()
                qresync = _qresync(c)
            else:
                raise c.error(f"unknown {name} parameter {word}")

        c.parenthesised(param, allow_empty=False)
    return Select(tag, name, mailbox, condstore, qresync)


def _qresync(c: _Cursor) -> QresyncParams:
    # (uidvalidity mod-sequence [known-uids [seq-match-data]]); the sequence match data only
    # narrows what we report, and we keep every expunged UID, so it is read and ignored.
    c.expect(b"(")
    uidvalidity = c.number(nonzero=True)
    c.sp()
    modseq = c.number(nonzero=True)
    known: SequenceSet | None = None
    if c.maybe(b" "):
        if c.peek() != 0x28:
            known = c.seqset()
            if known.saved:
                raise c.error("$ is not a UID set")
            c.maybe(b" ")
        if c.peek() == 0x28:
            c.expect(b"(")
            c.seqset()
            c.sp()
            c.seqset()
            c.expect(b")")
    c.expect(b")")
    return QresyncParams(uidvalidity, modseq, known)


def _authenticate(c: _Cursor, tag: str) -> Authenticate:
    mechanism = c.atom().upper()
    initial: bytes | None = None
    if c.maybe(b" "):
        if c.maybe(b"="):
            initial = b""
        else:
            raw = c._run(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")
            try:
                initial = base64.b64decode(raw, validate=True)
            except binascii.Error:
                raise c.error("initial response is not base64") from None
    return Authenticate(tag, "AUTHENTICATE", mechanism, initial)


def _id(c: _Cursor, tag: str) -> Id:
    if c.maybe_upper(b"NIL"):
        return Id(tag, "ID", None)
    values = c.parenthesised(c.nstring)
    if len(values) % 2 or len(values) > 60:  # RFC 2971: at most 30 field-value pairs
        raise c.error("ID takes field/value pairs")
    pairs = []
    for key, value in zip(values[::2], values[1::2], strict=True):
        if key is None:
            raise c.error("an ID field name cannot be NIL")
        pairs.append((key, value))
    return Id(tag, "ID", tuple(pairs))


def _create_params(c: _Cursor) -> tuple[str, ...]:
    # RFC 6154: CREATE name (USE (\Sent))
    special: list[str] = []

    def param() -> None:
        if not c.maybe_upper(b"USE"):
            raise c.error("unknown CREATE parameter")
        c.sp()
        special.extend(c.parenthesised(c.flag_name))

    c.parenthesised(param)
    return tuple(special)


def _list(c: _Cursor, tag: str, name: str) -> ListCommand:
    selection: list[str] = []
    if name == "LIST" and c.peek() == 0x28:  # LIST-EXTENDED selection options
        selection = [option.upper() for option in c.parenthesised(c.atom)]
        c.sp()
    reference = c.mailbox()
    c.sp()
    if name == "LIST" and c.peek() == 0x28:
        patterns = c.parenthesised(c.list_mailbox, allow_empty=False)
    else:
        patterns = [c.list_mailbox()]
    returns: list[str] = []
    status_items: list[str] = []
    if name == "LIST" and c.maybe(b" "):
        if not c.maybe_upper(b"RETURN"):
            raise c.error("expected RETURN")
        c.sp()

        def option() -> str:
            word = c.atom().upper()
            if word == "STATUS":
                c.sp()
                status_items.extend(i.upper() for i in c.parenthesised(c.atom, allow_empty=False))
            return word

        returns = c.parenthesised(option)
    return ListCommand(
        tag, name, reference, tuple(patterns), tuple(selection), tuple(returns), tuple(status_items)
    )


def _append(c: _Cursor, tag: str) -> Append:
    mailbox = c.mailbox()
    c.sp()
    flags: tuple[str, ...] = ()
    when: datetime | None = None
    if c.peek() == 0x28:
        flags = c.flag_list()
        c.sp()
    if c.peek() == 0x22:
        when = c.date_time()
        c.sp()
    if c.peek() != 0x7B:
        raise c.error("APPEND needs the message as a literal")
    return Append(tag, "APPEND", mailbox, flags, when, c.literal())


_ESEARCH_RETURNS = frozenset({"MIN", "MAX", "ALL", "COUNT", "SAVE"})


def _search(c: _Cursor, tag: str, uid: bool) -> Search:
    returns: tuple[str, ...] | None = None
    if c.maybe_upper(b"RETURN"):
        c.sp()
        options = tuple(option.upper() for option in c.parenthesised(c.atom))
        unknown = set(options) - _ESEARCH_RETURNS
        if unknown:
            raise c.error(f"unknown RETURN option {sorted(unknown)[0]}")
        returns = options
        c.sp()
    charset: str | None = None
    if c.maybe_upper(b"CHARSET"):
        c.sp()
        charset = c.astring().upper()
        c.sp()
    keys = [_search_key(c)]
    while c.maybe(b" "):
        keys.append(_search_key(c))
    key = keys[0] if len(keys) == 1 else SearchKey("AND", children=tuple(keys))
    return Search(tag, "SEARCH", uid, charset, key, returns)


_FLAG_KEYS = frozenset(
    {
        "ALL",
        "ANSWERED",
        "DELETED",
        "DRAFT",
        "FLAGGED",
        "NEW",
        "OLD",
        "RECENT",
        "SEEN",
        "UNANSWERED",
        "UNDELETED",
        "UNDRAFT",
        "UNFLAGGED",
        "UNSEEN",
    }
)
_STRING_KEYS = frozenset({"BCC", "BODY", "CC", "FROM", "SUBJECT", "TEXT", "TO"})
_DATE_KEYS = frozenset({"BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE"})


def _search_key(c: _Cursor) -> SearchKey:
    head = c.peek()
    if head == 0x28:  # "("
        c.depth += 1
        if c.depth > MAX_NESTING:
            raise c.error("search program nested too deeply")
        children = c.parenthesised(lambda: _search_key(c), allow_empty=False)
        c.depth -= 1
        return SearchKey("AND", children=tuple(children))
    if head is not None and (0x30 <= head <= 0x39 or head in (0x2A, 0x24)):  # digit, "*", "$"
        return SearchKey("SEQ", seqset=c.seqset())
    name = c.atom().upper()
    if name in _FLAG_KEYS:
        return SearchKey(name)
    c.sp()
    if name in _STRING_KEYS:
        return SearchKey(name, text=c.astring())
    if name in _DATE_KEYS:
        return SearchKey(name, day=c.day())
    if name in ("LARGER", "SMALLER"):
        return SearchKey(name, number=c.number())
    if name in ("KEYWORD", "UNKEYWORD"):
        return SearchKey(name, text=c.flag())
    if name == "HEADER":
        field = c.astring()
        c.sp()
        return SearchKey(name, field=field, text=c.astring())
    if name == "UID":
        return SearchKey(name, seqset=c.seqset())
    if name == "NOT":
        c.depth += 1
        if c.depth > MAX_NESTING:
            raise c.error("search program nested too deeply")
        child = _search_key(c)
        c.depth -= 1
        return SearchKey(name, children=(child,))
    if name == "OR":
        c.depth += 1
        if c.depth > MAX_NESTING:
            raise c.error("search program nested too deeply")
        first = _search_key(c)
        c.sp()
        second = _search_key(c)
        c.depth -= 1
        return SearchKey(name, children=(first, second))
    if name == "MODSEQ":
        if c.peek() == 0x22:  # entry name and type: accepted, not used (no per-flag modseq)
            c.quoted()
            c.sp()
            c.atom()
            c.sp()
        return SearchKey(name, number=c.number())
    raise c.error(f"unknown search key {name}")


_FETCH_MACROS = {
    "ALL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"),
    "FAST": ("FLAGS", "INTERNALDATE", "RFC822.SIZE"),
    "FULL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"),
}
_SIMPLE_ATTRS = frozenset(
    {
        "FLAGS",
        "UID",
        "INTERNALDATE",
        "RFC822.SIZE",
        "ENVELOPE",
        "BODYSTRUCTURE",
        "RFC822",
        "RFC822.HEADER",
        "RFC822.TEXT",
        "MODSEQ",
    }
)


def _fetch(c: _Cursor, tag: str, uid: bool) -> Fetch:
    seqset = c.seqset()
    c.sp()
    attrs: list[FetchAttr]
    if c.peek() == 0x28:
        attrs = c.parenthesised(lambda: _fetch_attr(c), allow_empty=False)
    else:
        start = c.pos
        word = c._run(_ATOM_CHARS).upper().decode("ascii")
        if word in _FETCH_MACROS:
            attrs = [FetchAttr(n) for n in _FETCH_MACROS[word]]
        else:
            c.pos = start
            attrs = [_fetch_attr(c)]
    changedsince: int | None = None
    vanished = False
    if c.maybe(b" "):

        def modifier() -> None:
            nonlocal changedsince, vanished
            if c.maybe_upper(b"VANISHED"):
                vanished = True
                return
            if not c.maybe_upper(b"CHANGEDSINCE"):
                raise c.error("unknown FETCH modifier")
            c.sp()
            changedsince = c.number()

        c.parenthesised(modifier, allow_empty=False)
    if vanished and (not uid or changedsince is None):
        # RFC 7162 3.2.6: only UID FETCH, and only together with CHANGEDSINCE.
        raise c.error("VANISHED needs UID FETCH with CHANGEDSINCE")
    if uid and not any(a.name == "UID" for a in attrs):
        attrs.insert(0, FetchAttr("UID"))  # UID FETCH always reports the UID
    return Fetch(tag, "FETCH", uid, seqset, tuple(attrs), changedsince, vanished)


def _fetch_attr(c: _Cursor) -> FetchAttr:
    # Names run up to "[", " " or ")"; "." is part of them (RFC822.SIZE, BODY.PEEK).
    name = c._run(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.").upper()
    word = name.decode("ascii")
    if word in ("BODY", "BODY.PEEK", "BINARY.PEEK", "BINARY") and c.peek() == 0x5B:
        if word.startswith("BINARY"):
            raise c.error("BINARY is not supported")
        c.expect(b"[")
        section = _section(c)
        c.expect(b"]")
        partial: tuple[int, int] | None = None
        if c.maybe(b"<"):
            origin = c.number()
            c.expect(b".")
            length = c.number(nonzero=True)
            c.expect(b">")
            partial = (origin, length)
        return FetchAttr("BODY", section, partial, peek=word == "BODY.PEEK")
    if word == "BODY" or word in _SIMPLE_ATTRS:
        return FetchAttr(word)
    raise c.error(f"unknown FETCH item {word or '(none)'}")


def _section(c: _Cursor) -> Section:
    parts: list[int] = []
    while c.peek() is not None and 0x31 <= c.data[c.pos] <= 0x39:
        parts.append(c.number(nonzero=True))
        if not c.maybe(b"."):
            return Section(tuple(parts))
    if c.peek() == 0x5D:  # "]"
        if parts:
            raise c.error("section ends with a dot")
        return Section()
    word = c._run(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz.").upper().decode()
    if word in ("HEADER", "TEXT") or (word == "MIME" and parts):
        return Section(tuple(parts), word)
    if word in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
        c.sp()
        fields = c.parenthesised(lambda: c.astring_bytes().decode("ascii", "replace"), False)
        return Section(tuple(parts), word, tuple(fields))
    raise c.error(f"bad section {word!r}")


def _store(c: _Cursor, tag: str, uid: bool) -> Store:
    seqset = c.seqset()
    c.sp()
    unchangedsince: int | None = None
    if c.peek() == 0x28:

        def modifier() -> None:
            nonlocal unchangedsince
            if not c.maybe_upper(b"UNCHANGEDSINCE"):
                raise c.error("unknown STORE modifier")
            c.sp()
            unchangedsince = c.number()

        c.parenthesised(modifier, allow_empty=False)
        c.sp()
    mode = ""
    if c.maybe(b"+"):
        mode = "+"
    elif c.maybe(b"-"):
        mode = "-"
    item = c.atom().upper()
    if item not in ("FLAGS", "FLAGS.SILENT"):
        raise c.error("STORE takes FLAGS or FLAGS.SILENT")
    c.sp()
    if c.peek() == 0x28:
        flags = c.flag_list()
    else:
        found = [c.flag()]
        while c.maybe(b" "):
            found.append(c.flag())
        flags = tuple(dict.fromkeys(found))
    return Store(tag, "STORE", uid, seqset, mode, item.endswith(".SILENT"), flags, unchangedsince)


def format_date_time(moment: datetime) -> str:
    """INTERNALDATE's form: "01-Feb-2024 10:00:00 +0000"."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    offset = moment.utcoffset() or timedelta()
    minutes = int(offset.total_seconds() // 60)
    sign = "-" if minutes < 0 else "+"
    hours, mins = divmod(abs(minutes), 60)
    month = _MONTHS[moment.month - 1].capitalize()
    return (
        f"{moment.day:02d}-{month}-{moment.year:04d} {moment:%H:%M:%S} {sign}{hours:02d}{mins:02d}"
    )
