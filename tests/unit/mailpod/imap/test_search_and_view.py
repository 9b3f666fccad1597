"""SEARCH evaluation, the per-connection selected view, and LIST matching."""

from __future__ import annotations

from mailpod.imap.backend import Changes, FolderInfo, MessageInfo
from mailpod.imap.listing import list_folders
from mailpod.imap.mime import parse_header, parse_message
from mailpod.imap.parser import Search, parse_command
from mailpod.imap.search import (
    Candidate,
    SearchContext,
    compile_key,
    index_only_part,
    matches,
    needs_message,
    needs_text,
)
from mailpod.imap.selected import SelectedView

MESSAGE = parse_message(
    b"From: =?utf-8?q?J=C3=B6rg?= <j@x.test>\r\nSubject: Hello World\r\n"
    b"Date: Tue, 05 Mar 2024 10:11:12 +0000\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    b"U3VzaGkgdG9uaWdodD8=\r\n"
)


def search(program: str, flags: frozenset[str] = frozenset(), seq: int = 1) -> bool:
    command = parse_command(f"a SEARCH {program}".encode())
    assert isinstance(command, Search)
    info = MessageInfo(10, flags, 5, 1_709_633_472.0, 1234)
    message = MESSAGE if needs_message(command.key) else None
    context = SearchContext([3, 10, 12])
    result = matches(command.key, Candidate(seq, info, message), context)
    # The compiled form the server uses answers the same.
    assert compile_key(command.key, context)(Candidate(seq, info, message)) == result
    if message is not None and not needs_text(command.key):
        # Header keys need only the header section.
        header_only = Candidate(seq, info, parse_header(MESSAGE.header))
        assert matches(command.key, header_only, context) == result
    # A message failing the keys the index decides fails the whole program.
    cheap = index_only_part(command.key)
    if cheap is not None and not matches(cheap, Candidate(seq, info), context):
        assert not result
    return result


def test_search_keys() -> None:
    assert search("ALL")
    assert search('FROM "j@x"') and search('FROM "J\u00d6RG"')  # decoded, case-folded
    assert search("SUBJECT world") and not search("SUBJECT planet")
    assert search("BODY sushi") and search("TEXT hello") and not search("BODY hello")
    assert search('HEADER Subject ""') and not search('HEADER X-Missing ""')
    assert search("SEEN", frozenset({"\\Seen"})) and search("UNSEEN")
    assert search("NOT DELETED") and search("OR DELETED LARGER 1000")
    assert search("SMALLER 2000") and not search("LARGER 2000")
    assert search("ON 5-Mar-2024") and search("SINCE 5-Mar-2024") and search("BEFORE 6-Mar-2024")
    assert search("SENTON 5-Mar-2024") and not search("SENTBEFORE 5-Mar-2024")
    assert search("UID 10") and not search("UID 11:*") and search("UID 9:11")
    assert search("2", seq=2) and not search("3", seq=2) and search("*", seq=3)
    assert search("KEYWORD $Work", frozenset({"$Work"})) and search("UNKEYWORD $Work")
    assert search("MODSEQ 5") and not search("MODSEQ 6")
    assert not search("NEW") and search("OLD")
    assert search("UNSEEN FROM j@x") and not search("SEEN FROM j@x")
    assert not search("UNSEEN FROM nobody") and search("NOT FROM nobody")


def test_header_prefilter_never_hides_a_match() -> None:
    """The raw-header look before parsing fields: folded lines, case and encoded words."""
    message = parse_header(
        b"From: Someone\r\n  Folded <a@b.test>\r\nSubject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n"
        b"X-Tag: STRASSE\r\n\r\n"
    )
    info = MessageInfo(1, frozenset(), 1, 0.0, 10)
    context = SearchContext([1])
    for program, expected in [
        ('FROM "Someone  Folded"', True),
        ('SUBJECT "grüsse"', True),  # encoded word, and ß case-folds to ss
        ('HEADER X-Tag "straße"', True),
        ("FROM nobody", False),
        ("SUBJECT nothing", False),
    ]:
        command = parse_command(f"a SEARCH CHARSET UTF-8 {program}".encode())
        assert isinstance(command, Search)
        assert matches(command.key, Candidate(1, info, message), context) is expected, program


