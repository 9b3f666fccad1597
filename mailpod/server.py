"""Running the mail pod: listeners, worker processes, hot reload.

The parent binds every listening socket once, then forks workers (one per core by default) that
each run an asyncio loop accepting on the shared sockets; the kernel spreads connections. A
worker that dies is replaced. Each worker polls its config files every second and swaps in a new
snapshot without touching established connections. With MAILPOD_CONFIG_SECRET set, each worker
also watches its config Secrets through the API (mailpod.kubesource) and, once that delivers,
follows the API instead of the files, which the kubelet refreshes up to a minute late. Each
worker watches on its own rather than the parent distributing: the parent is a bare fork
supervisor without an event loop, the swap stays a plain assignment in the worker's loop with no
IPC hop, and a replaced worker resyncs by itself; the price, one idle watch per config Secret per
worker, is small for the API server.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import gc
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mailpod import dkim, metrics
from mailpod.auth import Authenticator, AuthResult
from mailpod.checks.dnsreload import ReloadingResolver
from mailpod.checks.inbound import InboundChecker
from mailpod.config import ConfigError, Listener, ListenerKind, MailpodConfig, load_config
from mailpod.imap import tlsbuffer
from mailpod.imap.backend import MailboxSession
from mailpod.imap.maildir_backend import MaildirMailboxSession
from mailpod.imap.server import MAX_LINE as IMAP_MAX_LINE
from mailpod.imap.server import ImapServer
from mailpod.kubesource import KubeConfigSource, KubeSourceSettings
from mailpod.ops import start_ops_server
from mailpod.pipeline import Envelope, LocalRecipient, Message
from mailpod.proxy import is_trusted
from mailpod.queue.service import OutboundService
from mailpod.queue.store import RemoteRecipient
from mailpod.ratelimit import BucketTable, ConnectionCounter, ConnectionTable
from mailpod.smtp.handler import MailSMTP, SmtpHandler
from mailpod.state import PodState, Snapshot
from mailpod.storage.maildir import MaildirStorage
from mailpod.storage.purge import purge_mailboxes
from mailpod.tls import TlsSecretSource

log = logging.getLogger("mailpod.server")
# aiosmtpd logs every command line at INFO (and deprecation noise at WARNING); our handler writes
# one line per transaction instead.
logging.getLogger("mail.log").setLevel(logging.ERROR)

RELOAD_INTERVAL_SECONDS = 1.0
SMTP_KINDS = (ListenerKind.SMTP, ListenerKind.SUBMISSION, ListenerKind.SUBMISSIONS)
IMAP_KINDS = (ListenerKind.IMAP, ListenerKind.IMAPS)


def bind(listener: Listener) -> socket.socket:
    family = socket.AF_INET6 if ":" in listener.address else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on accepted sockets whose listener
    # says so, and without it every multi-line reply (EHLO) waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((listener.address, listener.port))
    except OSError as error:
        sock.close()
        # The address and port come from the config; say which listener, not a traceback.
        where = f"{listener.address}:{listener.port}"
        raise ConfigError(f"{listener.kind.value} listener on {where}: {error.strerror}") from error
    sock.listen(1024)
    sock.setblocking(False)
    return sock


@dataclass
class PodRuntime:
    """The concrete SmtpRuntime and ImapRuntime of a worker."""

    state: PodState
    connections: ConnectionCounter
    """This worker's view of the pod-wide open-connection counts (`run` makes the table)."""
    buckets: BucketTable | None = None
    """The pod-wide rate-limit table the parent made before forking (None: this process's own)."""
    hostname: str = field(init=False)

    def __post_init__(self) -> None:
        config = self.state.snapshot.config
        self.hostname = config.hostname
        self.authenticator = Authenticator(config)
        # One resolver per worker (shared cache and coalescing) for the checks and the queue,
        # rebuilt when a reload changes its settings.
        self.resolver = ReloadingResolver(lambda: self.state.snapshot.config.resolver)
        self.inbound = InboundChecker(
            lambda: self.state.snapshot.config, self.resolver, buckets=self.buckets
        )
        self.storage = MaildirStorage(config.storage.mail_root, hostname=config.hostname)
        # IMAP index work (SQLite with fsync, renames) off the event loop; sized for disk
        # latency, and separate from the password-hashing threads.
        self.imap_pool = concurrent.futures.ThreadPoolExecutor(16, thread_name_prefix="imap")
        self.outbound = OutboundService(
            lambda: self.state.snapshot.config, self.imap_pool, self.resolver
        )

    async def open_mailbox(self, user: str) -> MailboxSession:
        config = self.state.snapshot.config
        return await MaildirMailboxSession.open(
            config.storage.mail_root, user, self.imap_pool, hostname=config.hostname
        )

    def snapshot(self) -> Snapshot:
        return self.state.snapshot

    def reload(self) -> bool | None:
        changed = self.state.maybe_reload()
        if changed:
            self.authenticator.update(self.state.snapshot.config)
            self.purge(self.state.snapshot.config)
        if changed is not None:
            metrics.CONFIG_RELOADS.labels(result="ok" if changed else "error").inc()
        return changed

    def use_config(self, config: MailpodConfig) -> None:
        """A new valid config from the API."""
        if self.state.use_config(config, source="api"):
            self.authenticator.update(config)
            self.purge(config)
            metrics.CONFIG_RELOADS.labels(result="ok").inc()

    def purge(self, config: MailpodConfig) -> None:
        """Remove the mail of deleted mailboxes the config lists, off the event loop."""
        if config.purged_mailboxes:
            addresses = [purged.address for purged in config.purged_mailboxes]
            self.imap_pool.submit(purge_mailboxes, config.storage.mail_root, addresses)

    def config_refused(self, _error: Exception) -> None:
        metrics.CONFIG_RELOADS.labels(result="error").inc()

    def is_trusted_proxy(self, peer_ip: str) -> bool:
        return is_trusted(peer_ip, self.state.snapshot.config.trusted_proxies)

    async def authenticate(self, username: str, password: str, client_ip: str) -> AuthResult:
        return await self.authenticator.authenticate(username, password, client_ip)

    def count_auth_failure(self, mechanism: str, reason: str) -> None:
        metrics.AUTH_FAILURES.labels(mechanism=mechanism, reason=reason).inc()

    def check_remote_accepted(self, address: str) -> None:
        # Only ever reached for authenticated senders, alias expansions and reversed SRS
        # addresses (never a relay).
        self.outbound.check_accepted(address)

    def reverse_srs(self, address: str) -> str | None:
        return self.outbound.reverse_srs(address)

    async def over_quota(self, mailbox: str, quota_bytes: int, incoming: int) -> bool:
        return await self.storage.over_quota(mailbox, quota_bytes, incoming)

    async def deliver(
        self,
        envelope: Envelope,
        local: dict[str, list[LocalRecipient]],
        message: Message,
        *,
        remote: Sequence[RemoteRecipient] = (),
        dsn: Mapping[str, str] | None = None,
    ) -> None:
        # Modifiers: DKIM-sign what authenticated users submit from a domain with keys.
        dkim.sign_submission(self.state.snapshot.dkim, envelope, message)
        # Queued copies are written (fsync'd) first and published last: a failure in between
        # leaves neither a queued message nor, after abort, local copies.
        queued = await self.outbound.prepare(envelope, message, remote, dsn) if remote else None
        try:
            if local:
                delivery = await self.storage.start(envelope)
                try:
                    for recipients in local.values():
                        for recipient in recipients:
                            await delivery.add_rcpt(recipient)
                    await delivery.deliver(message)  # body() and commit() in one pool task
                except BaseException:
                    await delivery.abort()
                    raise
            if queued is not None:
                await self.outbound.commit(queued)
        except BaseException:
            if queued is not None:
                await self.outbound.abort(queued)
            raise

    async def deliver_dsn(self, address: str, data: bytes) -> None:
        """A delivery status notification from the queue into a local sender's mailbox."""
        mailboxes = self.state.snapshot.directory.resolve(address).local
        if not mailboxes:
            raise ValueError(f"{address} is not a local mailbox")
        envelope = Envelope(
            session_id="dsn",
            client_ip="127.0.0.1",
            helo=self.hostname,
            mail_from="",
            received_at=datetime.now(UTC),
        )
        local = {address: [LocalRecipient(rcpt=address, mailbox=m) for m in mailboxes]}
        await self.deliver(envelope, local, Message(data=data))

    def count_message(
        self, kind: ListenerKind, result: str, size: int = 0, seconds: float = 0.0
    ) -> None:
        _labelled(metrics.MESSAGES, kind.value, result).inc()
        if result == "accepted":
            _labelled(metrics.RECEIVED_BYTES, kind.value).inc(size)
            _labelled(metrics.DELIVERY_SECONDS, "maildir").observe(seconds)


