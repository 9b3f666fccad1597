"""Transcripts of CONDSTORE, QRESYNC (RFC 7162), QUOTA (RFC 9208), IMAP4rev2 and UTF8=ACCEPT
behaviour, on the same in-process server as test_server."""

from __future__ import annotations

import asyncio
import re

import pytest

from mailpod.imap import maildir_backend
from mailpod.imap.server import ImapServer
from mailpod.imap.utf7 import decode_mutf7, encode_mutf7
from tests.unit.mailpod.imap.test_server import Client, connect, pool, server

__all__ = ["pool", "server"]  # fixtures, re-used

Server = tuple[ImapServer, asyncio.Server]


async def append(client: Client, text: bytes, flags: bytes = b"") -> bytes:
    message = b"Subject: " + text + b"\r\n\r\nbody " + text + b"\r\n"
    command = b"a APPEND INBOX " + (b"(" + flags + b") " if flags else b"")
    await client.send(command + b"{%d+}\r\n" % len(message) + message + b"\r\n")
    while True:
        line = await client.line()
        if line.startswith(b"a "):
            return line


def modseq_of(lines: list[bytes], code: bytes = b"HIGHESTMODSEQ") -> int:
    match = re.search(rb"\[" + code + rb" (\d+)\]", b"".join(lines))
    assert match is not None, lines
    return int(match[1])


async def test_condstore_select_fetch_store_search_status(server: Server) -> None:
    client = await connect(server[1])
    for n in (b"1", b"2", b"3"):
        assert (await append(client, n)).startswith(b"a OK [APPENDUID")
    reply = await client.exchange(b"s SELECT INBOX (CONDSTORE)")
    highest = modseq_of(reply)
    assert reply[-1] == b"s OK [READ-WRITE] SELECT completed\r\n"
    # Flag changes now carry the message's new MODSEQ.
    stored = await client.exchange(b"t STORE 2 +FLAGS (\\Flagged)")
    assert stored[0] == b"* 2 FETCH (UID 2 FLAGS (\\Flagged) MODSEQ (%d))\r\n" % (highest + 1)
    assert await client.exchange(b"f UID FETCH 1:* (FLAGS) (CHANGEDSINCE %d)" % highest) == [
        b"* 2 FETCH (UID 2 FLAGS (\\Flagged) MODSEQ (%d))\r\n" % (highest + 1),
        b"f OK UID FETCH completed\r\n",
    ]
    # UNCHANGEDSINCE: message 2 changed after `highest`, so only 1 and 3 are stored.
    reply = await client.exchange(
        b"u STORE 1:3 (UNCHANGEDSINCE %d) +FLAGS.SILENT (\\Seen)" % highest
    )
    assert reply == [
        b"* 1 FETCH (MODSEQ (%d))\r\n" % (highest + 2),
        b"* 3 FETCH (MODSEQ (%d))\r\n" % (highest + 2),
        b"u OK [MODIFIED 2] Conditional STORE failed\r\n",
    ]
    assert await client.exchange(b"q SEARCH MODSEQ %d" % (highest + 1)) == [
        b"* SEARCH 1 2 3 (MODSEQ %d)\r\n" % (highest + 2),
        b"q OK SEARCH completed\r\n",
    ]
    assert await client.exchange(b"r UID SEARCH RETURN (COUNT) MODSEQ %d" % (highest + 2)) == [
        b'* ESEARCH (TAG "r") UID COUNT 2 MODSEQ %d\r\n' % (highest + 2),
        b"r OK UID SEARCH completed\r\n",
    ]
    assert await client.exchange(b"x STATUS INBOX (HIGHESTMODSEQ MESSAGES)") == [
        b"* STATUS INBOX (HIGHESTMODSEQ %d MESSAGES 3)\r\n" % (highest + 2),
        b"x OK STATUS completed\r\n",
    ]


async def test_condstore_enabled_by_a_command_reports_highestmodseq(server: Server) -> None:
    client = await connect(server[1])
    await append(client, b"1")
    reply = await client.exchange(b"s SELECT INBOX")
    assert not any(b"HIGHESTMODSEQ" in line for line in reply)
    reply = await client.exchange(b"f FETCH 1 (MODSEQ)")
    assert re.fullmatch(rb"\* OK \[HIGHESTMODSEQ \d+\] Highest\r\n", reply[0])
    assert re.fullmatch(rb"\* 1 FETCH \(MODSEQ \(\d+\)\)\r\n", reply[1])
    assert await client.exchange(b"e ENABLE CONDSTORE X-UNKNOWN") == [
        b"* ENABLED CONDSTORE\r\n",
        b"e OK ENABLE completed\r\n",
    ]


