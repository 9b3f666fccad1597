"""The IMAP connection handler: framing, states, `do_<command>` dispatch, untagged updates.

One `ImapConnection` per client, on asyncio streams. Commands are framed here (lines plus
literals, with size limits), parsed by the pure `mailpod.imap.parser`, and dispatched to
`do_<name>` methods that talk to storage only through a `MailboxSession`. A handler returns the
text of its tagged OK; before it goes out, storage changes (new mail, other sessions' flag
changes and expunges) become untagged responses. Errors:

* `ImapError` → tagged NO/BAD with its response code; the connection lives;
* a syntax error → BAD; an oversized literal → NO [TOOBIG] (or BYE for a non-synchronizing one,
  whose bytes are already on their way);
* anything unexpected → logged with its traceback, `NO [SERVERBUG]` on the wire.

Passwords and AUTHENTICATE payloads never reach a log: commands are never logged raw.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import logging
import re
import secrets
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from mailpod import metrics
from mailpod.config import Listener
from mailpod.imap.backend import MailboxError, MailboxSession
from mailpod.imap.fetch import needs_body, needs_header_only, render_fetch, sets_seen
from mailpod.imap.listing import DELIMITER, list_folders
from mailpod.imap.parser import (
    Append,
    Authenticate,
    Command,
    CopyMove,
    Enable,
    Expunge,
    Fetch,
    FetchAttr,
    Id,
    ListCommand,
    Login,
    MailboxCommand,
    ParseError,
    Rename,
    Search,
    SearchKey,
    Select,
    SequenceSet,
    Status,
    Store,
    literal_at_end,
    parse_command,
)
from mailpod.imap.response import astring
from mailpod.imap.search import (
    Candidate,
    SearchContext,
    compile_key,
    index_only_part,
    needs_message,
    needs_text,
)
from mailpod.imap.selected import BadSequence, SelectedView
from mailpod.imap.utf7 import decode_mutf7, encode_mutf7
from mailpod.proxy import ProxyProtocolError, client_address, feed_buffered
from mailpod.ratelimit import ConnectionCounter
from mailpod.state import Snapshot

__all__ = ["ImapConnection", "ImapError", "ImapRuntime", "ImapServer"]

log = logging.getLogger("mailpod.imap")

MAX_LINE = 64 * 1024
"""A command line (without its literals). Also the StreamReader limit."""
MAX_LITERAL = 64 * 1024
"""Literals other than APPEND's message (names, search strings, passwords)."""
PREAUTH_TIMEOUT = 60.0
IDLE_AUTOLOGOUT = 30 * 60.0
"""RFC 9051 asks for at least 30 minutes; IDLE clients re-issue IDLE well before it."""
POLL_INTERVAL = 0.5
"""How often IDLE looks for changes: deliveries reach IDLE clients within a second."""
KEEPALIVE_INTERVAL = 120.0
"""Untagged OK during IDLE keeps NAT and load-balancer connection tables from forgetting us."""
FETCH_BATCH = 64
"""Messages read per storage call in FETCH and SEARCH: bounds memory per connection."""
HEADER_BATCH = 512
"""The same when only header sections are read (a few KiB each)."""
FLUSH_AT = 256 * 1024
MAX_CONNECTIONS_PER_USER = 50
"""Per pod: a mail client uses a handful, a runaway script hundreds."""
MAX_BAD_COMMANDS = 20
"""Consecutive BAD commands before we hang up: a client this confused is not an IMAP client."""

_APPEND = re.compile(rb"^[^ ]+ APPEND ", re.IGNORECASE)
_TAG = re.compile(rb"^([!#$&'*+,\-./0-9:;<=>?@A-Z\[^_`a-z|}~]+) ")


class AuthOutcome(Protocol):
    @property
    def user(self) -> str | None: ...

    @property
    def locked(self) -> bool: ...


class ImapRuntime(Protocol):
    """What the IMAP server needs from the running pod (PodRuntime provides it)."""

    def snapshot(self) -> Snapshot: ...

    def is_trusted_proxy(self, peer_ip: str) -> bool: ...

    async def authenticate(self, username: str, password: str, client_ip: str) -> AuthOutcome: ...

    def count_auth_failure(self, mechanism: str, reason: str) -> None: ...

    async def over_quota(self, mailbox: str, quota_bytes: int, incoming: int) -> bool: ...

    @property
    def connections(self) -> ConnectionCounter:
        """Open connections per client address and per user, pod-wide."""


def _user_key(user: str) -> str:
    """The open-connection count of a logged-in user (pod-wide, as per client address)."""
    return f"imap-user|{user}"


class ImapError(Exception):
    def __init__(self, status: str, text: str, code: str | None = None) -> None:
        super().__init__(text)
        self.status = status
        self.text = text
        self.code = code

    def line(self, tag: str) -> bytes:
        code = f"[{self.code}] " if self.code else ""
        return f"{tag} {self.status} {code}{self.text}\r\n".encode("utf-8", "replace")


class _Hangup(Exception):
    """End the connection after writing `line` (a BYE)."""

    def __init__(self, line: bytes) -> None:
        super().__init__(line.decode("ascii", "replace"))
        self.line = line


class _LiteralRefused(Exception):
    def __init__(self, tag: str) -> None:
        super().__init__(tag)
        self.tag = tag


class _LineTooLong(Exception):
    pass


class State(Enum):
    NOT_AUTHENTICATED = "not authenticated"
    AUTHENTICATED = "authenticated"
    SELECTED = "selected"
    LOGOUT = "logout"