@functools.cache
def _labelled(metric: Any, *values: str) -> Any:
    """`metric.labels(*values)`, once: labels() costs ~2 µs a call, per message."""
    return metric.labels(*values)


def _smtp_factory(runtime: PodRuntime, listener: Listener) -> Callable[[], object]:
    handler = SmtpHandler(runtime, listener.kind)

    def make() -> object:
        config = runtime.snapshot().config
        tls = runtime.state.tls
        return MailSMTP(
            handler,
            tls_after_proxy=tls if listener.implicit_tls and listener.proxy_protocol else None,
            hostname=config.hostname,
            ident="ESMTP mailpod",
            # 465 is TLS from the first byte; STARTTLS is offered on 25 and required on 587.
            tls_context=tls if not listener.implicit_tls else None,
            require_starttls=listener.kind is ListenerKind.SUBMISSION,
            auth_require_tls=listener.kind is not ListenerKind.SUBMISSIONS,
            data_size_limit=config.limits.max_message_bytes,
            enable_SMTPUTF8=True,
            decode_data=False,
            proxy_protocol_timeout=5.0 if listener.proxy_protocol else None,
            timeout=config.limits.command_timeout_seconds,
            # Else aiosmtpd looks the loop up inside warnings.catch_warnings(), per connection.
            loop=asyncio.get_running_loop(),
        )

    return make


