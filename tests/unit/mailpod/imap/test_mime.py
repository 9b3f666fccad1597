"""ENVELOPE, BODYSTRUCTURE and BODY[section] on exact bytes."""

from __future__ import annotations

from mailpod.imap.backend import MessageInfo
from mailpod.imap.fetch import render_fetch
from mailpod.imap.mime import bodystructure, envelope, parse_message, section_bytes
from mailpod.imap.parser import FetchAttr, Section
from mailpod.imap.response import render, render_list

NESTED = (
    b"From: A <a@x.test>\r\nSubject: outer\r\nContent-Type: multipart/mixed; boundary=XX\r\n"
    b"\r\npreamble\r\n--XX\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
    b"--XX\r\nContent-Type: message/rfc822\r\n\r\n"
    b"Subject: inner\r\nContent-Type: multipart/alternative; boundary=YY\r\n\r\n"
    b"--YY\r\n\r\nplain\r\n--YY\r\nContent-Type: text/html\r\n\r\n<p>x</p>\r\n--YY--\r\n"
    b"\r\n--XX--\r\nepilogue\r\n"
)


def test_sections_are_exact_byte_ranges() -> None:
    message = parse_message(NESTED)
    assert section_bytes(message, Section()) == NESTED
    assert section_bytes(message, Section((1,))) == b"hello"
    assert section_bytes(message, Section((1,), "MIME")) == b"Content-Type: text/plain\r\n\r\n"
    assert section_bytes(message, Section((2,), "HEADER")).startswith(b"Subject: inner\r\n")
    assert section_bytes(message, Section((2, 1))) == b"plain"
    assert section_bytes(message, Section((2, 2))) == b"<p>x</p>"
    assert section_bytes(message, Section((9,))) == b""
    fields = section_bytes(message, Section((), "HEADER.FIELDS", ("SUBJECT", "X-None")))
    assert fields == b"Subject: outer\r\n\r\n"
    rest = section_bytes(message, Section((), "HEADER.FIELDS.NOT", ("subject",)))
    assert rest.startswith(b"From: A") and b"Subject" not in rest


def test_single_part_message_body_is_part_one() -> None:
    message = parse_message(b"Subject: s\r\n\r\nbody\r\n")
    assert section_bytes(message, Section((1,))) == b"body\r\n"
    assert section_bytes(message, Section((), "TEXT")) == b"body\r\n"
    assert render_list(bodystructure(message)) == (
        b'("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 6 1 NIL NIL NIL NIL)'
    )


def test_bodystructure_of_nested_message() -> None:
    structure = render_list(bodystructure(parse_message(NESTED)))
    assert structure == (
        b'(("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 5 1 NIL NIL NIL NIL)'
        b' ("MESSAGE" "RFC822" NIL NIL NIL "7BIT" 134'
        b' (NIL "inner" NIL NIL NIL NIL NIL NIL NIL NIL)'
        b' (("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 5 1 NIL NIL NIL NIL)'
        b' ("TEXT" "HTML" ("CHARSET" "us-ascii") NIL NIL "7BIT" 8 1 NIL NIL NIL NIL)'
        b' "ALTERNATIVE" ("BOUNDARY" "YY") NIL NIL NIL) 11 NIL NIL NIL NIL)'
        b' "MIXED" ("BOUNDARY" "XX") NIL NIL NIL)'
    )
    body = render_list(bodystructure(parse_message(NESTED), extensible=False))
    assert body.endswith(b' "MIXED")')


def test_envelope_addresses_and_defaults() -> None:
    message = parse_message(
        b'From: "Doe, Jane" <jane@x.test>\r\nTo: a@x.test,\r\n b@y.test\r\n'
        b"Subject: =?utf-8?q?caf=C3=A9?=\r\nMessage-ID: <1@x>\r\n\r\n"
    )
    assert render_list(envelope(message)) == (
        b'(NIL "=?utf-8?q?caf=C3=A9?=" (("Doe, Jane" NIL "jane" "x.test"))'
        b' (("Doe, Jane" NIL "jane" "x.test")) (("Doe, Jane" NIL "jane" "x.test"))'
        b' ((NIL NIL "a" "x.test") (NIL NIL "b" "y.test")) NIL NIL NIL "<1@x>")'
    )


def test_strings_render_quoted_or_as_literals() -> None:
    assert render("plain") == b'"plain"'
    assert render('a"b\\') == b'"a\\"b\\\\"'
    assert render("caf\u00e9") == b"{5}\r\ncaf\xc3\xa9"
    assert render(b"two\r\nlines") == b"{10}\r\ntwo\r\nlines"
    assert render([None, 1, ["x"]]) == b'(NIL 1 ("x"))'


def test_render_fetch_items() -> None:
    info = MessageInfo(7, frozenset({"\\Seen"}), 3, 1_700_000_000.0, len(NESTED))
    attrs = (
        FetchAttr("UID"),
        FetchAttr("FLAGS"),
        FetchAttr("INTERNALDATE"),
        FetchAttr("RFC822.SIZE"),
        FetchAttr("BODY", Section((1,)), (1, 3), peek=True),
    )
    assert render_fetch(2, info, attrs, NESTED) == (
        b'* 2 FETCH (UID 7 FLAGS (\\Seen) INTERNALDATE "14-Nov-2023 22:13:20 +0000"'
        b" RFC822.SIZE %d BODY[1]<1> {3}\r\nell)\r\n" % len(NESTED)
    )