def folder(name: str, special: str | None = None, subscribed: bool = True) -> FolderInfo:
    return FolderInfo(hash(name) % 1000, name, 1, 1, 1, subscribed, special)


def test_list_wildcards_children_and_implied_parents() -> None:
    folders = [
        folder("INBOX"),
        folder("Sent", "\\Sent"),
        folder("Work.2024.Q1", subscribed=False),
        folder("Work.2023"),
    ]
    top = [(e.name, e.attributes) for e in list_folders(folders, "", ["%"])]
    assert top == [
        ("INBOX", ("\\HasNoChildren",)),
        ("Sent", ("\\HasNoChildren", "\\Sent")),
        ("Work", ("\\Noselect", "\\HasChildren")),
    ]
    assert [e.name for e in list_folders(folders, "", ["*"])] == [
        "INBOX",
        "Sent",
        "Work.2023",
        "Work.2024.Q1",
    ]
    assert [e.name for e in list_folders(folders, "Work.", ["%"])] == ["Work.2023", "Work.2024"]
    assert [e.name for e in list_folders(folders, "", ["inbox"])] == ["INBOX"]
    subscribed = list_folders(folders, "", ["*"], subscribed_only=True)
    assert "Work.2024.Q1" not in [e.name for e in subscribed]
    special = list_folders(folders, "", ["*"], special_use_only=True)
    assert [e.name for e in special] == ["Sent"]


def info(uid: int, *flags: str) -> MessageInfo:
    return MessageInfo(uid, frozenset(flags), uid, 0.0, 10)


def test_selected_view_turns_changes_into_untagged_responses() -> None:
    view = SelectedView(
        FolderInfo(1, "INBOX", 9, 4, 3, True, None), [info(1), info(2), info(3)], False
    )
    # Another session expunged 2, flagged 3; a delivery added 4.
    changes = Changes(7, [info(3, "\\Flagged"), info(4)], [2])
    lines = view.apply(changes, allow_expunge=False)  # during FETCH: no EXPUNGE yet
    assert lines == [b"* 3 FETCH (UID 3 FLAGS (\\Flagged))\r\n", b"* 4 EXISTS\r\n"]
    assert view.uids == [1, 2, 3, 4]
    assert view.apply(None, allow_expunge=True) == [b"* 2 EXPUNGE\r\n"]
    assert view.uids == [1, 3, 4] and view.modseq == 7
    # A new keyword makes FLAGS and PERMANENTFLAGS go out again.
    lines = view.apply(Changes(8, [info(4, "$Work")], []), allow_expunge=True)
    assert lines[0].startswith(b"* FLAGS (") and b"$Work" in lines[0]
    assert lines[-1] == b"* 3 FETCH (UID 4 FLAGS ($Work))\r\n"


def test_selected_view_resolves_sets() -> None:
    view = SelectedView(
        FolderInfo(1, "INBOX", 9, 9, 3, True, None), [info(2), info(5), info(8)], False
    )
    fetch = parse_command(b"a FETCH 2:* FLAGS")
    assert view.resolve(fetch.seqset, uid=False) == [5, 8]  # type: ignore[attr-defined]
    fetch = parse_command(b"a UID FETCH 3:100 FLAGS")
    assert view.resolve(fetch.seqset, uid=True) == [5, 8]  # type: ignore[attr-defined]
    fetch = parse_command(b"a FETCH 1:10 FLAGS")  # lenient: what exists of the range
    assert view.resolve(fetch.seqset, uid=False) == [2, 5, 8]  # type: ignore[attr-defined]
    assert view.remove([5]) == [b"* 2 EXPUNGE\r\n"]
