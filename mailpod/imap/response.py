"""Rendering IMAP response data (pure).

Data is built from plain values and rendered once: `bytes`/`str` become a quoted string (or a
literal when they hold CR, LF, NUL, 8-bit characters or are long), `int` a number, `None` NIL,
lists and tuples a parenthesised list, `Atom` is written as-is (flags, keywords, `BODY[]`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Union

__all__ = ["Atom", "Value", "astring", "render", "render_list"]


@dataclass(frozen=True, slots=True)
class Atom:
    text: str


Value = Union[bytes, str, int, None, Atom, "list[Value]", "tuple[Value, ...]"]

_QUOTABLE_MAX = 1024  # longer strings go as literals: cheaper for both sides to read
_ATOM_SAFE = frozenset(
    b"!#$&'+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[^_`abcdefghijklmnopqrstuvwxyz|}~"
)


def _string(data: bytes) -> bytes:
    if len(data) <= _QUOTABLE_MAX and not any(c in data for c in b"\r\n\0") and data.isascii():
        return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return b"{%d}\r\n" % len(data) + data


def astring(text: str) -> bytes:
    """A mailbox name and the like: an atom when safe, else a string (never the atom NIL)."""
    data = text.encode("utf-8", "surrogateescape")
    if data and all(c in _ATOM_SAFE for c in data) and data.upper() != b"NIL":
        return data
    return _string(data)


def render(value: Value) -> bytes:
    if value is None:
        return b"NIL"
    if isinstance(value, Atom):
        return value.text.encode("utf-8", "surrogateescape")
    if isinstance(value, bool):  # a bool is an int: refuse the ambiguity loudly
        raise TypeError("booleans have no IMAP rendering")
    if isinstance(value, int):
        return b"%d" % value
    if isinstance(value, str):
        return _string(value.encode("utf-8", "surrogateescape"))
    if isinstance(value, bytes):
        return _string(value)
    return render_list(value)


def render_list(values: Iterable[Value]) -> bytes:
    return b"(" + b" ".join(render(v) for v in values) + b")"
