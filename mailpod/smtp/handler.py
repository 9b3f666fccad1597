"""The aiosmtpd handler: every SMTP command becomes a pipeline step; replies come from SmtpError.

One handler class serves all three SMTP listeners; `kind` decides the policy:
- smtp (25): MX. No AUTH. Local recipients only (never relays).
- submission (587) / submissions (465): AUTH required (only over TLS); the sender and From: must
  belong to the user; local recipients are delivered, remote ones go to the outbound queue.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import email.utils
import functools
import inspect
import logging
import secrets
import ssl
import time
from asyncio import sslproto
from collections.abc import Sequence
from datetime import UTC, datetime
from email.parser import BytesHeaderParser
from email.policy import SMTP as SMTP_POLICY
from typing import Any

from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope, LoginPassword, Session, syntax

from mailpod import metrics
from mailpod.checks.inbound import InboundTransaction
from mailpod.config import ListenerKind
from mailpod.errors import SmtpError, internal_error
from mailpod.pipeline import Envelope as PipelineEnvelope
from mailpod.pipeline import LocalRecipient, Message
from mailpod.proxy import feed_buffered
from mailpod.queue.store import Notify, RemoteRecipient
from mailpod.smtp.addresses import check_recipient_syntax, parse_path
from mailpod.smtp.data import read_data
from mailpod.smtp.runtime import SmtpRuntime

log = logging.getLogger("mailpod.smtp")

# The StreamReader's limit while reading DATA (aiosmtpd's 1,001-byte line limit otherwise): the
# reader pauses the socket whenever it holds twice its limit, which a 10 KiB message would do.
DATA_READ_LIMIT = 64 * 1024

AUTH_REQUIRED = SmtpError(530, "5.7.0", "Authentication required")
DSN_PARAMS = ("RET", "ENVID", "NOTIFY", "ORCPT")
NOT_YOURS = SmtpError(553, "5.7.1", "Sender address not owned by the authenticated user")


class MailEnvelope(Envelope):
    """aiosmtpd's envelope plus what our RCPT checks resolved."""

    def __init__(self) -> None:
        super().__init__()
        self.local: dict[str, list[LocalRecipient]] = {}
        self.remote: list[RemoteRecipient] = []
        self.dsn: dict[str, str] = {}  # RFC 3461 RET and ENVID of MAIL FROM
        self.inbound: InboundTransaction | None = None  # the MX's checks (mailpod.checks)