_ANY = frozenset(State) - {State.LOGOUT}
_NOT_AUTH = frozenset({State.NOT_AUTHENTICATED})
_AUTH = frozenset({State.AUTHENTICATED, State.SELECTED})
_SELECTED = frozenset({State.SELECTED})
_ALLOWED = {
    "CAPABILITY": _ANY,
    "NOOP": _ANY,
    "LOGOUT": _ANY,
    "ID": _ANY,
    "STARTTLS": _NOT_AUTH,
    "LOGIN": _NOT_AUTH,
    "AUTHENTICATE": _NOT_AUTH,
    "ENABLE": _AUTH,
    "NAMESPACE": _AUTH,
    "SELECT": _AUTH,
    "EXAMINE": _AUTH,
    "CREATE": _AUTH,
    "DELETE": _AUTH,
    "RENAME": _AUTH,
    "SUBSCRIBE": _AUTH,
    "UNSUBSCRIBE": _AUTH,
    "LIST": _AUTH,
    "LSUB": _AUTH,
    "STATUS": _AUTH,
    "APPEND": _AUTH,
    "IDLE": _AUTH,
    "GETQUOTA": _AUTH,
    "GETQUOTAROOT": _AUTH,
    "CHECK": _SELECTED,
    "CLOSE": _SELECTED,
    "UNSELECT": _SELECTED,
    "EXPUNGE": _SELECTED,
    "SEARCH": _SELECTED,
    "FETCH": _SELECTED,
    "STORE": _SELECTED,
    "COPY": _SELECTED,
    "MOVE": _SELECTED,
}
# Sequence numbers in these commands' responses must not shift under the client: no EXPUNGE.
_NO_EXPUNGE = frozenset({"FETCH", "STORE", "SEARCH"})
_STATUS_ITEMS = frozenset(
    {"MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "SIZE", "DELETED", "HIGHESTMODSEQ"}
)

# What ENABLE knows, in the spelling ENABLED answers with. QRESYNC implies CONDSTORE;
# IMAP4rev2 implies UTF-8 mailbox names (RFC 9051 and RFC 6855).
_ENABLEABLE = {
    "CONDSTORE": "CONDSTORE",
    "QRESYNC": "QRESYNC",
    "IMAP4REV2": "IMAP4rev2",
    "UTF8=ACCEPT": "UTF8=ACCEPT",
}
QUOTA_ROOT = ""
"""One quota root per user, covering all their folders (the config has one quota per mailbox)."""


@dataclass
class ImapServer:
    """Serves one IMAP listener: `handle` is the asyncio.start_server callback."""

    runtime: ImapRuntime
    listener: Listener
    tls: ssl.SSLContext | None
    open_mailbox: Callable[[str], Awaitable[MailboxSession]]

    @property
    def implicit_tls(self) -> bool:
        return self.listener.implicit_tls

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        peer_ip = str(peer[0]) if isinstance(peer, tuple) else str(peer)
        peer_port = int(peer[1]) if isinstance(peer, tuple) else 0
        config = self.runtime.snapshot().config
        trusted = self.runtime.is_trusted_proxy(peer_ip)
        # Behind a trusted load balancer every client shares its address: no per-IP limit.
        limit = None if trusted else config.limits.max_connections_per_ip
        connection_key = f"imap|{peer_ip}"
        if not self.runtime.connections.acquire(connection_key, limit):
            with contextlib.suppress(ConnectionError):
                writer.write(b"* BYE [UNAVAILABLE] Too many connections from your address\r\n")
                await writer.drain()
            writer.close()
            return
        kind = self.listener.kind.value
        metrics.CONNECTIONS.labels(listener=kind).inc()
        metrics.CONNECTIONS_OPEN.labels(listener=kind).inc()
        try:
            client_ip = peer_ip
            if self.listener.proxy_protocol:
                try:
                    client_ip, _ = await client_address(
                        reader,
                        (peer_ip, peer_port),
                        proxy_protocol=True,
                        trusted=config.trusted_proxies,
                        timeout=5.0,
                    )
                except ProxyProtocolError as error:
                    log.warning("bad PROXY header from %s: %s", peer_ip, error)
                    return
            if (
                self.implicit_tls
                and self.tls is not None
                and not writer.get_extra_info("ssl_object")
            ):
                # A load balancer's PROXY header comes in clear before the TLS handshake, so a
                # PROXY-protocol IMAPS listener must be served without `ssl=`: TLS starts here.
                try:
                    await _start_tls_keeping_buffered(reader, writer, self.tls)
                except (ssl.SSLError, ConnectionError, TimeoutError) as error:
                    log.info("tls handshake failed from %s: %s", client_ip, error)
                    return
            connection = ImapConnection(self, reader, writer, client_ip)
            await connection.run()
        finally:
            self.runtime.connections.release(connection_key)
            metrics.CONNECTIONS_OPEN.labels(listener=kind).dec()
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


class ImapConnection:
    def __init__(
        self,
        server: ImapServer,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        client_ip: str,
    ) -> None:
        self.server = server
        self.runtime = server.runtime
        self.reader = reader
        self.writer = writer
        self.client_ip = client_ip
        self.session_id = secrets.token_hex(6)
        self.state = State.NOT_AUTHENTICATED
        self.tls_active = server.implicit_tls
        self.mailbox: MailboxSession | None = None
        self.view: SelectedView | None = None
        self.user: str | None = None
        self.enabled: set[str] = set()  # upper-case extension names turned on by ENABLE
        self.condstore = False  # CONDSTORE on, explicitly or by a CONDSTORE-enabling command
        self.commands = 0
        self._out = bytearray()
        self._counted_user: str | None = None
        self._started = time.monotonic()

    # --- output -------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        self._out += data

    async def flush(self) -> None:
        if self._out:
            self.writer.write(bytes(self._out))
            self._out.clear()
        await self.writer.drain()

    async def flush_if_big(self) -> None:
        if len(self._out) >= FLUSH_AT:
            await self.flush()

    # --- input --------------------------------------------------------------------------------

    async def _read_line(self) -> bytes:
        try:
            line = await self.reader.readuntil(b"\n")
        except asyncio.LimitOverrunError as error:
            # Throw the over-long line away (in pieces: memory stays bounded), then say BAD.
            consumed = error.consumed
            while True:
                await self.reader.readexactly(max(consumed, 1))
                try:
                    await self.reader.readuntil(b"\n")
                    break
                except asyncio.LimitOverrunError as more:
                    consumed = more.consumed
            raise _LineTooLong() from None
        if not line:
            raise asyncio.IncompleteReadError(b"", None)
        return line

    def _literal_limit(self, first_line: bytes) -> int:
        if _APPEND.match(first_line):
            return self.runtime.snapshot().config.limits.max_message_bytes
        return MAX_LITERAL

    async def _read_command(self) -> bytes:
        """One command with its literals inline, ready for the parser."""
        line = await self._read_line()
        data = bytearray(line)
        limit = self._literal_limit(line)
        total = 0
        while (announced := literal_at_end(line)) is not None:
            size, non_synchronizing = announced
            total += size
            if total > limit:
                match = _TAG.match(bytes(data))
                tag = match[1].decode() if match else "*"
                if non_synchronizing:
                    # The client sends it without waiting (LITERAL+): too late to refuse it
                    # politely, and swallowing it could take forever.
                    raise _Hangup(b"* BYE [TOOBIG] Literal too large\r\n")
                raise _LiteralRefused(tag)
            if not non_synchronizing:
                self.write(b"+ Ready for literal data\r\n")
                await self.flush()
                self._quickack()
            data += await self.reader.readexactly(size)
            line = await self._read_line()
            data += line
        return bytes(data)

    def _quickack(self) -> None:
        """ACK the literal at once: clients such as imaplib send it and its closing CRLF as two
        writes, and Nagle holds the CRLF until the literal is ACKed, which a delayed ACK
        postpones by 40 ms per APPEND. (Linux only; the option resets itself, hence each time.)"""
        sock = self.writer.get_extra_info("socket")
        if sock is not None and hasattr(socket, "TCP_QUICKACK"):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)

    # --- the loop -----------------------------------------------------------------------------

    def capabilities(self) -> str:
        config = self.runtime.snapshot().config
        words = ["IMAP4rev1", "IMAP4rev2"]
        if self.state is State.NOT_AUTHENTICATED:
            if self.tls_active:
                words.append("AUTH=PLAIN")
            else:
                words += ["STARTTLS", "LOGINDISABLED"]
        words += [
            "SASL-IR",
            "LITERAL+",
            "ID",
            "ENABLE",
            "IDLE",
            "NAMESPACE",
            "UNSELECT",
            "UIDPLUS",
            "MOVE",
            "CHILDREN",
            "SPECIAL-USE",
            "CREATE-SPECIAL-USE",
            "LIST-EXTENDED",
            "LIST-STATUS",
            "ESEARCH",
            "SEARCHRES",
            "STATUS=SIZE",
            "CONDSTORE",
            "QRESYNC",
            "QUOTA",
            "QUOTA=RES-STORAGE",
            "UTF8=ACCEPT",
            f"APPENDLIMIT={config.limits.max_message_bytes}",
        ]
        return " ".join(words)

    async def run(self) -> None:
        try:
            hostname = self.runtime.snapshot().config.hostname
            self.write(
                f"* OK [CAPABILITY {self.capabilities()}] {hostname} IMAP ready\r\n".encode()
            )
            await self.flush()
            bad_in_a_row = 0
            while self.state is not State.LOGOUT:
                timeout = (
                    PREAUTH_TIMEOUT if self.state is State.NOT_AUTHENTICATED else IDLE_AUTOLOGOUT
                )
                try:
                    async with asyncio.timeout(timeout):
                        raw = await self._read_command()
                except TimeoutError:
                    self.write(b"* BYE Autologout; idle for too long\r\n")
                    break
                except _LineTooLong:
                    self.write(b"* BAD Command line too long\r\n")
                    bad_in_a_row += 1
                except _LiteralRefused as refused:
                    self.write(f"{refused.tag} NO [TOOBIG] Literal too large\r\n".encode())
                else:
                    self.commands += 1
                    bad_in_a_row = 0 if await self._execute(raw) else bad_in_a_row + 1
                if bad_in_a_row >= MAX_BAD_COMMANDS:
                    self.write(b"* BYE Too many invalid commands\r\n")
                    break
                await self.flush()
        except _Hangup as hangup:
            self.write(hangup.line)
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass  # the client went away
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.flush(), timeout=5)
            await self._finish()

    async def _finish(self) -> None:
        if self.mailbox is not None:
            await self.mailbox.close()
            self.mailbox = None
        if self._counted_user is not None:
            self.runtime.connections.release(_user_key(self._counted_user))
            self._counted_user = None
        if self.user is not None:
            log.info(
                "imap session closed",
                extra={
                    "session": self.session_id,
                    "peer": self.client_ip,
                    "user": self.user,
                    "commands": self.commands,
                    "seconds": round(time.monotonic() - self._started, 3),
                },
            )

    async def _execute(self, raw: bytes) -> bool:
        """Run one command; False if it was BAD."""
        try:
            command = parse_command(raw)
        except ParseError as error:
            self.write(f"{error.tag or '*'} BAD {error.text}\r\n".encode("utf-8", "replace"))
            return False
        tag = command.tag
        allowed = _ALLOWED.get(command.name, frozenset())
        if self.state not in allowed:
            self.write(f"{tag} BAD {command.name} is not allowed now\r\n".encode())
            return False
        handler: Callable[[Command], Awaitable[str | None]] = getattr(
            self, f"do_{command.name.lower()}"
        )
        try:
            if self._utf8 and command.name != "GETQUOTA":
                command = _names_to_storage(command)
            text = await handler(command)
            if text is None:  # the handler wrote its own tagged reply
                return True
            await self._updates(
                allow_expunge=command.name not in _NO_EXPUNGE or getattr(command, "uid", False)
            )
            self.write(f"{tag} OK {text}\r\n".encode("utf-8", "replace"))
            return True
        except ImapError as error:
            self.write(error.line(tag))
            return error.status != "BAD"
        except BadSequence as error:
            self.write(f"{tag} BAD {error}\r\n".encode())
            return False
        except MailboxError as error:
            if error.code == "NONEXISTENT" and self.state is State.SELECTED:
                await self._check_selected_exists()
            self.write(ImapError("NO", error.text, error.code).line(tag))
            return True
        except (_Hangup, asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            raise
        except Exception:
            log.exception(
                "imap command failed",
                extra={"session": self.session_id, "user": self.user, "command": command.name},
            )
            self.write(f"{tag} NO [SERVERBUG] Internal server error\r\n".encode())
            return True

    @property
    def _utf8(self) -> bool:
        return bool(self.enabled & {"UTF8=ACCEPT", "IMAP4REV2"})

    @property
    def _rev2(self) -> bool:
        return "IMAP4REV2" in self.enabled

    def _name_out(self, name: str) -> bytes:
        """A stored folder name as this client wants it (UTF-8 once enabled)."""
        return astring(decode_mutf7(name) if self._utf8 else name)

    def _enable_condstore(self) -> None:
        """Turn CONDSTORE on (RFC 7162 3.1: ENABLE, or the first command that uses it); a
        client that does so with a mailbox selected learns its HIGHESTMODSEQ at once."""
        if self.condstore:
            return
        self.condstore = True
        if self.view is not None:
            self.view.condstore = True
            self.write(b"* OK [HIGHESTMODSEQ %d] Highest\r\n" % self.view.modseq)

    async def _check_selected_exists(self) -> None:
        """The selected folder was deleted by another session: nothing sensible is left."""
        assert self.mailbox is not None
        try:
            await self.mailbox.poll(0)
        except MailboxError as error:
            if error.code == "NONEXISTENT":
                raise _Hangup(
                    b"* BYE Selected mailbox was deleted, have to disconnect\r\n"
                ) from None

    async def _updates(self, allow_expunge: bool) -> None:
        if self.state is not State.SELECTED or self.view is None or self.mailbox is None:
            return
        try:
            changes = await self.mailbox.poll(self.view.modseq)
        except MailboxError as error:
            if error.code == "NONEXISTENT":
                raise _Hangup(
                    b"* BYE Selected mailbox was deleted, have to disconnect\r\n"
                ) from None
            raise
        for line in self.view.apply(changes, allow_expunge):
            self.write(line)

    # --- any state ----------------------------------------------------------------------------

    async def do_capability(self, command: Command) -> str:
        self.write(f"* CAPABILITY {self.capabilities()}\r\n".encode())
        return "CAPABILITY completed"

    async def do_noop(self, command: Command) -> str:
        return "NOOP completed"

    async def do_logout(self, command: Command) -> str | None:
        self.write(b"* BYE Logging out\r\n")
        self.write(f"{command.tag} OK LOGOUT completed\r\n".encode())
        self.state = State.LOGOUT
        return None

    async def do_id(self, command: Command) -> str:
        assert isinstance(command, Id)
        if command.params:
            wanted = {"name", "version", "vendor", "os"}
            client = {k.lower(): v for k, v in command.params if k.lower() in wanted and v}
            log.info("imap client id", extra={"session": self.session_id, "client": client})
        self.write(b'* ID ("name" "mailpod")\r\n')
        return "ID completed"

    # --- not authenticated --------------------------------------------------------------------

    async def do_starttls(self, command: Command) -> str | None:
        if self.tls_active or self.server.tls is None:
            raise ImapError("BAD", "TLS is already active" if self.tls_active else "No TLS here")
        # Plaintext pipelined behind STARTTLS would be read as if it came over TLS (the
        # STARTTLS command injection class of bugs): refuse the connection instead.
        if getattr(self.reader, "_buffer", b""):
            raise _Hangup(b"* BYE Data after STARTTLS\r\n")
        self.write(f"{command.tag} OK Begin TLS negotiation now\r\n".encode())
        await self.flush()
        await self.writer.start_tls(self.server.tls, ssl_handshake_timeout=30)
        self.tls_active = True
        return None

    async def do_login(self, command: Command) -> str:
        assert isinstance(command, Login)
        if not self.tls_active:
            raise ImapError("NO", "LOGIN is disabled before STARTTLS", "PRIVACYREQUIRED")
        return await self._login(command.username, command.password, "imap-login")

    async def do_authenticate(self, command: Command) -> str:
        assert isinstance(command, Authenticate)
        if command.mechanism != "PLAIN":
            raise ImapError("NO", "Unsupported authentication mechanism", "CANNOT")
        if not self.tls_active:
            raise ImapError("NO", "Authentication is disabled before STARTTLS", "PRIVACYREQUIRED")
        payload = command.initial
        if payload is None:
            self.write(b"+ \r\n")
            await self.flush()
            line = (await self._read_line()).rstrip(b"\r\n")
            if line == b"*":
                raise ImapError("BAD", "Authentication cancelled")
            try:
                payload = base64.b64decode(line, validate=True)
            except binascii.Error:
                raise ImapError("BAD", "Invalid base64") from None
        parts = payload.split(b"\0")
        if len(parts) != 3:
            raise ImapError("BAD", "Invalid PLAIN response")
        authzid, authcid, password = (p.decode("utf-8", "surrogateescape") for p in parts)
        if authzid and authzid != authcid:
            raise ImapError("NO", "Cannot act as another user", "AUTHORIZATIONFAILED")
        return await self._login(authcid, password, "PLAIN")

    async def _login(self, username: str, password: str, mechanism: str) -> str:
        result = await self.runtime.authenticate(username, password, self.client_ip)
        if result.user is None:
            self.runtime.count_auth_failure(mechanism, "locked" if result.locked else "invalid")
            if result.locked:
                raise ImapError("NO", "Too many failures, try again later", "UNAVAILABLE")
            raise ImapError("NO", "Authentication failed", "AUTHENTICATIONFAILED")
        user = result.user
        if not self.runtime.connections.acquire(_user_key(user), MAX_CONNECTIONS_PER_USER):
            raise ImapError("NO", "Too many connections for this user", "LIMIT")
        self._counted_user = user
        self.mailbox = await self.server.open_mailbox(user)
        self.user = user
        self.state = State.AUTHENTICATED
        log.info(
            "imap login",
            extra={
                "session": self.session_id,
                "peer": self.client_ip,
                "user": user,
                "auth_mechanism": mechanism,
                "result": "ok",
            },
        )
        return f"[CAPABILITY {self.capabilities()}] Logged in"

    # --- authenticated ------------------------------------------------------------------------

    def _mailbox(self) -> MailboxSession:
        assert self.mailbox is not None
        return self.mailbox

    async def do_enable(self, command: Command) -> str:
        assert isinstance(command, Enable)
        newly = []
        for name in command.capabilities:
            if name in _ENABLEABLE and name not in self.enabled:
                self.enabled.add(name)
                newly.append(_ENABLEABLE[name])
        self.write(b" ".join([b"* ENABLED", *(n.encode() for n in newly)]) + b"\r\n")
        if self.enabled & {"CONDSTORE", "QRESYNC"}:
            self._enable_condstore()
        if self.view is not None:
            self.view.qresync = "QRESYNC" in self.enabled
        return "ENABLE completed"

    async def do_namespace(self, command: Command) -> str:
        self.write(b'* NAMESPACE (("" "' + DELIMITER.encode() + b'")) NIL NIL\r\n')
        return "NAMESPACE completed"

    async def do_select(self, command: Command) -> str:
        assert isinstance(command, Select)
        readonly = command.name == "EXAMINE"
        if command.qresync is not None and "QRESYNC" not in self.enabled:
            raise ImapError("BAD", "QRESYNC must be enabled first")
        if self.view is not None and self.enabled & {"QRESYNC", "IMAP4REV2"}:
            # RFC 7162 3.2.11 / RFC 9051: what follows is about the newly selected mailbox.
            self.write(b"* OK [CLOSED] Previous mailbox closed\r\n")
        # A failed SELECT leaves no mailbox selected (RFC 3501 6.3.1).
        self._deselect()
        if command.condstore:
            self._enable_condstore()
        mailbox = self._mailbox()
        folder, messages = await mailbox.select(command.mailbox)
        view = SelectedView(folder, messages, readonly)
        view.condstore = self.condstore
        view.qresync = "QRESYNC" in self.enabled
        for line in view.flags_lines():
            self.write(line)
        self.write(b"* %d EXISTS\r\n" % view.exists)
        if not self._rev2:  # IMAP4rev2 dropped \Recent and the UNSEEN response code
            self.write(b"* 0 RECENT\r\n")
            unseen = next((n for n, m in enumerate(messages, 1) if "\\Seen" not in m.flags), None)
            if unseen is not None:
                self.write(b"* OK [UNSEEN %d] First unseen\r\n" % unseen)
        self.write(b"* OK [UIDVALIDITY %d] UIDs valid\r\n" % folder.uidvalidity)
        self.write(b"* OK [UIDNEXT %d] Predicted next UID\r\n" % folder.uidnext)
        if self.condstore:
            self.write(b"* OK [HIGHESTMODSEQ %d] Highest\r\n" % folder.highestmodseq)
        self.view = view
        self.state = State.SELECTED
        qresync = command.qresync
        if qresync is not None and qresync.uidvalidity == folder.uidvalidity:
            # The client's cache is valid: tell it what changed since its MODSEQ (RFC 7162
            # 3.2.5.2), expunges first. Only what this view knows of, so later polls agree.
            changes = await mailbox.changes(qresync.modseq)
            vanished = [u for u in changes.expunged if u not in view.flags]
            if qresync.known_uids is not None:
                vanished = _uids_in(qresync.known_uids, vanished, view.uidnext - 1)
            self._write_vanished(vanished)
            for record in changes.updated:
                if record.uid in view.flags and record.modseq <= view.modseq:
                    view.flags[record.uid] = record.flags
                    self.write(view.fetch_flags_line(record.uid, record.modseq))
        mode = "READ-ONLY" if readonly else "READ-WRITE"
        return f"[{mode}] {command.name} completed"

    do_examine = do_select

    def _write_vanished(self, uids: list[int]) -> None:
        if uids:
            self.write(b"* VANISHED (EARLIER) %s\r\n" % str(SequenceSet.of(uids)).encode())

    def _deselect(self) -> None:
        if self.mailbox is not None:
            self.mailbox.unselect()
        self.view = None
        if self.state is State.SELECTED:
            self.state = State.AUTHENTICATED

    async def do_create(self, command: Command) -> str:
        assert isinstance(command, MailboxCommand)
        name = command.mailbox.rstrip(DELIMITER)  # "foo." asks for foo as a future parent
        if len(command.special_use) > 1:
            raise ImapError("NO", "One special use per mailbox", "USEATTR")
        use = command.special_use[0] if command.special_use else None
        await self._mailbox().create_folder(name, use)
        return "CREATE completed"

    async def do_delete(self, command: Command) -> str:
        assert isinstance(command, MailboxCommand)
        if self.view is not None and self.view.name == command.mailbox:
            self._deselect()
        await self._mailbox().delete_folder(command.mailbox)
        return "DELETE completed"

    async def do_rename(self, command: Command) -> str:
        assert isinstance(command, Rename)
        await self._mailbox().rename_folder(command.old, command.new)
        if self.view is not None and self.view.name == command.old:
            self.view.name = command.new
        return "RENAME completed"

    async def do_subscribe(self, command: Command) -> str:
        assert isinstance(command, MailboxCommand)
        await self._mailbox().subscribe(command.mailbox, command.name == "SUBSCRIBE")
        return f"{command.name} completed"

    do_unsubscribe = do_subscribe

    async def do_list(self, command: Command) -> str:
        assert isinstance(command, ListCommand)
        lsub = command.name == "LSUB"
        selection = set(command.selection)
        returns = set(command.returns)
        unknown = selection - {"SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"}
        if unknown or ("RECURSIVEMATCH" in selection and selection == {"RECURSIVEMATCH"}):
            raise ImapError("BAD", "Unsupported LIST selection options")
        status_items = command.status_items
        if set(status_items) - _STATUS_ITEMS:
            raise ImapError("BAD", "Unknown STATUS item")
        if command.patterns == ("",) and not lsub:
            # The hierarchy delimiter and root name of the reference.
            self.write(b'* LIST (\\Noselect) "' + DELIMITER.encode() + b'" ""\r\n')
            return "LIST completed"
        folders = await self._mailbox().list_folders()
        extended = bool(command.selection or command.returns or len(command.patterns) > 1)
        extended = extended or self._rev2  # IMAP4rev2 LIST says \NonExistent, not \Noselect
        entries = list_folders(
            folders,
            command.reference,
            command.patterns,
            subscribed_only=lsub or "SUBSCRIBED" in selection,
            special_use_only="SPECIAL-USE" in selection,
            return_subscribed="SUBSCRIBED" in returns,
            recursive_match="RECURSIVEMATCH" in selection,
            extended=extended and not lsub,
        )
        for entry in entries:
            attributes = entry.attributes
            if lsub:
                attributes = tuple(a for a in attributes if a != "\\Subscribed")
            line = (
                f'* {command.name} ({" ".join(attributes)}) "{DELIMITER}" '.encode()
                + self._name_out(entry.name)
                + b"\r\n"
            )
            self.write(line)
            if status_items and entry.folder is not None and "\\NonExistent" not in attributes:
                with contextlib.suppress(MailboxError):  # deleted meanwhile: no STATUS for it
                    await self._write_status(entry.name, status_items)
        return f"{command.name} completed"

    do_lsub = do_list

    async def _write_status(self, name: str, items: tuple[str, ...]) -> None:
        if "HIGHESTMODSEQ" in items:
            self._enable_condstore()
        status = await self._mailbox().status(name)
        values = {
            "MESSAGES": status.messages,
            "RECENT": 0,
            "UIDNEXT": status.uidnext,
            "UIDVALIDITY": status.uidvalidity,
            "UNSEEN": status.unseen,
            "SIZE": status.size,
            "DELETED": status.deleted,
            "HIGHESTMODSEQ": status.highestmodseq,
        }
        pairs = " ".join(f"{item} {values[item]}" for item in dict.fromkeys(items))
        self.write(b"* STATUS " + self._name_out(name) + f" ({pairs})\r\n".encode())

    async def do_status(self, command: Command) -> str:
        assert isinstance(command, Status)
        if set(command.items) - _STATUS_ITEMS:
            raise ImapError("BAD", "Unknown STATUS item")
        await self._write_status(command.mailbox, command.items)
        return "STATUS completed"

    async def do_append(self, command: Command) -> str:
        assert isinstance(command, Append)
        config = self.runtime.snapshot()
        size = len(command.message)
        if size == 0:
            raise ImapError("NO", "Empty messages cannot be stored")
        if size > config.config.limits.max_message_bytes:
            raise ImapError("NO", "Message too large", "TOOBIG")
        await self._check_quota(size)
        try:
            uidvalidity, uid = await self._mailbox().append(
                command.mailbox, command.message, command.flags, command.date
            )
        except MailboxError as error:
            if error.code == "NONEXISTENT":
                raise ImapError("NO", "No such mailbox", "TRYCREATE") from None
            raise
        return f"[APPENDUID {uidvalidity} {uid}] APPEND completed"

    def _quota_limit(self) -> int:
        """The user's quota in bytes; 0 is none."""
        assert self.user is not None
        account = self.runtime.snapshot().directory.mailbox(self.user)
        return account.quota_bytes if account is not None else 0

    async def _check_quota(self, incoming: int) -> None:
        limit = self._quota_limit()
        # The index knows the exact usage (the SMTP side's cached figure may lag a minute);
        # a message has at least one byte, so a mailbox that is exactly full takes no more.
        if limit and await self._mailbox().usage() + max(incoming, 1) > limit:
            raise ImapError("NO", "Mailbox is full", "OVERQUOTA")

    async def _write_quota(self) -> None:
        limit = self._quota_limit()
        used = await self._mailbox().usage()
        # RFC 9208 STORAGE counts units of 1024 octets.
        self.write(
            b"* QUOTA "
            + astring(QUOTA_ROOT)
            + b" (STORAGE %d %d)\r\n" % (-(-used // 1024), limit // 1024)
        )

    async def do_getquota(self, command: Command) -> str:
        assert isinstance(command, MailboxCommand)
        if command.mailbox != QUOTA_ROOT or not self._quota_limit():
            raise ImapError("NO", "No such quota root", "NONEXISTENT")
        await self._write_quota()
        return "GETQUOTA completed"

    async def do_getquotaroot(self, command: Command) -> str:
        assert isinstance(command, MailboxCommand)
        await self._mailbox().status(command.mailbox)  # NO [NONEXISTENT] for an unknown name
        name = self._name_out(command.mailbox)
        if not self._quota_limit():
            self.write(b"* QUOTAROOT " + name + b"\r\n")  # no quota applies
            return "GETQUOTAROOT completed"
        self.write(b"* QUOTAROOT " + name + b" " + astring(QUOTA_ROOT) + b"\r\n")
        await self._write_quota()
        return "GETQUOTAROOT completed"

    async def do_idle(self, command: Command) -> str | None:
        self.write(b"+ idling\r\n")
        await self._updates(allow_expunge=True)
        await self.flush()
        reading = asyncio.ensure_future(self._read_line())
        started = last_output = time.monotonic()
        try:
            while True:
                done, _ = await asyncio.wait({reading}, timeout=POLL_INTERVAL)
                if done:
                    line = reading.result()
                    if line.strip().upper() != b"DONE":
                        raise ImapError("BAD", "Expected DONE")
                    break
                before = len(self._out)
                await self._updates(allow_expunge=True)
                now = time.monotonic()
                if len(self._out) > before:
                    last_output = now
                elif now - last_output >= KEEPALIVE_INTERVAL:
                    self.write(b"* OK Still here\r\n")
                    last_output = now
                if now - started >= IDLE_AUTOLOGOUT:
                    raise _Hangup(b"* BYE Autologout; idle for too long\r\n")
                await self.flush()
        finally:
            if not reading.done():
                reading.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await reading
        return "IDLE terminated"

    # --- selected -----------------------------------------------------------------------------

    def _view(self) -> SelectedView:
        assert self.view is not None
        return self.view

    async def do_check(self, command: Command) -> str:
        return "CHECK completed"

    async def do_close(self, command: Command) -> str:
        view = self._view()
        if not view.readonly:
            await self._mailbox().expunge(None)  # silently: CLOSE sends no EXPUNGE
        self._deselect()
        return "CLOSE completed"

    async def do_unselect(self, command: Command) -> str:
        self._deselect()
        return "UNSELECT completed"

    async def do_expunge(self, command: Command) -> str:
        assert isinstance(command, Expunge)
        view = self._view()
        if view.readonly:
            raise ImapError("NO", "Mailbox is read-only", "READ-ONLY")
        uids = None if command.uids is None else view.resolve(command.uids, uid=True)
        if uids == []:
            return "EXPUNGE completed"
        removed = await self._mailbox().expunge(uids)
        for line in view.remove(removed):
            self.write(line)
        return "EXPUNGE completed"

    async def do_fetch(self, command: Command) -> str:
        assert isinstance(command, Fetch)
        view = self._view()
        mailbox = self._mailbox()
        if command.vanished and "QRESYNC" not in self.enabled:
            raise ImapError("BAD", "VANISHED needs QRESYNC enabled")
        if command.changedsince is not None or any(a.name == "MODSEQ" for a in command.attrs):
            self._enable_condstore()
        if command.vanished:
            assert command.changedsince is not None
            changes = await mailbox.changes(command.changedsince)
            expunged = [u for u in changes.expunged if u not in view.flags]
            self._write_vanished(_uids_in(command.seqset, expunged, view.uidnext - 1))
        uids = view.resolve(command.seqset, command.uid)
        records = await mailbox.records(uids) if uids else {}
        if command.changedsince is not None:
            uids = [u for u in uids if u in records and records[u].modseq > command.changedsince]
        marked: set[int] = set()
        if sets_seen(command.attrs) and not view.readonly:
            unseen = [u for u in uids if u in records and "\\Seen" not in records[u].flags]
            if unseen:
                changed, _ = await mailbox.store(unseen, "+", {"\\Seen"}, None)
                for updated in changed:
                    records[updated.uid] = updated
                    marked.add(updated.uid)
        attrs = command.attrs
        with_modseq = command.changedsince is not None or (
            self.condstore and any(a.name == "FLAGS" for a in attrs)
        )
        if with_modseq and not any(a.name == "MODSEQ" for a in attrs):
            attrs = (*attrs, FetchAttr("MODSEQ"))
        want_body = needs_body(attrs)
        header_only = want_body and needs_header_only(attrs)
        missing = False
        for start in range(0, len(uids), FETCH_BATCH):
            batch = uids[start : start + FETCH_BATCH]
            if not want_body:
                contents = {}
            elif header_only:
                contents = await mailbox.read_headers(batch)
            else:
                contents = await mailbox.read(batch)
            for uid in batch:
                record = records.get(uid)
                seq = view.seq_of(uid)
                if record is None or seq is None or (want_body and uid not in contents):
                    missing = True
                    continue
                if any(a.name == "FLAGS" for a in attrs) or uid in marked:
                    view.flags[uid] = record.flags
                self.write(
                    render_fetch(
                        seq,
                        record,
                        attrs,
                        contents.get(uid),
                        add_flags=uid in marked,
                        header_only=header_only,
                    )
                )
            await self.flush_if_big()
        if missing and not command.uid:
            raise ImapError("NO", "Some messages were expunged meanwhile", "EXPUNGEISSUED")
        return f"{'UID ' if command.uid else ''}FETCH completed"

    async def do_store(self, command: Command) -> str:
        assert isinstance(command, Store)
        view = self._view()
        if view.readonly:
            raise ImapError("NO", "Mailbox is read-only", "READ-ONLY")
        if command.unchangedsince is not None:
            self._enable_condstore()
        uids = view.resolve(command.seqset, command.uid)
        changed, refused = (
            await self._mailbox().store(uids, command.mode, command.flags, command.unchangedsince)
            if uids
            else ([], [])
        )
        for line in view.note_flags(command.flags):
            self.write(line)
        modseqs: dict[int, int] = {}
        for record in changed:
            modseqs[record.uid] = record.modseq
            if record.uid in view.flags:
                view.flags[record.uid] = record.flags
        refused_set = set(refused)
        if not command.silent:
            if self.condstore:
                unchanged = [u for u in uids if u not in modseqs and u in view.flags]
                if unchanged:
                    records = await self._mailbox().records(unchanged)
                    modseqs.update((uid, r.modseq) for uid, r in records.items())
            for uid in uids:
                if uid in view.flags and uid not in refused_set:
                    self.write(view.fetch_flags_line(uid, modseqs.get(uid)))
        elif self.condstore:
            # RFC 7162 3.1.3: with CONDSTORE even .SILENT reports the new MODSEQ.
            for record in changed:
                seq = view.seq_of(record.uid)
                if seq is not None:
                    uid_item = b"UID %d " % record.uid if command.uid else b""
                    self.write(b"* %d FETCH (%sMODSEQ (%d))\r\n" % (seq, uid_item, record.modseq))
        if refused:
            modified = SequenceSet.of(
                refused if command.uid else [view.seq_of(u) or 0 for u in refused]
            )
            raise ImapError("OK", "Conditional STORE failed", f"MODIFIED {modified}")
        return f"{'UID ' if command.uid else ''}STORE completed"

    async def do_search(self, command: Command) -> str:
        assert isinstance(command, Search)
        if command.charset not in (None, "US-ASCII", "UTF-8"):
            raise ImapError("NO", "Unsupported charset", "BADCHARSET (US-ASCII UTF-8)")
        view = self._view()
        mailbox = self._mailbox()
        with_modseq = _uses_modseq(command.key)
        if with_modseq:
            self._enable_condstore()
        uids = list(view.uids)
        records = await mailbox.records(uids) if uids else {}
        context = SearchContext(uids, frozenset(view.saved))
        key = command.key
        with_message = needs_message(key)
        with_text = needs_text(key)
        # Messages are read only for those that pass the keys the index alone decides
        # (UNSEEN FROM x reads only unseen messages), and only their headers unless the body
        # is searched.
        candidates = [
            Candidate(seq, records[uid]) for seq, uid in enumerate(uids, 1) if uid in records
        ]
        if with_message:
            cheap = index_only_part(key)
            if cheap is not None:
                passes = compile_key(cheap, context)
                candidates = [c for c in candidates if passes(c)]
        predicate = compile_key(key, context)
        found: list[int] = []
        step = FETCH_BATCH if with_text else HEADER_BATCH
        for start in range(0, len(candidates), step):
            batch = candidates[start : start + step]
            contents: dict[int, bytes] = {}
            if with_message:
                wanted = [c.info.uid for c in batch]
                contents = await (
                    mailbox.read(wanted) if with_text else mailbox.read_headers(wanted)
                )
            for candidate in batch:
                uid = candidate.info.uid
                if uid in contents:
                    candidate.load(contents[uid], whole=with_text)
                if predicate(candidate):
                    found.append(uid)
        # RFC 7162 3.1.5: a search by MODSEQ reports the highest MODSEQ among the results.
        modseq = max((records[u].modseq for u in found), default=None) if with_modseq else None
        self._search_response(command, found, modseq)
        return f"{'UID ' if command.uid else ''}SEARCH completed"

    def _search_response(self, command: Search, found: list[int], modseq: int | None) -> None:
        view = self._view()
        numbers = found if command.uid else [view.seq_of(u) or 0 for u in found]
        returns = command.returns
        if returns is None and self._rev2:
            returns = ()  # IMAP4rev2 answers every SEARCH with ESEARCH (RFC 9051 6.4.4)
        if returns is None:
            tail = b" (MODSEQ %d)" % modseq if modseq is not None else b""
            self.write(b"* SEARCH" + b"".join(b" %d" % n for n in numbers) + tail + b"\r\n")
            return
        options = set(returns) or {"ALL"}
        if "SAVE" in options:
            # RFC 5182: with MIN/MAX (and no ALL/COUNT) only those are saved.
            if options & {"MIN", "MAX"} and not options & {"ALL", "COUNT"}:
                keep = set()
                if found and "MIN" in options:
                    keep.add(found[0])
                if found and "MAX" in options:
                    keep.add(found[-1])
                view.saved = sorted(keep)
            else:
                view.saved = list(found)
            options.discard("SAVE")
            if not options:
                return
        parts = [b'* ESEARCH (TAG "' + command.tag.encode() + b'")']
        if command.uid:
            parts.append(b"UID")
        if numbers and "MIN" in options:
            parts.append(b"MIN %d" % numbers[0])
        if numbers and "MAX" in options:
            parts.append(b"MAX %d" % numbers[-1])
        if numbers and "ALL" in options:
            parts.append(b"ALL " + str(SequenceSet.of(numbers)).encode())
        if "COUNT" in options:
            parts.append(b"COUNT %d" % len(numbers))
        if modseq is not None:
            parts.append(b"MODSEQ %d" % modseq)
        self.write(b" ".join(parts) + b"\r\n")

    async def do_copy(self, command: Command) -> str:
        assert isinstance(command, CopyMove)
        view = self._view()
        move = command.name == "MOVE"
        if move and view.readonly:
            raise ImapError("NO", "Mailbox is read-only", "READ-ONLY")
        uids = view.resolve(command.seqset, command.uid)
        prefix = "UID " if command.uid else ""
        if not uids:
            return f"{prefix}{command.name} completed (no messages)"
        if not move and self._quota_limit():
            records = await self._mailbox().records(uids)
            await self._check_quota(sum(r.size for r in records.values()))
        try:
            uidvalidity, sources, copies = await self._mailbox().copy(uids, command.mailbox, move)
        except MailboxError as error:
            if error.code == "NONEXISTENT":
                raise ImapError("NO", "No such mailbox", "TRYCREATE") from None
            raise
        code = ""
        if sources:
            code = f"[COPYUID {uidvalidity} {SequenceSet.of(sources)} {SequenceSet.of(copies)}] "
        if not move:
            return f"{code}{prefix}COPY completed"
        if code:
            self.write(f"* OK {code}Moved\r\n".encode())
        for line in view.remove(sources):
            self.write(line)
        return f"{prefix}MOVE completed"

    do_move = do_copy


def _uses_modseq(key: SearchKey) -> bool:
    return key.name == "MODSEQ" or any(_uses_modseq(child) for child in key.children)


def _uids_in(uidset: SequenceSet, uids: list[int], largest: int) -> list[int]:
    """The members of `uids` in a UID set whose `*` is `largest` (the mailbox's largest UID);
    for expunged UIDs, which `SequenceSet.select` cannot resolve `*` against."""
    if not uids:
        return []
    star = max(largest, uids[-1])
    spans = [(star if a is None else a, star if b is None else b) for a, b in uidset.ranges]
    return [u for u in uids if any(min(a, b) <= u <= max(a, b) for a, b in spans)]


_NAME_FIELDS = ("mailbox", "old", "new", "reference")


def _names_to_storage(command: Command) -> Command:
    """A UTF-8 client's mailbox names (and LIST patterns) in their stored modified UTF-7."""
    changes: dict[str, object] = {
        name: encode_mutf7(getattr(command, name))
        for name in _NAME_FIELDS
        if isinstance(getattr(command, name, None), str)
    }
    if isinstance(command, ListCommand):
        changes["patterns"] = tuple(encode_mutf7(p) for p in command.patterns)
    return dataclasses.replace(command, **changes) if changes else command  # type: ignore[arg-type]


async def _start_tls_keeping_buffered(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, context: ssl.SSLContext
) -> None:
    """`writer.start_tls`, except that bytes the StreamReader already holds are handed to TLS.

    A load balancer sends the PROXY header and the client's ClientHello back to back; when both
    arrive in one read, the ClientHello sits in the reader's buffer, which start_tls ignores, and
    the handshake would stall."""
    # No public way to take the buffered bytes back from a StreamReader.
    buffered: bytearray = reader._buffer  # type: ignore[attr-defined]
    leftover = bytes(buffered)
    buffered.clear()
    raw = writer.transport
    starting = asyncio.ensure_future(writer.start_tls(context, ssl_handshake_timeout=30))
    if leftover:
        # start_tls swaps in the SSL protocol synchronously and queues its connection_made;
        # once it has run that far, queue the buffered bytes right behind it.
        await asyncio.sleep(0)

        asyncio.get_running_loop().call_soon(feed_buffered, raw.get_protocol(), leftover)
    await starting
