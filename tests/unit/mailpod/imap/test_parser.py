"""The pure IMAP command parser: tags, strings, literals, sequence sets and every command."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest

from mailpod.imap.parser import (
    Append,
    Authenticate,
    Command,
    CopyMove,
    Expunge,
    Fetch,
    FetchAttr,
    Id,
    ListCommand,
    Login,
    MailboxCommand,
    ParseError,
    QresyncParams,
    Search,
    SearchKey,
    Section,
    Select,
    SequenceSet,
    Status,
    Store,
    literal_at_end,
    parse_command,
)


def test_simple_commands_keep_their_tag() -> None:
    assert parse_command(b"a1 NOOP\r\n") == Command("a1", "NOOP")
    assert parse_command(b"x.y capability") == Command("x.y", "CAPABILITY")


@pytest.mark.parametrize(
    ("line", "tag"),
    [
        (b"", None),
        (b"+tag NOOP", None),  # "+" is not a tag character
        (b"a1", "a1"),
        (b"a1 FROB", "a1"),
        (b"a1 NOOP extra", "a1"),
        (b"a1  NOOP", "a1"),
        (b"a1 UID NOOP", "a1"),
        (b'a1 LOGIN "unterminated', "a1"),
        (b"a1 LOGIN {5}\r\nab", "a1"),  # literal shorter than announced
        (b"a1 FETCH 0 FLAGS", "a1"),  # sequence numbers start at 1
        (b"a1 FETCH 1 (FLAGS", "a1"),
        (b"a1 FETCH 1 BODY[1.]", "a1"),
        (b"a1 STORE 1 FLAGS (\\Recent)", "a1"),
        (b"a1 STORE 1 FLAGS (\\Bogus)", "a1"),
        (b"a1 SEARCH FROB", "a1"),
        (b"a1 SEARCH SINCE 31-Feb-2024", "a1"),
        (b"a1 APPEND INBOX (\\Seen) notaliteral", "a1"),
        (b"a1 SEARCH " + b"NOT " * 100 + b"ALL", "a1"),
        (b"a1 SEARCH " + b"(" * 100 + b"ALL" + b")" * 100, "a1"),
    ],
)
def test_malformed_commands_raise_with_the_tag_when_known(line: bytes, tag: str | None) -> None:
    with pytest.raises(ParseError) as error:
        parse_command(line)
    assert error.value.tag == tag


def test_login_with_atoms_quoted_strings_and_literals() -> None:
    assert parse_command(b"a LOGIN alice pw") == Login("a", "LOGIN", "alice", "pw")
    quoted = parse_command(b'a LOGIN "al ice" "p\\"w\\\\"')
    assert quoted == Login("a", "LOGIN", "al ice", 'p"w\\')
    literal = parse_command(b"a LOGIN {5}\r\nalice {3+}\r\np w")
    assert literal == Login("a", "LOGIN", "alice", "p w")
    assert "p w" not in repr(literal)  # passwords never reach logs through repr()


def test_non_utf8_password_bytes_survive() -> None:
    command = parse_command(b"a LOGIN u {2}\r\n\xff\xfe")
    assert isinstance(command, Login)
    assert command.password.encode("utf-8", "surrogateescape") == b"\xff\xfe"


def test_literal_at_end() -> None:
    assert literal_at_end(b"a LOGIN {5}\r\n") == (5, False)
    assert literal_at_end(b"a APPEND INBOX {123+}\r\n") == (123, True)
    assert literal_at_end(b'a LOGIN "{5}"\r\n') is None
    assert literal_at_end(b"a NOOP\r\n") is None


def test_authenticate_with_and_without_initial_response() -> None:
    assert parse_command(b"a AUTHENTICATE plain") == Authenticate(
        "a", "AUTHENTICATE", "PLAIN", None
    )
    command = parse_command(b"a AUTHENTICATE PLAIN AGEAYg==")
    assert command == Authenticate("a", "AUTHENTICATE", "PLAIN", b"\0a\0b")
    assert parse_command(b"a AUTHENTICATE PLAIN =") == Authenticate(
        "a", "AUTHENTICATE", "PLAIN", b""
    )
    with pytest.raises(ParseError):
        parse_command(b"a AUTHENTICATE PLAIN !!!")


def test_id() -> None:
    assert parse_command(b"a ID NIL") == Id("a", "ID", None)
    command = parse_command(b'a ID ("name" "Thunderbird" "version" NIL)')
    assert command == Id("a", "ID", (("name", "Thunderbird"), ("version", None)))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1", [1]),
        ("2:4", [2, 3, 4]),
        ("4:2", [2, 3, 4]),
        ("*", [7]),
        ("5:*", [5, 6, 7]),
        ("1,3,5:6,3", [1, 3, 5, 6]),
        ("9:*", [7]),  # n:* beyond the end still names the last one
        ("8:9", []),
    ],
)
def test_sequence_sets_select_existing_values(text: str, expected: list[int]) -> None:
    command = parse_command(f"a FETCH {text} FLAGS".encode())
    assert isinstance(command, Fetch)
    assert command.seqset.select(range(1, 8)) == expected


def test_sequence_set_over_uids_and_saved_result() -> None:
    command = parse_command(b"a UID FETCH 2:15,100:* FLAGS")
    assert isinstance(command, Fetch)
    assert command.seqset.select([1, 4, 10, 20, 30]) == [4, 10, 30]
    saved = parse_command(b"a UID FETCH $ FLAGS")
    assert isinstance(saved, Fetch)
    assert saved.seqset.saved


def test_sequence_set_of_compacts_runs() -> None:
    assert str(SequenceSet.of([1, 2, 3, 5, 7, 8])) == "1:3,5,7:8"


def test_fetch_macros_and_attributes() -> None:
    command = parse_command(b"a FETCH 1:* ALL")
    assert isinstance(command, Fetch)
    assert [a.name for a in command.attrs] == ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"]
    command = parse_command(
        b"a UID FETCH 1 (FLAGS BODY.PEEK[HEADER.FIELDS (From Subject)] BODY[1.2.MIME]"
        b" BODY[]<0.100> body[text] BODYSTRUCTURE rfc822.size)"
    )
    assert isinstance(command, Fetch)
    assert command.uid
    assert command.attrs == (
        FetchAttr("UID"),
        FetchAttr("FLAGS"),
        FetchAttr("BODY", Section((), "HEADER.FIELDS", ("From", "Subject")), peek=True),
        FetchAttr("BODY", Section((1, 2), "MIME")),
        FetchAttr("BODY", Section(), (0, 100)),
        FetchAttr("BODY", Section((), "TEXT")),
        FetchAttr("BODYSTRUCTURE"),
        FetchAttr("RFC822.SIZE"),
    )
    assert command.attrs[2].response_name() == "BODY[HEADER.FIELDS (From Subject)]"
    assert command.attrs[4].response_name() == "BODY[]<0>"


def test_fetch_changedsince_modifier() -> None:
    command = parse_command(b"a UID FETCH 1:* (FLAGS) (CHANGEDSINCE 12345)")
    assert isinstance(command, Fetch)
    assert command.changedsince == 12345


def test_store_forms() -> None:
    command = parse_command(b"a STORE 1:3 +FLAGS.SILENT (\\seen $Junk)")
    assert command == Store(
        "a", "STORE", False, SequenceSet(((1, 3),)), "+", True, ("\\Seen", "$Junk"), None
    )
    command = parse_command(b"a UID STORE 5 -FLAGS \\Deleted \\Flagged")
    assert isinstance(command, Store)
    assert (command.uid, command.mode, command.flags) == (True, "-", ("\\Deleted", "\\Flagged"))
    command = parse_command(b"a STORE 1 (UNCHANGEDSINCE 7) FLAGS ()")
    assert isinstance(command, Store)
    assert (command.mode, command.flags, command.unchangedsince) == ("", (), 7)


def test_search_program() -> None:
    command = parse_command(
        b'a UID SEARCH CHARSET UTF-8 OR FROM "bob" NOT SUBJECT {4}\r\nspam SINCE 1-Feb-2024'
        b' (LARGER 10 UNSEEN) 1:5 UID 3:* HEADER X-Tag ""'
    )
    assert isinstance(command, Search)
    assert command.uid and command.charset == "UTF-8" and command.returns is None
    assert command.key == SearchKey(
        "AND",
        children=(
            SearchKey(
                "OR",
                children=(
                    SearchKey("FROM", text="bob"),
                    SearchKey("NOT", children=(SearchKey("SUBJECT", text="spam"),)),
                ),
            ),
            SearchKey("SINCE", day=date(2024, 2, 1)),
            SearchKey("AND", children=(SearchKey("LARGER", number=10), SearchKey("UNSEEN"))),
            SearchKey("SEQ", seqset=SequenceSet(((1, 5),))),
            SearchKey("UID", seqset=SequenceSet(((3, None),))),
            SearchKey("HEADER", field="X-Tag", text=""),
        ),
    )


def test_esearch_return_options() -> None:
    command = parse_command(b"a SEARCH RETURN (MIN COUNT SAVE) ALL")
    assert isinstance(command, Search)
    assert command.returns == ("MIN", "COUNT", "SAVE")
    with pytest.raises(ParseError):
        parse_command(b"a SEARCH RETURN (BOGUS) ALL")


def test_append_with_flags_date_and_literal() -> None:
    command = parse_command(
        b'a APPEND inbox (\\Seen) " 5-Mar-2024 10:11:12 -0130" {12+}\r\nSubject: x\r\n\r\n'
    )
    zone = timezone(-timedelta(hours=1, minutes=30))
    assert command == Append(
        "a",
        "APPEND",
        "INBOX",
        ("\\Seen",),
        datetime(2024, 3, 5, 10, 11, 12, tzinfo=zone),
        b"Subject: x\r\n",
    )


def test_mailbox_commands() -> None:
    assert parse_command(b"a SELECT inbox") == Select("a", "SELECT", "INBOX", False)
    assert parse_command(b'a EXAMINE "Sent" (CONDSTORE)') == Select("a", "EXAMINE", "Sent", True)
    assert parse_command(b"a CREATE Work.2024 (USE (\\Archive))") == MailboxCommand(
        "a", "CREATE", "Work.2024", ("\\Archive",)
    )
    assert parse_command(b"a STATUS Sent (messages unseen)") == Status(
        "a", "STATUS", "Sent", ("MESSAGES", "UNSEEN")
    )
    assert parse_command(b"a UID MOVE 1:2 Trash") == CopyMove(
        "a", "MOVE", True, SequenceSet(((1, 2),)), "Trash"
    )
    assert parse_command(b"a UID EXPUNGE 3") == Expunge("a", "EXPUNGE", SequenceSet(((3, 3),)))
    assert parse_command(b"a EXPUNGE") == Expunge("a", "EXPUNGE", None)


def test_list_basic_and_extended() -> None:
    assert parse_command(b'a LIST "" *') == ListCommand("a", "LIST", "", ("*",), (), (), ())
    command = parse_command(
        b'a LIST (SUBSCRIBED RECURSIVEMATCH) "" ("INBOX" Work.%) RETURN (CHILDREN STATUS'
        b" (MESSAGES UNSEEN))"
    )
    assert command == ListCommand(
        "a",
        "LIST",
        "",
        ("INBOX", "Work.%"),
        ("SUBSCRIBED", "RECURSIVEMATCH"),
        ("CHILDREN", "STATUS"),
        ("MESSAGES", "UNSEEN"),
    )
    assert parse_command(b'a LSUB "" %') == ListCommand("a", "LSUB", "", ("%",), (), (), ())


def test_condstore_and_qresync_parameters() -> None:
    assert parse_command(
        b"a SELECT INBOX (QRESYNC (67890007 20050715194045000 41,43:211,214:541))"
    ) == Select(
        "a",
        "SELECT",
        "INBOX",
        False,
        QresyncParams(67890007, 20050715194045000, SequenceSet(((41, 41), (43, 211), (214, 541)))),
    )
    command = parse_command(b"a EXAMINE INBOX (CONDSTORE QRESYNC (1 2 1:* (1:3 4,6,9)))")
    assert command == Select(
        "a", "EXAMINE", "INBOX", True, QresyncParams(1, 2, SequenceSet(((1, None),)))
    )
    assert parse_command(b"a SELECT INBOX (QRESYNC (1 2))") == Select(
        "a", "SELECT", "INBOX", False, QresyncParams(1, 2)
    )
    fetch = parse_command(b"a UID FETCH 1:* (FLAGS) (CHANGEDSINCE 7 VANISHED)")
    assert isinstance(fetch, Fetch)
    assert (fetch.changedsince, fetch.vanished) == (7, True)
    for bad in (
        b"a SELECT INBOX (QRESYNC (0 2))",
        b"a SELECT INBOX (FROB)",
        b"a SELECT INBOX ()",
        b"a FETCH 1 (FLAGS) (CHANGEDSINCE 7 VANISHED)",  # VANISHED needs UID FETCH
        b"a UID FETCH 1 (FLAGS) (VANISHED)",  # and CHANGEDSINCE
    ):
        with pytest.raises(ParseError):
            parse_command(bad)


def test_quota_commands() -> None:
    assert parse_command(b'a GETQUOTA ""') == MailboxCommand("a", "GETQUOTA", "", ())
    assert parse_command(b"a GETQUOTAROOT inbox") == MailboxCommand(
        "a", "GETQUOTAROOT", "INBOX", ()
    )
