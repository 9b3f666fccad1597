"""The outbound queue as a worker process sees it: enqueueing from SMTP sessions, and (in the
one process holding the runner lock) the scheduler with its resolver and connector."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

from mailpod.config import MailpodConfig, OutboundConfig
from mailpod.dns import CachingResolver, Resolver
from mailpod.errors import SmtpError
from mailpod.outbound.deliver import Connector
from mailpod.pipeline import Envelope, Message
from mailpod.queue.scheduler import LocalDeliver, QueueRunner
from mailpod.queue.store import (
    Prepared,
    QueuedMessage,
    QueuedRecipient,
    QueueStore,
    RemoteRecipient,
    RunnerLock,
    new_id,
)
from mailpod.srs import SrsError, SrsRewriter

log = logging.getLogger("mailpod.queue")

_T = TypeVar("_T")

LOCK_RETRY_SECONDS = 2.0

QUEUE_DISABLED = SmtpError(
    451, "4.4.3", "Remote delivery is not enabled on this server", "outbound queue disabled"
)


class OutboundService:
    def __init__(
        self,
        config: Callable[[], MailpodConfig],
        pool: concurrent.futures.Executor,
        resolver: Resolver | None = None,
    ) -> None:
        self.config = config
        self.pool = pool
        self.store = QueueStore(config().storage.queue_dir)
        self.resolver = resolver
        self.runner: QueueRunner | None = None
        self._srs: tuple[object, SrsRewriter | None] = (None, None)

    def check_accepted(self, address: str) -> None:
        if not self.config().outbound.enabled:
            raise SmtpError(
                QUEUE_DISABLED.code,
                QUEUE_DISABLED.enhanced,
                QUEUE_DISABLED.text,
                f"outbound queue disabled: {address}",
            )

    def _rewriter(self, config: MailpodConfig) -> SrsRewriter | None:
        if self._srs[0] is not config.outbound:
            try:
                self._srs = (config.outbound, SrsRewriter.from_config(config.outbound))
            except OSError as error:
                # A key Secret the kubelet has not put in place yet: forward unrewritten for
                # now (not remembered, so the next message tries again).
                log.warning("srs key not readable: %s", error.strerror)
                return None
        return self._srs[1]

    def reverse_srs(self, address: str) -> str | None:
        """Where mail to `address` goes if it is a valid SRS address of ours (a bounce of
        forwarded mail coming back); None if it is not one."""
        if not SrsRewriter.is_srs(address):
            return None
        rewriter = self._rewriter(self.config())
        if rewriter is None:
            return None
        try:
            return rewriter.reverse(address)
        except SrsError:
            return None

    def build(
        self,
        envelope: Envelope,
        remote: Sequence[RemoteRecipient],
        dsn: Mapping[str, str] | None,
    ) -> QueuedMessage:
        config = self.config()
        sender = envelope.mail_from
        sender_domain = sender.rpartition("@")[2].lower()
        local_sender = bool(sender) and sender_domain in config.domains
        if sender and not local_sender:
            # Forwarding someone else's mail: SRS so the next hop's SPF check passes.
            rewriter = self._rewriter(config)
            if rewriter is not None:
                with contextlib.suppress(SrsError):
                    sender = rewriter.forward(sender)
        dsn = dsn or {}
        return QueuedMessage(
            id=new_id(),
            sender=sender,
            created=time.time(),
            recipients=[
                QueuedRecipient(r.address, r.orcpt, tuple(sorted(n.value for n in r.notify)))
                for r in remote
            ],
            # Bounces only to our own authenticated users: never backscatter to forged senders.
            bounce_to=envelope.mail_from
            if envelope.authenticated_user is not None and local_sender
            else "",
            ret="HDRS" if dsn.get("RET") == "HDRS" else "FULL",
            envid=dsn.get("ENVID", "")[:100],
            smtputf8=envelope.smtputf8,
            received_from=f"dns; {envelope.helo[:200]} [{envelope.client_ip}]",
        )

    async def prepare(
        self,
        envelope: Envelope,
        message: Message,
        remote: Sequence[RemoteRecipient],
        dsn: Mapping[str, str] | None,
    ) -> Prepared:
        queued = self.build(envelope, remote, dsn)
        chunks = [*message.header_prefix, message.data]
        return await self._io(lambda: self.store.prepare(queued, chunks))

    async def commit(self, prepared: Prepared) -> None:
        await self._io(lambda: self.store.commit(prepared))
        if self.runner is not None:
            self.runner.wake()

    async def abort(self, prepared: Prepared) -> None:
        await self._io(lambda: self.store.abort(prepared))

    async def _io(self, work: Callable[[], _T]) -> _T:
        try:
            return await asyncio.get_running_loop().run_in_executor(self.pool, work)
        except OSError as error:
            failure = SmtpError(451, "4.3.0", "Queue write failed, try again later", str(error))
            raise failure from error

    async def run(self, stop: asyncio.Event, local_deliver: LocalDeliver) -> None:
        """Wait for the runner lock, then run the scheduler until `stop`."""
        config = self.config()
        lock = RunnerLock(config.storage.queue_dir)
        while not stop.is_set():
            try:
                acquired = lock.acquire()
            except OSError as error:
                log.warning("queue runner lock: %s", error)
                acquired = False
            if acquired:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), LOCK_RETRY_SECONDS)
        if stop.is_set():
            return
        try:
            resolver = self.resolver or CachingResolver(config.resolver)
            connector = Connector(config.outbound, resolver, config.hostname)

            def outbound() -> OutboundConfig:
                current = self.config()
                connector.update(current.outbound)
                return current.outbound

            self.runner = QueueRunner(
                self.store,
                connector,
                outbound,
                hostname=config.hostname,
                local_deliver=local_deliver,
            )
            log.info("queue runner started", extra={"queue_dir": str(self.store.root)})
            await self.runner.run(stop)
        finally:
            lock.release()