async def test_other_sessions_flag_changes_carry_modseq(server: Server) -> None:
    first, second = await connect(server[1]), await connect(server[1])
    await append(first, b"1")
    await first.exchange(b"e ENABLE CONDSTORE")
    await first.exchange(b"s SELECT INBOX")
    await second.exchange(b"s SELECT INBOX")
    stored = await second.exchange(b"t STORE 1 FLAGS.SILENT (\\Answered)")
    assert stored == [b"t OK STORE completed\r\n"]
    reply = await first.exchange(b"n NOOP")
    assert re.fullmatch(rb"\* 1 FETCH \(UID 1 FLAGS \(\\Answered\) MODSEQ \(\d+\)\)\r\n", reply[0])


async def test_qresync_select_and_vanished(server: Server) -> None:
    client = await connect(server[1])
    for n in (b"1", b"2", b"3", b"4"):
        await append(client, n)
    assert await client.exchange(b"e ENABLE QRESYNC") == [
        b"* ENABLED QRESYNC\r\n",
        b"e OK ENABLE completed\r\n",
    ]
    reply = await client.exchange(b"s SELECT INBOX")
    uidvalidity = modseq_of(reply, b"UIDVALIDITY")
    cached = modseq_of(reply)
    await client.exchange(b"t STORE 1,3 +FLAGS.SILENT (\\Deleted)")
    await client.exchange(b"t2 STORE 2 +FLAGS.SILENT (\\Flagged)")
    # With QRESYNC expunges are VANISHED UIDs, not EXPUNGE sequence numbers.
    assert await client.exchange(b"x EXPUNGE") == [
        b"* VANISHED 1,3\r\n",
        b"x OK EXPUNGE completed\r\n",
    ]
    await client.exchange(b"c CLOSE")
    # A client with a cache from before: vanished UIDs, then what changed since.
    reply = await client.exchange(b"q SELECT INBOX (QRESYNC (%d %d 1:4))" % (uidvalidity, cached))
    assert b"* VANISHED (EARLIER) 1,3\r\n" in reply
    changed = [line for line in reply if b"FETCH" in line]
    assert len(changed) == 1
    assert re.fullmatch(rb"\* 1 FETCH \(UID 2 FLAGS \(\\Flagged\) MODSEQ \(\d+\)\)\r\n", changed[0])
    assert reply.index(b"* VANISHED (EARLIER) 1,3\r\n") < reply.index(changed[0])
    # UID FETCH ... (CHANGEDSINCE n VANISHED)
    reply = await client.exchange(b"f UID FETCH 1:* (FLAGS) (CHANGEDSINCE %d VANISHED)" % cached)
    assert reply[0] == b"* VANISHED (EARLIER) 1,3\r\n"
    assert re.fullmatch(rb"\* 1 FETCH \(UID 2 FLAGS \(\\Flagged\) MODSEQ \(\d+\)\)\r\n", reply[1])
    # A stale UIDVALIDITY: a plain SELECT, the client must resync from scratch.
    reply = await client.exchange(b"r SELECT INBOX (QRESYNC (1 %d))" % cached)
    assert reply[0] == b"* OK [CLOSED] Previous mailbox closed\r\n"
    assert not any(b"VANISHED" in line or b"FETCH" in line for line in reply)


async def test_qresync_must_be_enabled(server: Server) -> None:
    client = await connect(server[1])
    assert await client.exchange(b"s SELECT INBOX (QRESYNC (1 1))") == [
        b"s BAD QRESYNC must be enabled first\r\n"
    ]
    await client.exchange(b"s2 SELECT INBOX")
    reply = await client.exchange(b"f UID FETCH 1:* FLAGS (CHANGEDSINCE 1 VANISHED)")
    assert reply == [b"f BAD VANISHED needs QRESYNC enabled\r\n"]


async def test_quota_without_a_limit(server: Server) -> None:
    client = await connect(server[1])
    assert await client.exchange(b"q GETQUOTAROOT INBOX") == [
        b"* QUOTAROOT INBOX\r\n",
        b"q OK GETQUOTAROOT completed\r\n",
    ]
    assert await client.exchange(b'g GETQUOTA ""') == [b"g NO [NONEXISTENT] No such quota root\r\n"]


@pytest.mark.parametrize("server", [{"quota_bytes": 4096}], indirect=True)
async def test_quota_reports_usage_and_refuses_appends(server: Server) -> None:
    client = await connect(server[1])
    big = b"x" * 1500  # a message of 3,030 bytes: the second one does not fit
    assert (await append(client, big)).startswith(b"a OK [APPENDUID")
    assert await client.exchange(b"q GETQUOTAROOT Sent") == [
        b'* QUOTAROOT Sent ""\r\n',
        b'* QUOTA "" (STORAGE 3 4)\r\n',
        b"q OK GETQUOTAROOT completed\r\n",
    ]
    reply = await client.exchange(b'g GETQUOTA ""')
    assert reply[0] == b'* QUOTA "" (STORAGE 3 4)\r\n'
    assert await append(client, big) == b"a NO [OVERQUOTA] Mailbox is full\r\n"
    await client.exchange(b"s SELECT INBOX")
    assert await client.exchange(b"c COPY 1 Sent") == [b"c NO [OVERQUOTA] Mailbox is full\r\n"]
    assert await client.exchange(b"n GETQUOTAROOT Nope") == [
        b"n NO [NONEXISTENT] No such mailbox\r\n"
    ]