async def serve(
    config_paths: list[Path],
    sockets: list[socket.socket],
    connections: ConnectionCounter,
    stop: asyncio.Event | None = None,
    api: KubeSourceSettings | None = None,
    buckets: BucketTable | None = None,
) -> None:
    """One worker: serve every listener on its pre-bound socket until SIGTERM (or `stop`)."""
    # asyncio gives every TLS connection its own 256 KiB read buffer for life; one per process
    # is enough (mailpod.imap.tlsbuffer), which matters with 1,000 idle IMAP connections.
    tlsbuffer.install()
    state = PodState.load(config_paths)
    runtime = PodRuntime(state, connections, buckets)
    config = state.snapshot.config
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    servers: list[asyncio.Server] = []
    for listener, sock in zip(config.listeners, sockets, strict=True):
        if listener.kind in SMTP_KINDS:
            # Else the session starts TLS itself after the PROXY header (MailSMTP.tls_after_proxy).
            ssl_context = state.tls if listener.tls_on_accept else None
            servers.append(
                await loop.create_server(
                    _smtp_factory(runtime, listener),  # type: ignore[arg-type]
                    sock=sock,
                    ssl=ssl_context,
                    ssl_handshake_timeout=30 if ssl_context else None,
                )
            )
        elif listener.kind in IMAP_KINDS:
            imap = ImapServer(runtime, listener, state.tls, runtime.open_mailbox)
            # Else the IMAP server starts TLS itself after the PROXY header.
            implicit_tls = state.tls if listener.tls_on_accept else None
            servers.append(
                await asyncio.start_server(
                    imap.handle,
                    sock=sock,
                    ssl=implicit_tls,
                    ssl_handshake_timeout=30 if implicit_tls else None,
                    limit=IMAP_MAX_LINE,
                )
            )
        elif listener.kind is ListenerKind.HTTP:
            servers.append(await start_ops_server(sock=sock, ready=lambda: (True, "serving")))
    log.info(
        "worker serving",
        extra={
            "pid": os.getpid(),
            "listeners": [listener.kind.value for listener in config.listeners],
        },
    )

    async def reload_loop() -> None:
        while not stop.is_set():
            await asyncio.sleep(RELOAD_INTERVAL_SECONDS)
            runtime.reload()

    tasks = [asyncio.create_task(reload_loop())]
    # Every worker enqueues; the one holding the queue's lock also delivers (another takes over
    # if it dies).
    tasks.append(asyncio.create_task(runtime.outbound.run(stop, runtime.deliver_dsn)))
    if api is not None:
        # Started after the listeners: the files already serve, the API catches up.
        source = KubeConfigSource(api, runtime.use_config, runtime.config_refused)
        tasks.append(asyncio.create_task(source.run(), name="config from the API"))
        if config.tls is not None and config.tls.secret_name:
            tls_source = TlsSecretSource(api, config.tls.secret_name, state.use_tls_pair)
            tasks.append(asyncio.create_task(tls_source.run(), name="tls from the API"))
    await stop.wait()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for server in servers:
        server.close()
    # Sessions in progress get a moment to finish; a message that got no 250 is retried by the
    # client, one that got it is already durable.
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*(s.wait_closed() for s in servers)), timeout=10)


