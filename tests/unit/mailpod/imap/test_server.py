"""Byte-level transcripts of the IMAP server, in process, over real asyncio streams, with the
Maildir backend on a temporary directory and a fake pod runtime."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mailpod.config import Listener, ListenerKind, MailpodConfig
from mailpod.directory import Directory
from mailpod.imap import maildir_backend
from mailpod.imap.backend import MailboxSession
from mailpod.imap.maildir_backend import MaildirMailboxSession
from mailpod.imap.server import ImapServer
from mailpod.ratelimit import ConnectionTable
from mailpod.state import Snapshot
from mailpod.storage.maildir import mailbox_dir

USER = "alice@example.com"
PASSWORD = "secret"
HASH = "$2b$04$" + "a" * 53


@dataclass
class Outcome:
    user: str | None
    locked: bool = False


class FakeRuntime:
    def __init__(self, mail_root: Path, quota_bytes: int = 0) -> None:
        config = MailpodConfig.model_validate(
            {
                "hostname": "mail.example.com",
                "listeners": [{"kind": "smtp", "port": 25}],
                "domains": ["example.com"],
                "mailboxes": [{"address": USER, "password_hash": HASH, "quota_bytes": quota_bytes}],
                "storage": {"mail_root": str(mail_root), "queue_dir": str(mail_root / "q")},
                "limits": {"max_message_bytes": 10_000},
            }
        )
        self._snapshot = Snapshot(config, Directory(config))
        self.failures: list[str] = []
        self.connections = ConnectionTable(1).worker(0)

    def snapshot(self) -> Snapshot:
        return self._snapshot

    def is_trusted_proxy(self, peer_ip: str) -> bool:
        return False

    async def authenticate(self, username: str, password: str, client_ip: str) -> Outcome:
        return Outcome(USER if (username, password) == (USER, PASSWORD) else None)

    def count_auth_failure(self, mechanism: str, reason: str) -> None:
        self.failures.append(mechanism)

    async def over_quota(self, mailbox: str, quota_bytes: int, incoming: int) -> bool:
        return False


class Client:
    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def line(self) -> bytes:
        return await asyncio.wait_for(self.reader.readline(), 5)

    async def exchange(self, command: bytes) -> list[bytes]:
        """Send `tag ...`, return every line up to and including the tagged reply."""
        tag = command.split(b" ", 1)[0]
        await self.send(command + b"\r\n")
        lines = []
        while True:
            line = await self.line()
            lines.append(line)
            if line.startswith(tag + b" ") or not line:
                return lines


_clients: list[Client] = []


@pytest.fixture
def pool() -> Iterator[concurrent.futures.ThreadPoolExecutor]:
    executor = concurrent.futures.ThreadPoolExecutor(4)
    yield executor
    executor.shutdown()


@pytest.fixture
async def server(
    tmp_path: Path, pool: concurrent.futures.ThreadPoolExecutor, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[ImapServer, asyncio.Server]]:
    # Indirect parametrisation may ask for a quota: {"quota_bytes": n}.
    options: dict[str, int] = getattr(request, "param", {})
    runtime = FakeRuntime(tmp_path / "mail", options.get("quota_bytes", 0))

    async def open_mailbox(user: str) -> MailboxSession:
        return await MaildirMailboxSession.open(tmp_path / "mail", user, pool, "host.test")

    # IMAPS without TLS on the socket: the server believes TLS is up, the test reads plain bytes.
    imap = ImapServer(runtime, Listener(kind=ListenerKind.IMAPS, port=0), None, open_mailbox)
    listening = await asyncio.start_server(imap.handle, "127.0.0.1", 0)
    yield imap, listening
    for client in _clients:
        await client.close()
    _clients.clear()
    await asyncio.sleep(0.05)  # let the handlers see EOF and finish
    listening.close()
    await listening.wait_closed()
    maildir_backend.close_idle_indexes()


async def connect(listening: asyncio.Server, login: bool = True) -> Client:
    port = listening.sockets[0].getsockname()[1]
    client = Client(*await asyncio.open_connection("127.0.0.1", port))
    _clients.append(client)
    greeting = await client.line()
    assert greeting.startswith(b"* OK [CAPABILITY IMAP4rev1 IMAP4rev2 AUTH=PLAIN ")
    if login:
        reply = await client.exchange(b"l LOGIN alice@example.com secret")
        assert reply[-1].startswith(b"l OK [CAPABILITY ")
    return client


async def test_select_transcript(server: tuple[ImapServer, asyncio.Server]) -> None:
    client = await connect(server[1])
    reply = await client.exchange(b"s SELECT INBOX")
    uidvalidity = re.search(rb"UIDVALIDITY (\d+)", b"".join(reply))
    assert uidvalidity is not None
    assert reply == [
        b"* FLAGS (\\Answered \\Deleted \\Draft \\Flagged \\Seen)\r\n",
        b"* OK [PERMANENTFLAGS (\\Answered \\Deleted \\Draft \\Flagged \\Seen \\*)] Flags"
        b" permitted\r\n",
        b"* 0 EXISTS\r\n",
        b"* 0 RECENT\r\n",
        b"* OK [UIDVALIDITY " + uidvalidity[1] + b"] UIDs valid\r\n",
        b"* OK [UIDNEXT 1] Predicted next UID\r\n",
        b"s OK [READ-WRITE] SELECT completed\r\n",
    ]


async def test_append_fetch_store_search_expunge_transcript(
    server: tuple[ImapServer, asyncio.Server],
) -> None:
    client = await connect(server[1])
    await client.exchange(b"s SELECT INBOX")
    await client.send(b"a APPEND INBOX (\\Draft) {20}\r\n")
    assert await client.line() == b"+ Ready for literal data\r\n"
    await client.send(b"Subject: hi\r\n\r\nhey\r\n\r\n")
    appended = [await client.line(), await client.line()]
    assert appended[0] == b"* 1 EXISTS\r\n"
    assert re.fullmatch(rb"a OK \[APPENDUID \d+ 1\] APPEND completed\r\n", appended[1])
    assert await client.exchange(b"f FETCH 1 (FLAGS RFC822.SIZE BODY[TEXT])") == [
        # BODY[TEXT] (no PEEK) set \\Seen, and FLAGS reports it.
        b"* 1 FETCH (FLAGS (\\Draft \\Seen) RFC822.SIZE 20 BODY[TEXT] {5}\r\n",
        b"hey\r\n",
        b")\r\n",
        b"f OK FETCH completed\r\n",
    ]
    assert await client.exchange(b"t STORE 1 +FLAGS (\\Deleted $Later)") == [
        b"* FLAGS (\\Answered \\Deleted \\Draft \\Flagged \\Seen $Later)\r\n",
        b"* OK [PERMANENTFLAGS (\\Answered \\Deleted \\Draft \\Flagged \\Seen $Later \\*)]"
        b" Flags permitted\r\n",
        b"* 1 FETCH (UID 1 FLAGS (\\Deleted \\Draft \\Seen $Later))\r\n",
        b"t OK STORE completed\r\n",
    ]
    assert await client.exchange(b"q UID SEARCH DELETED KEYWORD $Later") == [
        b"* SEARCH 1\r\n",
        b"q OK UID SEARCH completed\r\n",
    ]
    assert await client.exchange(b"e EXPUNGE") == [
        b"* 1 EXPUNGE\r\n",
        b"e OK EXPUNGE completed\r\n",
    ]


async def test_state_and_syntax_errors_keep_the_connection(
    server: tuple[ImapServer, asyncio.Server],
) -> None:
    client = await connect(server[1], login=False)
    assert await client.exchange(b"a SELECT INBOX") == [b"a BAD SELECT is not allowed now\r\n"]
    assert await client.exchange(b"b LOGIN alice@example.com wrong") == [
        b"b NO [AUTHENTICATIONFAILED] Authentication failed\r\n"
    ]
    assert await client.exchange(b"c FETCH 1:* FLAGS") == [b"c BAD FETCH is not allowed now\r\n"]
    await client.exchange(b"d LOGIN alice@example.com secret")
    await client.exchange(b"e SELECT INBOX")
    assert (await client.exchange(b"f FETCH 1:* (FLAGS"))[0].startswith(b"f BAD ")
    assert await client.exchange(b"g FETCH 5 FLAGS") == [
        b"g BAD Invalid message sequence number\r\n"
    ]
    assert await client.exchange(b"h NOOP") == [b"h OK NOOP completed\r\n"]


async def test_internal_errors_answer_serverbug(
    server: tuple[ImapServer, asyncio.Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(self: MaildirMailboxSession) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(MaildirMailboxSession, "list_folders", broken)
    client = await connect(server[1])
    assert await client.exchange(b'a LIST "" *') == [b"a NO [SERVERBUG] Internal server error\r\n"]
    assert await client.exchange(b"b NOOP") == [b"b OK NOOP completed\r\n"]


async def test_idle_reports_a_delivery(
    server: tuple[ImapServer, asyncio.Server], tmp_path: Path
) -> None:
    client = await connect(server[1])
    await client.exchange(b"s SELECT INBOX")
    await client.send(b"i IDLE\r\n")
    assert await client.line() == b"+ idling\r\n"
    new = mailbox_dir(tmp_path / "mail", USER) / "new"
    (new / "1700000000.M1P1Q1.mx,S=16").write_bytes(b"Subject: x\r\n\r\nx\r\n")
    assert await client.line() == b"* 1 EXISTS\r\n"
    await client.send(b"DONE\r\n")
    assert await client.line() == b"i OK IDLE terminated\r\n"


async def test_literal_limits(server: tuple[ImapServer, asyncio.Server]) -> None:
    client = await connect(server[1])
    assert await client.exchange(b"a APPEND INBOX {20000}") == [
        b"a NO [TOOBIG] Literal too large\r\n"
    ]
    await client.send(b"b APPEND INBOX {20000+}\r\n")
    assert await client.line() == b"* BYE [TOOBIG] Literal too large\r\n"
    assert await client.line() == b""


async def test_connections_per_address_and_per_user_are_limited(
    server: tuple[ImapServer, asyncio.Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    imap, listening = server
    runtime = imap.runtime
    assert isinstance(runtime, FakeRuntime)
    config = runtime.snapshot().config
    limits = config.limits.model_copy(update={"max_connections_per_ip": 3})
    runtime._snapshot = Snapshot(config.model_copy(update={"limits": limits}), Directory(config))
    monkeypatch.setattr("mailpod.imap.server.MAX_CONNECTIONS_PER_USER", 2)
    first, second = await connect(listening), await connect(listening)
    third = await connect(listening, login=False)
    assert (await third.exchange(b"l LOGIN alice@example.com secret"))[-1].startswith(
        b"l NO [LIMIT] Too many connections for this user"
    )
    port = listening.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    _clients.append(Client(reader, writer))
    assert (
        await reader.readline() == b"* BYE [UNAVAILABLE] Too many connections from your address\r\n"
    )
    assert (await first.exchange(b"o LOGOUT"))[-1].startswith(b"o OK")
    await first.close()
    await asyncio.sleep(0.05)  # the server sees the end of the session
    assert (await third.exchange(b"l LOGIN alice@example.com secret"))[-1].startswith(b"l OK")
    assert await second.exchange(b"n NOOP") == [b"n OK NOOP completed\r\n"]