class MailSession(Session):
    """aiosmtpd's session plus an id that ties log lines and Received headers together."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.id = secrets.token_hex(6)


TLS_HANDSHAKE_SECONDS = 30.0


def _reverse_path(address: str | None) -> str:
    """The envelope sender as the rest of the pod sees it: "" for the null sender, which
    aiosmtpd keeps as "<>" (its envelope needs a true value to know MAIL was given)."""
    return "" if address in (None, "<>") else str(address)


class MailSMTP(SMTP):
    """aiosmtpd's protocol with our envelope and session types, counting connections."""

    def __init__(
        self,
        handler: SmtpHandler,
        *,
        tls_after_proxy: ssl.SSLContext | None = None,
        **settings: Any,
    ) -> None:
        super().__init__(handler, **settings)
        self.event_handler: SmtpHandler = handler
        self.listener = handler.kind.value
        self.tls_after_proxy = tls_after_proxy
        """Implicit TLS (465) behind a PROXY-protocol load balancer: the header comes in clear
        before the handshake, so the listener is served without `ssl=` and TLS starts here."""
        self._counted = False
        self._peer_ip = ""
        self._connection_key = ""

    async def start_tls_after_proxy(self) -> bool:
        """The TLS handshake of an implicit-TLS session, after its PROXY header; False if it
        failed. The same swap of protocols aiosmtpd's STARTTLS makes, without the 220, plus
        the bytes already read past the header, and the session (with the client address the
        header gave) kept: aiosmtpd starts a new one as STARTTLS requires."""
        context, session = self.tls_after_proxy, self.session
        assert context is not None
        assert self.transport is not None
        assert session is not None
        leftover = bytes(self._reader._buffer)  # type: ignore[attr-defined]
        self._reader._buffer.clear()  # type: ignore[attr-defined]
        waiter = self.loop.create_future()
        self._tls_protocol = sslproto.SSLProtocol(
            self.loop, self, context, waiter, server_side=True
        )
        self._original_transport = self.transport
        self._original_transport.set_protocol(self._tls_protocol)
        self.transport = self._tls_protocol._app_transport
        self._tls_protocol.connection_made(self._original_transport)
        if leftover:
            feed_buffered(self._tls_protocol, leftover)
        try:
            await asyncio.wait_for(waiter, TLS_HANDSHAKE_SECONDS)
        except (ssl.SSLError, ConnectionError, TimeoutError) as error:
            log.info("tls handshake failed after PROXY from %s: %s", self._peer_ip, error)
            return False
        upgraded = self.session
        assert isinstance(upgraded, MailSession)
        assert isinstance(session, MailSession)
        upgraded.id, upgraded.proxy_data = session.id, session.proxy_data
        return True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._counted:  # called again after STARTTLS
            peer = transport.get_extra_info("peername")
            self._peer_ip = str(peer[0]) if isinstance(peer, tuple) else str(peer)
            runtime = self.event_handler.runtime
            self._connection_key = f"smtp|{self._peer_ip}"
            trusted = runtime.is_trusted_proxy(self._peer_ip)
            # Behind a trusted load balancer every client shares its address: no limit.
            limit = None if trusted else runtime.snapshot().config.limits.max_connections_per_ip
            if not runtime.connections.acquire(self._connection_key, limit):
                if isinstance(transport, asyncio.WriteTransport):
                    transport.write(b"421 4.7.0 Too many connections from your address\r\n")
                transport.close()
                return
            refusal = None
            if self.event_handler.kind is ListenerKind.SMTP and not trusted:
                # Behind a trusted proxy the real client is only known from its header.
                refusal = runtime.inbound.connection_refusal(self._peer_ip)
            if refusal is not None:
                runtime.connections.release(self._connection_key)
                if isinstance(transport, asyncio.WriteTransport):
                    transport.write(refusal.reply().encode() + b"\r\n")
                transport.close()
                return
            self._counted = True
            accepted, open_now = _connection_metrics(self.listener)
            accepted.inc()
            open_now.inc()
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if not self._counted:
            return
        self._counted = False
        self.event_handler.runtime.connections.release(self._connection_key)
        _connection_metrics(self.listener)[1].dec()
        super().connection_lost(error)

    def __dir__(self) -> list[str]:
        # aiosmtpd's __init__ runs inspect.getmembers(self) and dir(self) on every connection to
        # find its smtp_*/auth_* methods; listing only those cut ~10% of the CPU per message.
        return _protocol_methods(type(self))

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        # aiosmtpd's version defines a typing.Protocol class on every call (~8% of the CPU per
        # message); same parsing and limits, without it, and with a fast path (parse_path).
        if not arg:
            return "", ""
        parsed = parse_path(arg)
        if parsed is None:
            return None, None
        addr, rest = parsed
        if self.local_part_limit and len(addr.rpartition("@")[0]) > self.local_part_limit:
            return None, None
        return addr, rest

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd's DATA command with the body read in bulk (mailpod.smtp.data) rather than
        line by line; the same replies, hook and state handling, less its 1,000-octet line limit."""
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        envelope = self.envelope
        assert envelope is not None
        if not envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        reader = self._reader
        limit = reader._limit  # type: ignore[attr-defined]
        reader._limit = max(limit, DATA_READ_LIMIT)  # type: ignore[attr-defined]
        try:
            await self.push("354 End data with <CR><LF>.<CR><LF>")
            # A lost connection cancels this; _handle_client closes the writer.
            content = await read_data(reader, self.data_size_limit)
        finally:
            reader._limit = limit  # type: ignore[attr-defined]
        if content is None:
            await self.push("552 Error: Too much mail data")
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            return
        envelope.original_content = content
        if self._decode_data:
            try:
                envelope.content = content.decode(
                    "utf-8" if self.enable_SMTPUTF8 else "ascii",
                    errors="surrogateescape" if self.enable_SMTPUTF8 else "strict",
                )
            except UnicodeDecodeError:
                await self.push("500 Error: strict ASCII mode")
                return
        else:
            envelope.content = content
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        await self.push("250 OK" if status is MISSING else status)

    def _getparams(self, params: Sequence[str]) -> dict[str, str | bool] | None:
        # aiosmtpd refuses parameters it does not know; on submission the RFC 3461 ones (DSN)
        # are ours: taken out here, read by the MAIL/RCPT hooks from the options they get.
        found = super()._getparams(params)
        if found is not None and self.event_handler.submission:
            for name in DSN_PARAMS:
                found.pop(name, None)
        return found

    def _create_envelope(self) -> MailEnvelope:
        return MailEnvelope()

    def _create_session(self) -> MailSession:
        return MailSession(self.loop)


@functools.cache
def _connection_metrics(listener: str) -> tuple[Any, Any]:
    """The listener's accepted and open connection counters (labels() costs ~2 µs a call)."""
    return (
        metrics.CONNECTIONS.labels(listener=listener),
        metrics.CONNECTIONS_OPEN.labels(listener=listener),
    )