async def test_imap4rev2_enabled(server: Server) -> None:
    client = await connect(server[1])
    await append(client, b"1")
    assert await client.exchange(b"e ENABLE IMAP4rev2") == [
        b"* ENABLED IMAP4rev2\r\n",
        b"e OK ENABLE completed\r\n",
    ]
    reply = await client.exchange(b"s SELECT INBOX")
    assert b"* 0 RECENT\r\n" not in reply
    assert not any(b"[UNSEEN" in line for line in reply)
    # SEARCH answers with ESEARCH.
    assert await client.exchange(b"f UID SEARCH ALL") == [
        b'* ESEARCH (TAG "f") UID ALL 1\r\n',
        b"f OK UID SEARCH completed\r\n",
    ]
    assert await client.exchange(b"g SEARCH DELETED") == [
        b'* ESEARCH (TAG "g")\r\n',
        b"g OK SEARCH completed\r\n",
    ]
    # UTF-8 mailbox names: stored in modified UTF-7, shown as UTF-8.
    name = "Entwürfe".encode()
    await client.send(b"c CREATE {%d+}\r\n" % len(name) + name + b"\r\n")
    assert await client.line() == b"c OK CREATE completed\r\n"
    reply = await client.exchange(b'l LIST "" "Entw*"')
    assert reply == [
        b'* LIST (\\HasNoChildren) "." {%d}\r\n' % len(name),
        name + b"\r\n",
        b"l OK LIST completed\r\n",
    ]
    other = await connect(server[1])
    assert await other.exchange(b'l LIST "" "Entw*"') == [
        b'* LIST (\\HasNoChildren) "." Entw&APw-rfe\r\n',
        b"l OK LIST completed\r\n",
    ]


async def test_rev2_list_says_nonexistent(server: Server) -> None:
    client = await connect(server[1])
    await client.exchange(b"c CREATE a.b")
    await client.exchange(b"d DELETE a")  # a exists through its child only
    await client.exchange(b"e ENABLE IMAP4rev2")
    reply = await client.exchange(b'l LIST "" %')
    assert b'* LIST (\\NonExistent \\HasChildren) "." a\r\n' in reply


@pytest.mark.parametrize(
    ("text", "encoded"),
    [
        ("INBOX", "INBOX"),
        ("Entwürfe", "Entw&APw-rfe"),
        ("A&B", "A&-B"),
        ("日本語", "&ZeVnLIqe-"),
        ("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),
    ],
)
def test_modified_utf7(text: str, encoded: str) -> None:
    assert encode_mutf7(text) == encoded
    assert decode_mutf7(encoded) == text


def test_invalid_modified_utf7_is_kept() -> None:
    assert decode_mutf7("a&b") == "a&b"
    assert decode_mutf7("a&***-") == "a&***-"


async def test_sessions_of_one_user_share_an_index_and_see_each_other(server: Server) -> None:
    first, second = await connect(server[1]), await connect(server[1])
    assert len(maildir_backend._OPEN) == 1  # one SQLite connection for both sessions
    await first.exchange(b"s SELECT INBOX")
    await second.exchange(b"s SELECT INBOX")
    assert (await append(second, b"1")).startswith(b"a OK [APPENDUID ")
    # The second session's own poll must not hide the change from the first.
    await second.exchange(b"n NOOP")
    assert await first.exchange(b"n NOOP") == [b"* 1 EXISTS\r\n", b"n OK NOOP completed\r\n"]
    await first.exchange(b"t STORE 1 +FLAGS.SILENT (\\Seen)")
    assert await second.exchange(b"n2 NOOP") == [
        b"* 1 FETCH (UID 1 FLAGS (\\Seen))\r\n",
        b"n2 OK NOOP completed\r\n",
    ]
    await first.exchange(b"o LOGOUT")
    assert await second.exchange(b"n3 NOOP") == [b"n3 OK NOOP completed\r\n"]
    await second.exchange(b"o LOGOUT")
    await asyncio.sleep(0.05)
    # The last session gone, the index lingers for the next login, then closes.
    assert [shared.users for shared in maildir_backend._OPEN.values()] == [0]
    maildir_backend.close_idle_indexes()
    assert not maildir_backend._OPEN
