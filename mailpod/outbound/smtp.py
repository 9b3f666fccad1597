"""A small SMTP client over asyncio streams, written for the outbound queue.

Our own rather than aiosmtplib: that library passes CR/LF in addresses through to the wire. Here
every command line is checked (no CR, LF or NUL, ever), addresses are validated before they are
used, message data is sent with CRLF line endings only and dot-stuffed, and replies are parsed
strictly (a malformed reply is a temporary failure, never a guess).
"""

from __future__ import annotations

import asyncio
import base64
import re
import ssl
from dataclasses import dataclass, field

MAX_REPLY_LINES = 100
MAX_LINE = 4096
_ENHANCED = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")
# RFC 5321 paths as we ever send them: a local part without controls, spaces, "<", ">" or "@"
# (SMTPUTF8 local parts allowed) and a hostname-like domain.
_ADDRESS = re.compile(
    r"^[^\x00-\x20\x7f<>@\"\\(),:;\[\]]{1,64}@"
    r"([A-Za-z0-9\u0080-\U0010ffff]([A-Za-z0-9\u0080-\U0010ffff-]{0,61}"
    r"[A-Za-z0-9\u0080-\U0010ffff])?\.)+[A-Za-z0-9\u0080-\U0010ffff-]{2,63}$"
)
_XTEXT_SAFE = frozenset(range(33, 127)) - {ord("+"), ord("=")}