_PROTOCOL_METHODS: dict[type, list[str]] = {}


def _protocol_methods(cls: type) -> list[str]:
    if cls not in _PROTOCOL_METHODS:
        prefixes = ("smtp_", "auth_", "handle_")
        _PROTOCOL_METHODS[cls] = [name for name in dir(cls) if name.startswith(prefixes)]
    return _PROTOCOL_METHODS[cls]


_date: tuple[int, str] = (-1, "")  # the last second formatted for a Received header, and its text


def _date_now() -> str:
    """The current time as an RFC 5322 date in UTC; formatted once a second, not per message."""
    global _date
    second = int(time.time())
    if second != _date[0]:
        _date = (second, email.utils.format_datetime(datetime.fromtimestamp(second, UTC)))
    return _date[1]


def _dsn_params(options: list[str], names: tuple[str, ...]) -> dict[str, str]:
    """The named RFC 3461 parameters among MAIL/RCPT options (aiosmtpd upper-cases them)."""
    found = {}
    for option in options:
        name, _, value = option.partition("=")
        if name.upper() in names and value:
            found[name.upper()] = value
    return found


def _remote(address: str, rcpt: str, options: list[str]) -> RemoteRecipient:
    """A remote recipient with the NOTIFY the client gave for `rcpt` (RFC 3461 §4.1)."""
    notify = _dsn_params(options, ("NOTIFY",)).get("NOTIFY", "")
    values = frozenset(Notify(v) for v in notify.split(",") if v in Notify.__members__)
    return RemoteRecipient(address, orcpt=rcpt, notify=values)


def _has_bare_line_ending(data: bytes) -> bool:
    """True if any CR or LF is not part of a CRLF pair, or a NUL is present: the raw material
    of SMTP smuggling (CVE-2023-51764/5/6, CVE-2024-27305)."""
    crlf = data.count(b"\r\n")
    return b"\0" in data or data.count(b"\r") != crlf or data.count(b"\n") != crlf