def run(config_paths: list[Path], workers: int, api: KubeSourceSettings | None = None) -> int:
    """Bind, recover, fork `workers` processes and supervise them until SIGTERM."""
    config: MailpodConfig = load_config(config_paths)
    MaildirStorage(config.storage.mail_root, hostname=config.hostname).recover()
    purge_mailboxes(config.storage.mail_root, [p.address for p in config.purged_mailboxes])
    sockets = [bind(listener) for listener in config.listeners]
    for listener, sock in zip(config.listeners, sockets, strict=True):
        host, port = sock.getsockname()[:2]
        log.info("listening", extra={"listener": listener.kind.value, "address": f"{host}:{port}"})
    # Made before any fork so every worker, replacements included, maps the same counts.
    connections = ConnectionTable(max(1, workers))
    if workers <= 1:
        asyncio.run(serve(config_paths, sockets, connections.worker(0), api=api))
        return 0
    # The same for the rate limits.
    buckets = BucketTable()
    return _supervise(config_paths, sockets, workers, api, buckets, connections)


def _supervise(
    config_paths: list[Path],
    sockets: list[socket.socket],
    workers: int,
    api: KubeSourceSettings | None,
    buckets: BucketTable,
    connections: ConnectionTable,
) -> int:
    children: dict[int, int] = {}  # pid -> worker index
    stopping = False

    def spawn(index: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            code = 0
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                asyncio.run(
                    serve(
                        config_paths,
                        sockets,
                        connections.worker(index),
                        api=api,
                        buckets=buckets,
                    )
                )
            except BaseException:
                log.exception("worker crashed")
                code = 1
            finally:
                os._exit(code)
        children[pid] = index

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # What the parent made (modules above all) stays shared with the workers: without this, a
    # worker's garbage collections write to every such object and so copy its page.
    gc.freeze()
    for index in range(workers):
        spawn(index)
    last_restart = 0.0
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        index = children.pop(pid, -1)
        if index < 0 or stopping:
            continue
        log.error("worker exited, replacing it", extra={"pid": pid, "status": status})
        connections.clear_worker(index)  # its connections died with it
        # Crash loops must not spin the CPU.
        time.sleep(max(0.0, 1.0 - (time.monotonic() - last_restart)))
        last_restart = time.monotonic()
        spawn(index)
    return 0