class SmtpClientError(Exception):
    """The session failed: a reply (`code` > 0) or a transport problem (`code` 0)."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(f"{code} {text}" if code else text)
        self.code = code
        self.text = text

    @property
    def permanent(self) -> bool:
        return 500 <= self.code < 600


@dataclass(frozen=True)
class Reply:
    code: int
    text: str

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 400

    @property
    def permanent(self) -> bool:
        return 500 <= self.code < 600

    @property
    def enhanced(self) -> str:
        first = self.text.split(" ", 1)[0]
        return first if _ENHANCED.match(first) else ""

    def __str__(self) -> str:
        return f"{self.code} {self.text}"


def valid_address(address: str) -> bool:
    """True if `address` can go between < > on an SMTP command line."""
    return len(address) <= 254 and _ADDRESS.match(address) is not None


def xtext(value: str) -> str:
    """RFC 3461 §4 xtext encoding (ORCPT, ENVID)."""
    return "".join(
        chr(b) if b in _XTEXT_SAFE else f"+{b:02X}" for b in value.encode("utf-8", "replace")
    )


def wire_data(data: bytes) -> bytes:
    """Message bytes as they go after DATA: CRLF line endings only (a bare CR or LF becomes
    CRLF), a final CRLF, leading dots doubled (RFC 5321 §4.5.2), and the end-of-data line."""
    if data.count(b"\r\n") != data.count(b"\n") or data.count(b"\r") != data.count(b"\n"):
        data = re.sub(rb"\r\n|\r|\n", b"\r\n", data)
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    if data.startswith(b"."):
        data = b"." + data
    return data.replace(b"\r\n.", b"\r\n..") + b".\r\n"


@dataclass
class SendResult:
    """Per-recipient replies (RCPT, or the DATA reply for those the RCPT accepted)."""

    replies: list[Reply]
    data_reply: Reply | None = None


@dataclass
class SmtpClient:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    timeout: float
    extensions: dict[str, str] = field(default_factory=dict)
    tls: bool = False
    peer: str = ""

    @classmethod
    async def connect(
        cls,
        address: str,
        port: int,
        *,
        connect_timeout: float,
        command_timeout: float,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> SmtpClient:
        """Connect and read the greeting (implicit TLS when `ssl_context` is given)."""
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    address,
                    port,
                    ssl=ssl_context,
                    server_hostname=server_hostname if ssl_context else None,
                    limit=MAX_LINE * 4,
                ),
                connect_timeout,
            )
        except (OSError, TimeoutError, ssl.SSLError) as error:
            raise SmtpClientError(0, f"connect to {address}:{port}: {error!r}") from None
        client = cls(reader, writer, command_timeout, tls=ssl_context is not None, peer=address)
        try:
            greeting = await client.read_reply()
        except BaseException:
            client.abort()
            raise
        if greeting.code != 220:
            client.abort()
            raise SmtpClientError(greeting.code, f"greeting: {greeting.text}")
        return client

    # --- wire ----------------------------------------------------------------------------------

    async def read_reply(self) -> Reply:
        lines: list[str] = []
        code = 0
        while True:
            try:
                # asyncio.timeout, not wait_for: wait_for wraps each readline in a new Task,
                # which showed in delivery profiles (several lines per message).
                async with asyncio.timeout(self.timeout):
                    raw = await self.reader.readline()
            except (TimeoutError, asyncio.LimitOverrunError, ValueError, OSError) as error:
                raise SmtpClientError(0, f"reading a reply: {error!r}") from None
            if not raw.endswith(b"\n"):
                raise SmtpClientError(0, "connection closed by the server")
            line = raw.rstrip(b"\r\n").decode("utf-8", "replace")
            if len(line) < 3 or not line[:3].isdigit() or line[3:4] not in ("", " ", "-"):
                raise SmtpClientError(0, f"malformed reply line {line[:80]!r}")
            this = int(line[:3])
            if code and this != code:
                raise SmtpClientError(0, "reply lines with different codes")
            code = this
            lines.append(line[4:])
            if line[3:4] != "-":
                return Reply(code, "\n".join(lines))
            if len(lines) >= MAX_REPLY_LINES:
                raise SmtpClientError(0, "reply too long")

    def _write_line(self, line: str) -> None:
        if any(c in line for c in "\r\n\0"):
            raise ValueError("CR, LF or NUL in an SMTP command")
        self.writer.write(line.encode("utf-8") + b"\r\n")

    async def command(self, line: str) -> Reply:
        self._write_line(line)
        await self._drain()
        return await self.read_reply()

    async def _drain(self) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                await self.writer.drain()
        except (OSError, TimeoutError) as error:
            raise SmtpClientError(0, f"writing: {error!r}") from None

    # --- session ---------------------------------------------------------------------------

    async def ehlo(self, hostname: str) -> Reply:
        reply = await self.command(f"EHLO {hostname}")
        if reply.code != 250:
            reply = await self.command(f"HELO {hostname}")
            if reply.code != 250:
                raise SmtpClientError(reply.code, f"HELO: {reply.text}")
            self.extensions = {}
            return reply
        self.extensions = {}
        for line in reply.text.split("\n")[1:]:
            keyword, _, params = line.partition(" ")
            self.extensions[keyword.upper()] = params
        return reply

    def supports(self, extension: str) -> bool:
        return extension.upper() in self.extensions

    async def starttls(self, context: ssl.SSLContext, server_hostname: str | None) -> None:
        reply = await self.command("STARTTLS")
        if reply.code != 220:
            raise SmtpClientError(reply.code, f"STARTTLS: {reply.text}")
        if self.reader._buffer:  # type: ignore[attr-defined]
            # Bytes after the 220 were sent before TLS: a STARTTLS injection attempt.
            raise SmtpClientError(0, "data after the STARTTLS reply")
        try:
            await asyncio.wait_for(
                self.writer.start_tls(context, server_hostname=server_hostname), self.timeout
            )
        except (OSError, TimeoutError, ssl.SSLError) as error:
            raise SmtpClientError(0, f"TLS handshake: {error!r}") from None
        self.tls = True
        self.extensions = {}

    def peer_certificate(self) -> bytes | None:
        ssl_object = self.writer.get_extra_info("ssl_object")
        if ssl_object is None:
            return None
        der: bytes | None = ssl_object.getpeercert(binary_form=True)
        return der

    def tls_version(self) -> str:
        ssl_object = self.writer.get_extra_info("ssl_object")
        return str(ssl_object.version()) if ssl_object is not None else ""

    async def auth(self, username: str, password: str) -> None:
        """AUTH PLAIN (LOGIN if that is all the server offers); only ever over TLS."""
        if not self.tls:
            raise SmtpClientError(0, "refusing to send credentials without TLS")
        mechanisms = self.extensions.get("AUTH", "").upper().split()
        if "PLAIN" in mechanisms or not mechanisms:
            token = base64.b64encode(f"\0{username}\0{password}".encode()).decode()
            reply = await self.command(f"AUTH PLAIN {token}")
        elif "LOGIN" in mechanisms:
            reply = await self.command("AUTH LOGIN")
            if reply.code == 334:
                reply = await self.command(base64.b64encode(username.encode()).decode())
            if reply.code == 334:
                reply = await self.command(base64.b64encode(password.encode()).decode())
        else:
            raise SmtpClientError(0, f"no usable AUTH mechanism in {mechanisms}")
        if reply.code != 235:
            # The reply text only: never anything that could echo the credentials.
            raise SmtpClientError(reply.code, f"AUTH: {reply.text}")

    async def send(
        self,
        sender: str,
        recipients: list[tuple[str, str]],
        data: bytes,
        *,
        smtputf8: bool = False,
        ret: str = "",
        envid: str = "",
    ) -> SendResult:
        """One transaction. `recipients` are (address, RCPT parameters) pairs. Raises
        SmtpClientError for a failure of the whole transaction (MAIL or DATA refused or the
        connection lost), with the reply code when there was one."""
        if sender and not valid_address(sender):
            raise SmtpClientError(553, f"invalid sender address {sender!r}")
        for address, params in recipients:
            if not valid_address(address) or any(c in params for c in "\r\n\0"):
                raise SmtpClientError(553, f"invalid recipient address {address!r}")
        mail = f"MAIL FROM:<{sender}>"
        if "SIZE" in self.extensions:
            mail += f" SIZE={len(data)}"
        if smtputf8:
            if "SMTPUTF8" not in self.extensions:
                raise SmtpClientError(553, "SMTPUTF8 needed but not offered")
            mail += " SMTPUTF8"
        if "8BITMIME" in self.extensions and not data.isascii():
            mail += " BODY=8BITMIME"
        dsn = "DSN" in self.extensions
        if dsn and ret:
            mail += f" RET={ret}"
        if dsn and envid:
            mail += f" ENVID={xtext(envid)}"
        rcpt_lines = [
            f"RCPT TO:<{address}>" + (f" {params}" if params and dsn else "")
            for address, params in recipients
        ]
        if "PIPELINING" in self.extensions:
            return await self._send_pipelined(mail, rcpt_lines, data)
        mail_reply = await self.command(mail)
        replies = []
        if mail_reply.ok:
            for line in rcpt_lines:
                replies.append(await self.command(line))
        if not mail_reply.ok:
            raise SmtpClientError(mail_reply.code, f"MAIL: {mail_reply.text}")
        if not any(r.ok for r in replies):
            await self.rset()
            return SendResult(replies)
        reply = await self.command("DATA")
        if reply.code != 354:
            raise SmtpClientError(reply.code, f"DATA: {reply.text}")
        self.writer.write(wire_data(data))
        await self._drain()
        data_reply = await self.read_reply()
        return SendResult(replies, data_reply)

    async def _send_pipelined(self, mail: str, rcpt_lines: list[str], data: bytes) -> SendResult:
        """RFC 2920: MAIL, every RCPT and DATA in one write (DATA may end a group, §3.1), then
        the replies in order; the message after a 354. One round trip fewer per message."""
        for line in [mail, *rcpt_lines, "DATA"]:
            self._write_line(line)
        await self._drain()
        mail_reply = await self.read_reply()
        replies = [await self.read_reply() for _ in rcpt_lines]
        data_start = await self.read_reply()
        wanted = mail_reply.ok and any(r.ok for r in replies)
        if data_start.code == 354 and not wanted:
            # The server took DATA although nothing can be delivered: end it empty (§3.1),
            # whatever it answers, so the connection stays in step.
            self.writer.write(b".\r\n")
            await self._drain()
            await self.read_reply()
        if not mail_reply.ok:
            raise SmtpClientError(mail_reply.code, f"MAIL: {mail_reply.text}")
        if not wanted:
            await self.rset()
            return SendResult(replies)
        if data_start.code != 354:
            raise SmtpClientError(data_start.code, f"DATA: {data_start.text}")
        self.writer.write(wire_data(data))
        await self._drain()
        data_reply = await self.read_reply()
        return SendResult(replies, data_reply)

    async def rset(self) -> None:
        reply = await self.command("RSET")
        if reply.code != 250:
            raise SmtpClientError(reply.code, f"RSET: {reply.text}")

    async def quit(self) -> None:
        try:
            await asyncio.wait_for(self.command("QUIT"), min(self.timeout, 5.0))
        except (SmtpClientError, TimeoutError, OSError):
            pass
        finally:
            self.abort()

    def abort(self) -> None:
        self.writer.close()