class SmtpHandler:
    def __dir__(self) -> list[str]:
        return _protocol_methods(type(self))  # see MailSMTP.__dir__

    def __init__(self, runtime: SmtpRuntime, kind: ListenerKind) -> None:
        self.runtime = runtime
        self.kind = kind
        self.submission = kind in (ListenerKind.SUBMISSION, ListenerKind.SUBMISSIONS)

    # --- session ---------------------------------------------------------------------------

    def client_ip(self, session: MailSession) -> str:
        proxy = session.proxy_data
        if proxy is not None and getattr(proxy, "src_addr", None):
            return str(proxy.src_addr[0] if isinstance(proxy.src_addr, tuple) else proxy.src_addr)
        peer = session.peer
        return str(peer[0]) if isinstance(peer, tuple) else str(peer)

    async def handle_PROXY(
        self, server: SMTP, session: MailSession, envelope: Envelope, proxy_data: Any
    ) -> bool:
        # Only a trusted load balancer may tell us the client's address.
        # The TCP peer (the load balancer), not the address its header claims.
        peer = session.peer
        if not self.runtime.is_trusted_proxy(str(peer[0]) if isinstance(peer, tuple) else ""):
            return False
        if self.kind is ListenerKind.SMTP:
            refusal = self.runtime.inbound.connection_refusal(self.client_ip(session))
            if refusal is not None:
                self._log_reject(session, "PROXY", "", refusal)
                return False
        if isinstance(server, MailSMTP) and server.tls_after_proxy is not None:
            return await server.start_tls_after_proxy()
        return True

    async def handle_EHLO(
        self,
        server: SMTP,
        session: MailSession,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        extensions = [r for r in responses[1:-1] if not r.startswith("250-AUTH")]
        tls_active = session.ssl is not None or self.kind is ListenerKind.SUBMISSIONS
        if self.submission and tls_active:
            extensions.append("250-AUTH LOGIN PLAIN")
        if self.submission:
            extensions.append("250-DSN")
        extensions += ["250-PIPELINING", "250-ENHANCEDSTATUSCODES"]
        return [responses[0], *extensions, "250 HELP"]

    # --- AUTH (submission only; aiosmtpd refuses it before TLS on 587) ------------------------

    async def auth_PLAIN(self, server: SMTP, args: list[str]) -> AuthResult:
        try:
            if len(args) == 2:
                credentials = base64.b64decode(args[1], validate=True)
            else:
                # challenge_auth returns the client's answer already base64-decoded.
                answer = await server.challenge_auth("", encode_to_b64=False)
                if not isinstance(answer, bytes):  # client cancelled with "*"
                    return AuthResult(success=False, handled=True)
                credentials = answer
            _, username, password = credentials.decode().split("\0")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return AuthResult(
                success=False, handled=False, message="501 5.5.2 Malformed AUTH PLAIN"
            )
        return await self._authenticate(server, username, password, "PLAIN")

    async def auth_LOGIN(self, server: SMTP, args: list[str]) -> AuthResult:
        try:
            if len(args) == 2:
                username = base64.b64decode(args[1], validate=True).decode()
            else:
                answer = await server.challenge_auth("Username:")
                if not isinstance(answer, bytes):
                    return AuthResult(success=False, handled=True)
                username = answer.decode()
            answer = await server.challenge_auth("Password:")
            if not isinstance(answer, bytes):
                return AuthResult(success=False, handled=True)
            password = answer.decode()
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return AuthResult(
                success=False, handled=False, message="501 5.5.2 Malformed AUTH LOGIN"
            )
        return await self._authenticate(server, username, password, "LOGIN")

    async def _authenticate(
        self, server: SMTP, username: str, password: str, mechanism: str
    ) -> AuthResult:
        if not self.submission:
            return AuthResult(success=False, handled=False, message="503 5.5.1 AUTH not available")
        session = server.session
        assert isinstance(session, MailSession)
        ip = self.client_ip(session)
        result = await self.runtime.authenticate(username, password, ip)
        if result.user is None:
            self.runtime.count_auth_failure(mechanism, "locked" if result.locked else "invalid")
            log.info(
                "auth failed",
                extra={
                    "session": session.id,
                    "peer": ip,
                    "user": username,
                    "result": "locked" if result.locked else "invalid",
                },
            )
            if result.locked:
                return AuthResult(
                    success=False,
                    handled=False,
                    message="454 4.7.0 Too many failed logins, try again later",
                )
            return AuthResult(success=False, handled=False)
        log.info("auth ok", extra={"session": session.id, "peer": ip, "user": result.user})
        return AuthResult(success=True, auth_data=LoginPassword(result.user.encode(), b""))

    def _user(self, session: MailSession) -> str | None:
        if not session.authenticated or session.auth_data is None:
            return None
        return str(session.auth_data.login.decode())

    # --- transaction ---------------------------------------------------------------------------

    async def handle_MAIL(
        self,
        server: SMTP,
        session: MailSession,
        envelope: Envelope,
        address: str,
        options: list[str],
    ) -> str:
        try:
            if self.submission:
                user = self._user(session)
                if user is None:
                    raise AUTH_REQUIRED
                directory = self.runtime.snapshot().directory
                mailbox = directory.mailbox(user)
                if mailbox is None or mailbox.suspended:
                    raise SmtpError(550, "5.7.1", "Account disabled", f"{user} suspended or gone")
                if address and not directory.may_send_as(user, address):
                    raise NOT_YOURS
            elif isinstance(envelope, MailEnvelope):
                envelope.inbound = await self.runtime.inbound.mail(
                    self.client_ip(session), session.host_name or "", _reverse_path(address)
                )
        except SmtpError as error:
            self._log_reject(session, "MAIL", address, error)
            return error.reply()
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        if self.submission and isinstance(envelope, MailEnvelope):
            envelope.dsn = _dsn_params(options, ("RET", "ENVID"))
        return "250 2.1.0 Sender OK"

    async def handle_RCPT(
        self,
        server: SMTP,
        session: MailSession,
        envelope: MailEnvelope,
        address: str,
        options: list[str],
    ) -> str:
        try:
            await self._check_rcpt(session, envelope, address, options)
            if not self.submission:
                await self.runtime.inbound.rcpt(envelope.inbound, address)
        except SmtpError as error:
            self._log_reject(session, "RCPT", address, error)
            return error.reply()
        except Exception as error:  # never a traceback on the wire
            log.exception("RCPT failed", extra={"session": session.id})
            return internal_error(repr(error)).reply()
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 Recipient OK"

    async def _check_rcpt(
        self, session: MailSession, envelope: MailEnvelope, address: str, options: list[str]
    ) -> None:
        snapshot = self.runtime.snapshot()
        config, directory = snapshot.config, snapshot.directory
        if len(envelope.rcpt_tos) >= config.limits.max_recipients:
            raise SmtpError(452, "4.5.3", "Too many recipients")
        smtputf8 = "SMTPUTF8" in (o.upper() for o in envelope.mail_options)
        user = self._user(session)
        _, domain = check_recipient_syntax(address, smtputf8)
        if not directory.is_local_domain(domain):
            if user is None:
                raise SmtpError(550, "5.7.1", "Relaying denied", f"remote rcpt {address}")
            self.runtime.check_remote_accepted(address)
            envelope.remote.append(_remote(address, address, options))
            return
        original = self.runtime.reverse_srs(address)
        if original is not None:
            # A bounce of mail we forwarded: it goes back to whoever sent the original.
            self.runtime.check_remote_accepted(original)
            envelope.remote.append(_remote(original, address, options))
            return
        resolution = directory.resolve(address)
        if not resolution.found:
            raise SmtpError(550, "5.1.1", "No such user here", f"unknown {address}")
        if resolution.remote:
            # An alias forwarding outside: the outbound queue takes those destinations.
            self.runtime.check_remote_accepted(address)
        size = self._declared_size(envelope)
        for mailbox_address in resolution.local:
            mailbox = directory.mailbox(mailbox_address)
            assert mailbox is not None
            if await self.runtime.over_quota(mailbox_address, mailbox.quota_bytes, size):
                raise SmtpError(452, "4.2.2", "Mailbox full", f"{mailbox_address} over quota")
        envelope.local[address] = [
            LocalRecipient(rcpt=address, mailbox=m) for m in resolution.local
        ]
        envelope.remote.extend(_remote(r, address, options) for r in resolution.remote)

    @staticmethod
    def _declared_size(envelope: Envelope) -> int:
        for option in envelope.mail_options:
            if option.upper().startswith("SIZE="):
                try:
                    return int(option[5:])
                except ValueError:
                    return 0
        return 0

    async def handle_DATA(self, server: SMTP, session: MailSession, envelope: MailEnvelope) -> str:
        started = time.monotonic()
        data: bytes = envelope.original_content or b""
        try:
            if _has_bare_line_ending(data):
                raise SmtpError(
                    550,
                    "5.6.0",
                    "Message contains bare CR, bare LF or NUL; use CRLF line endings",
                    "bare line ending or NUL in DATA",
                )
            user = self._user(session)
            if self.submission and user is not None:
                self._check_from_header(user, data)
            local = envelope.local
            checks: dict[str, str] = {}
            authentication_results = None
            if not self.submission:
                outcome = await self.runtime.inbound.data(envelope.inbound, data)
                data, checks = outcome.data, outcome.summary
                authentication_results = outcome.header
                if outcome.folder:  # DMARC quarantine
                    local = {
                        rcpt: [dataclasses.replace(r, folder=outcome.folder) for r in targets]
                        for rcpt, targets in local.items()
                    }
            message = Message(data=data)
            if authentication_results is not None:
                message.prepend(authentication_results)
            message.prepend(self._received(session, envelope))
            await self.runtime.deliver(
                self._pipeline_envelope(session, envelope),
                local,
                message,
                remote=envelope.remote,
                dsn=envelope.dsn,
            )
        except SmtpError as error:
            self._log_transaction(session, envelope, error.reply(), error.reason, started)
            self.runtime.count_message(self.kind, "tempfail" if error.temporary else "rejected")
            return error.reply()
        except Exception as error:
            log.exception("delivery failed", extra={"session": session.id})
            failure = internal_error(repr(error))
            self._log_transaction(session, envelope, failure.reply(), failure.reason, started)
            self.runtime.count_message(self.kind, "tempfail")
            return failure.reply()
        reply = f"250 2.0.0 Ok: queued as {session.id}"
        self._log_transaction(session, envelope, reply, "", started, checks)
        self.runtime.count_message(self.kind, "accepted", len(data), time.monotonic() - started)
        return reply

    def _check_from_header(self, user: str, data: bytes) -> None:
        headers = BytesHeaderParser(policy=SMTP_POLICY).parsebytes(data)
        values = headers.get_all("From") or []
        addresses = [addr for _, addr in email.utils.getaddresses([str(v) for v in values])]
        if not addresses or not all(addresses):
            raise SmtpError(550, "5.6.0", "Message needs a valid From: header", "no From:")
        directory = self.runtime.snapshot().directory
        for address in addresses:
            if not directory.may_send_as(user, address):
                raise SmtpError(
                    553,
                    "5.7.1",
                    "From: address not owned by the authenticated user",
                    f"From: {address}",
                )

    def _pipeline_envelope(self, session: MailSession, envelope: Envelope) -> PipelineEnvelope:
        return PipelineEnvelope(
            session_id=session.id,
            client_ip=self.client_ip(session),
            helo=session.host_name or "",
            mail_from=_reverse_path(envelope.mail_from),
            authenticated_user=self._user(session),
            received_at=datetime.now(UTC),
            smtputf8="SMTPUTF8" in (o.upper() for o in envelope.mail_options),
        )

    def _received(self, session: MailSession, envelope: Envelope) -> str:
        protocol = (
            "UTF8SMTP" if "SMTPUTF8" in (o.upper() for o in envelope.mail_options) else "ESMTP"
        )
        if session.ssl is not None or self.kind is ListenerKind.SUBMISSIONS:
            protocol += "S"
        if self._user(session):
            protocol += "A"
        recipient = f"\r\n\tfor <{envelope.rcpt_tos[0]}>" if len(envelope.rcpt_tos) == 1 else ""
        helo = (session.host_name or "unknown").replace("\r", "").replace("\n", "")[:255]
        return (
            f"Received: from {helo} ([{self.client_ip(session)}])\r\n"
            f"\tby {self.runtime.hostname} (mailpod) with {protocol} id {session.id}"
            f"{recipient};\r\n"
            f"\t{_date_now()}"
        )

    # --- logs ------------------------------------------------------------------------------------

    def _log_reject(
        self, session: MailSession, command: str, address: str, error: SmtpError
    ) -> None:
        log.info(
            "%s rejected",
            command,
            extra={
                "session": session.id,
                "peer": self.client_ip(session),
                "address": address,
                "result": error.reply(),
                "reason": error.reason,
            },
        )

    def _log_transaction(
        self,
        session: MailSession,
        envelope: Envelope,
        result: str,
        reason: str,
        started: float,
        checks: dict[str, str] | None = None,
    ) -> None:
        log.info(
            "transaction",
            extra={
                "session": session.id,
                "listener": self.kind.value,
                "peer": self.client_ip(session),
                "helo": session.host_name,
                "user": self._user(session),
                "sender": envelope.mail_from,
                "recipients": list(envelope.rcpt_tos),
                "size": len(envelope.original_content or b""),
                "result": result,
                "reason": reason,
                "ms": round((time.monotonic() - started) * 1000, 1),
                **({"checks": checks} if checks else {}),
            },
        )


# aiosmtpd's __init__ calls inspect.signature(handle_EHLO) on every connection to tell its two hook
# styles apart (a third of its cost); inspect.signature() returns __signature__ when set.
SmtpHandler.handle_EHLO.__signature__ = inspect.signature(  # type: ignore[attr-defined]
    SmtpHandler.handle_EHLO
)
