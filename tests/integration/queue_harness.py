"""A queue runner delivering to test peers, as the outbound TLS and DANE suites drive it."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from mailpod.config import OutboundConfig
from mailpod.dns import Resolver
from mailpod.outbound.deliver import Connector
from mailpod.queue.scheduler import QueueRunner
from mailpod.queue.store import QueuedMessage, QueuedRecipient, QueueStore, RcptStatus, new_id

HOSTNAME = "mail.example.com"


@dataclass
class Runner:
    store: QueueStore
    runner: QueueRunner
    connector: Connector

    def enqueue(self, *recipients: str, subject: str = "hello") -> str:
        message = QueuedMessage(
            new_id(), "alice@example.com", time.time(), [QueuedRecipient(r) for r in recipients]
        )
        self.store.enqueue(message, [f"Subject: {subject}\r\n\r\nhello\r\n".encode()])
        self.runner.wake()
        return message.id

    def status(self, queue_id: str) -> RcptStatus | None:
        """The first recipient's status; None once the message has left the queue."""
        message = self.store.load(queue_id)
        return None if message is None else message.recipients[0].status

    def outcomes(self, domain: str) -> list[tuple[str, str]]:
        """The TLS outcomes (policy, result) recorded for connections to `domain`'s MXs."""
        return [(o.policy, o.result) for o in self.connector.outcomes if o.domain == domain]

    async def settle(self, seconds: float = 20.0) -> None:
        assert await self.runner.drain(seconds), "queue did not settle"


@contextlib.asynccontextmanager
async def running_queue(
    config: OutboundConfig, resolver: Resolver, directory: Path
) -> AsyncIterator[Runner]:
    """The real connector and scheduler over a queue in `directory`, until the block ends."""
    connector = Connector(config, resolver, HOSTNAME)
    store = QueueStore(directory)
    runner = QueueRunner(store, connector, lambda: config, hostname=HOSTNAME)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:
        yield Runner(store, runner, connector)
    finally:
        stop.set()
        await task
