"""The queue's scheduler: picks due recipients, groups them by destination, delivers over reused
connections within per-destination limits, journals every outcome, retries with back-off and
jitter until the lifetime ends, and sends DSNs to local senders.

One process of the pod runs it (the holder of the queue's runner lock). Every final outcome is
fsync'd to the message's journal (or, for a message with nothing left to do, its removal is
fsync'd) before the next transaction on that connection starts, so a crash at any point
re-sends at most the transaction that was in flight (at-least-once), never to a recipient whose
250 was recorded.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import heapq
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol, TypeVar

from mailpod.config import OutboundConfig
from mailpod.metrics import QUEUE_ATTEMPTS, QUEUE_DSNS, QUEUE_MESSAGES, QUEUE_OLDEST, AttemptResult
from mailpod.outbound.deliver import ConnectFailed, Route, route_for
from mailpod.outbound.smtp import Reply, SmtpClient, SmtpClientError, xtext
from mailpod.queue.dsn import build_dsn
from mailpod.queue.store import Notify, QueuedMessage, QueuedRecipient, QueueStore, RcptStatus

log = logging.getLogger("mailpod.queue")

_T = TypeVar("_T")

IDLE_POLL_SECONDS = 1.0
MEASURE_SECONDS = 1.0
RESCAN_SECONDS = 30.0


class Opener(Protocol):
    async def open(self, route: Route) -> SmtpClient: ...


# What leaves: (envelope sender, message bytes) for a queued message (SRS, DKIM signing).
Outgoing = Callable[[QueuedMessage, bytes], Awaitable[tuple[str, bytes]]]
# Delivers a DSN into a local mailbox.
LocalDeliver = Callable[[str, bytes], Awaitable[None]]


async def _as_is(message: QueuedMessage, data: bytes) -> tuple[str, bytes]:
    return message.sender, data


@dataclass
class Job:
    message_id: str
    indexes: list[int]


@dataclass
class Destination:
    route: Route
    jobs: deque[Job] = field(default_factory=deque)
    active: int = 0
    next_send: float = 0.0


def rcpt_params(recipient: QueuedRecipient) -> str:
    params = []
    if recipient.notify:
        params.append("NOTIFY=" + ",".join(recipient.notify))
    if recipient.orcpt:
        params.append(f"ORCPT=rfc822;{xtext(recipient.orcpt)}")
    return " ".join(params)


class QueueRunner:
    def __init__(
        self,
        store: QueueStore,
        opener: Opener,
        config: Callable[[], OutboundConfig],
        *,
        hostname: str,
        local_deliver: LocalDeliver | None = None,
        outgoing: Outgoing = _as_is,
        clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
        io_pool: concurrent.futures.Executor | None = None,
    ) -> None:
        self.store = store
        self.opener = opener
        self.config = config
        self.hostname = hostname
        self.local_deliver = local_deliver
        self.outgoing = outgoing
        self.clock = clock
        self.rng = rng
        self.io_pool = io_pool or concurrent.futures.ThreadPoolExecutor(
            8, thread_name_prefix="queue"
        )
        self.messages: dict[str, QueuedMessage] = {}
        self.in_flight: dict[str, set[int]] = {}
        self.destinations: dict[str, Destination] = {}
        self.active = 0
        self._heap: list[tuple[float, str]] = []
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._scanning = True  # between taking markers and dispatching what they named
        self._measured = float("-inf")
        self.delivered = 0
        self.failed = 0
        self.deferred = 0

    # --- lifecycle ---------------------------------------------------------------------------

    def wake(self) -> None:
        self._wake.set()

    async def _io(self, work: Callable[[], _T]) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self.io_pool, work)

    async def run(self, stop: asyncio.Event) -> None:
        await self._io(self.store.ensure)
        await self._io(self.store.recover)
        await self._io(lambda: self.store.take_markers(self.store.new))
        await self._load(await self._io(self.store.ids))
        for result in AttemptResult:  # every series from the first scrape, for rate()
            QUEUE_ATTEMPTS.labels(result=result)
        last_scan = self.clock()
        try:
            while not stop.is_set():
                self._measure()
                self._scanning = True
                new = await self._io(lambda: self.store.take_markers(self.store.new))
                if self.clock() - last_scan > RESCAN_SECONDS:
                    new = await self._io(self.store.ids)
                    last_scan = self.clock()
                await self._load([i for i in new if i not in self.messages])
                for queue_id in await self._io(lambda: self.store.take_markers(self.store.control)):
                    await self._control(queue_id)
                self._dispatch()
                self._scanning = False
                self._wake.clear()
                timeout = IDLE_POLL_SECONDS
                if self._heap:
                    timeout = min(timeout, max(0.0, self._heap[0][0] - self.clock()))
                # New mail in this process wakes us at once; other workers' within a poll.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), max(timeout, 0.01))
        finally:
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            QUEUE_MESSAGES.set(0)  # another worker takes the queue over and reports it
            QUEUE_OLDEST.set(0)

    def _measure(self) -> None:
        """The queue gauges, at most once a second (a scheduling round can come per enqueued
        message, and the oldest message is a pass over the queue): fresher than any scrape."""
        now = time.monotonic()
        if now - self._measured < MEASURE_SECONDS:
            return
        self._measured = now
        QUEUE_MESSAGES.set(len(self.messages))
        QUEUE_OLDEST.set(min((m.created for m in self.messages.values()), default=0))

    async def drain(self, seconds: float) -> bool:
        """Wait until nothing is due or in flight (tests and benchmarks)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            due = any(t <= self.clock() for t, _ in self._heap)
            busy = self._scanning or self._tasks or any(d.jobs for d in self.destinations.values())
            if not busy and not due and not self.store.markers_pending():
                return True
            await asyncio.sleep(0.02)
        return False

    async def _load(self, ids: list[str]) -> None:
        for queue_id in ids:
            message = await self._io(functools.partial(self.store.load, queue_id))
            if message is None:
                continue
            self.messages[queue_id] = message
            if message.done:
                await self._finish(message)
            else:
                self._schedule(message)

    async def _control(self, queue_id: str) -> None:
        fresh = await self._io(lambda: self.store.load(queue_id))
        message = self.messages.get(queue_id)
        if fresh is None:
            return
        if message is None:
            self.messages[queue_id] = message = fresh
        if fresh.dropped:
            message.dropped = True
            log.info("queue drop", extra={"queue_id": queue_id})
            if not self.in_flight.get(queue_id):
                await self._finish(message)
            return
        for mine, theirs in zip(message.recipients, fresh.recipients, strict=True):
            if not mine.status.final:
                mine.next_attempt = theirs.next_attempt
        self._schedule(message)

    def _schedule(self, message: QueuedMessage) -> None:
        times = [message.recipients[i].next_attempt for i in message.pending]
        if times:
            heapq.heappush(self._heap, (min(times), message.id))

    # --- dispatch ------------------------------------------------------------------------------

    def _dispatch(self) -> None:
        now = self.clock()
        config = self.config()
        while self._heap and self._heap[0][0] <= now:
            _, queue_id = heapq.heappop(self._heap)
            message = self.messages.get(queue_id)
            if message is None or message.done:
                continue
            busy = self.in_flight.get(queue_id, set())
            groups: dict[str, tuple[Route, list[int]]] = {}
            for index in message.pending:
                recipient = message.recipients[index]
                if index in busy or recipient.next_attempt > now:
                    continue
                route = route_for(config, recipient.address.rpartition("@")[2])
                groups.setdefault(route.key, (route, []))[1].append(index)
            for key, (route, indexes) in groups.items():
                destination = self.destinations.get(key)
                if destination is None:
                    destination = self.destinations[key] = Destination(route)
                destination.jobs.append(Job(queue_id, indexes))
                self.in_flight.setdefault(queue_id, set()).update(indexes)
        for destination in self.destinations.values():
            self._spawn(destination, config)

    def _spawn(self, destination: Destination, config: OutboundConfig) -> None:
        while (
            destination.jobs
            and destination.active < config.max_connections_per_destination
            and destination.active < len(destination.jobs)
            and self.active < config.max_deliveries
        ):
            destination.active += 1
            self.active += 1
            task = asyncio.create_task(self._worker(destination))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _worker(self, destination: Destination) -> None:
        config = self.config()
        client: SmtpClient | None = None
        sent = 0
        try:
            while destination.jobs:
                if config.max_messages_per_second_per_destination > 0:
                    interval = 1.0 / config.max_messages_per_second_per_destination
                    now = time.monotonic()
                    wait = destination.next_send - now
                    destination.next_send = max(now, destination.next_send) + interval
                    if wait > 0:
                        await asyncio.sleep(wait)
                        if not destination.jobs:
                            break
                job = destination.jobs.popleft()
                if client is None:
                    try:
                        client = await self.opener.open(destination.route)
                    except ConnectFailed as error:
                        # Every waiting job shares the destination's fate this time round.
                        jobs = [job, *destination.jobs]
                        destination.jobs.clear()
                        for each in jobs:
                            await self._connect_failed(each, error)
                        break
                    sent = 0
                client = await self._send(client, job)
                sent += 1
                if client is not None and sent >= config.max_messages_per_connection:
                    await client.quit()
                    client = None
        except Exception:
            log.exception("queue worker failed", extra={"destination": destination.route.key})
        finally:
            if client is not None:
                await client.quit()
            destination.active -= 1
            self.active -= 1
            if destination.jobs:
                self._spawn(destination, self.config())
            elif not destination.active:
                self.destinations.pop(destination.route.key, None)
            self.wake()

    # --- one transaction ------------------------------------------------------------------------

    async def _send(self, client: SmtpClient, job: Job) -> SmtpClient | None:
        """Deliver one job over `client`; returns the client if it can be reused."""
        message = self.messages.get(job.message_id)
        if message is None or message.dropped:
            self._release(job)
            if message is not None:
                await self._finish(message)
            return client
        recipients = [message.recipients[i] for i in job.indexes]
        try:
            data = await self._io(lambda: self.store.body(message.id))
            sender, data = await self.outgoing(message, data)
        except Exception as error:
            log.exception("queue: cannot read or prepare message", extra={"queue_id": message.id})
            await self._settle(
                message, job, [f"451 4.3.0 local problem: {error!r}"] * len(recipients)
            )
            return client
        try:
            result = await client.send(
                sender,
                [(r.address, rcpt_params(r)) for r in recipients],
                data,
                smtputf8=message.smtputf8,
                ret=message.ret,
                envid=message.envid,
            )
        except SmtpClientError as error:
            text = str(error) if error.code else f"451 4.4.2 {error}"
            await self._settle(message, job, [text] * len(recipients), client.peer)
            if error.code:
                try:
                    await client.rset()
                    return client
                except SmtpClientError:
                    pass
            client.abort()
            return None
        replies: list[str] = []
        for reply in result.replies:
            final: Reply = reply
            if reply.ok and result.data_reply is not None:
                final = result.data_reply
            replies.append(str(final))
        await self._settle(message, job, replies, client.peer)
        return client

    async def _connect_failed(self, job: Job, error: ConnectFailed) -> None:
        message = self.messages.get(job.message_id)
        if message is None:
            return
        if error.permanent:
            code = "556 5.1.10" if "null MX" in str(error) else "550 5.1.2"
            text = f"{code} {error}"
        else:
            text = f"{error.code or 451} 4.4.1 {error}"
        await self._settle(message, job, [text] * len(job.indexes))

    async def _settle(
        self, message: QueuedMessage, job: Job, replies: list[str], remote_mta: str = ""
    ) -> None:
        now = self.clock()
        config = self.config()
        durable = False
        expires = message.created + config.lifetime_seconds
        delayed: list[QueuedRecipient] = []
        for index, text in zip(job.indexes, replies, strict=True):
            recipient = message.recipients[index]
            recipient.reply = text
            recipient.remote_mta = remote_mta
            code = int(text[:3]) if text[:3].isdigit() else 451
            if 200 <= code < 300:
                recipient.status = RcptStatus.DELIVERED
                self.delivered += 1
                durable = True
                result = AttemptResult.DELIVERED
            elif 500 <= code < 600:
                recipient.status = RcptStatus.FAILED
                self.failed += 1
                durable = True
                result = AttemptResult.FAILED
            else:
                recipient.attempts += 1
                if now >= expires:
                    recipient.status = RcptStatus.FAILED
                    recipient.reply = f"{code} 4.4.7 delivery time expired; last reply: {text}"
                    self.failed += 1
                    durable = True
                    result = AttemptResult.EXPIRED
                else:
                    result = AttemptResult.DEFERRED
                    recipient.status = RcptStatus.DEFERRED
                    delay = min(
                        config.retry_initial_seconds * 2 ** (recipient.attempts - 1),
                        config.retry_max_seconds,
                    )
                    delay *= 0.75 + 0.5 * self.rng()  # jitter: retries of a burst spread out
                    recipient.next_attempt = min(now + delay, expires)
                    self.deferred += 1
                    if self._warn_of_delay(message, recipient, now, config.delay_warning_seconds):
                        recipient.delay_notified = True
                        durable = True  # one warning, even across a restart
                        delayed.append(recipient)
            QUEUE_ATTEMPTS.labels(result=result).inc()
            log.info(
                "delivery",
                extra={
                    "queue_id": message.id,
                    "recipient": recipient.address,
                    "result": recipient.status.value,
                    "reply": text[:300],
                    "attempts": recipient.attempts,
                },
            )
        others = self.in_flight.get(message.id, set()).difference(job.indexes)
        if message.done and not others and not self._notices(message):
            # Nothing left to send and no DSN to write: the durable removal is the record (one
            # directory fsync instead of a journal append + fsync, then the removal).
            await self._io(lambda: self.store.retire(message.id))
            self._release(job)
            self.messages.pop(message.id, None)
            return
        # The outcome is on disk before anything else happens on this connection.
        await self._io(lambda: self.store.record_many(message, job.indexes, durable))
        self._release(job)
        if delayed:
            await self._send_dsn(message, delayed, retry_until=datetime.fromtimestamp(expires, UTC))
        if message.done:
            await self._finish(message)
        else:
            self._schedule(message)

    def _release(self, job: Job) -> None:
        busy = self.in_flight.get(job.message_id)
        if busy is not None:
            busy.difference_update(job.indexes)
            if not busy:
                del self.in_flight[job.message_id]

    # --- the end of a message -------------------------------------------------------------------

    def _reports_to_sender(self, message: QueuedMessage) -> bool:
        """Whether DSNs about `message` go anywhere: only to a local sender, never for a dropped
        message, and only with a local mailbox to put them in."""
        return not message.dropped and bool(message.bounce_to) and self.local_deliver is not None

    def _notices(self, message: QueuedMessage) -> list[QueuedRecipient]:
        """The recipients a DSN to the (local) sender must report now."""
        if not self._reports_to_sender(message):
            return []
        return [
            r
            for r in message.recipients
            if (r.status is RcptStatus.FAILED and r.wants(Notify.FAILURE))
            or (r.status is RcptStatus.DELIVERED and r.wants(Notify.SUCCESS))
        ]

    def _warn_of_delay(
        self, message: QueuedMessage, recipient: QueuedRecipient, now: float, after: float
    ) -> bool:
        """Whether this deferral is the one that tells the sender the message is late."""
        return (
            after > 0
            and now - message.created >= after
            and not recipient.delay_notified
            and recipient.wants(Notify.DELAY)
            and self._reports_to_sender(message)
        )

    async def _finish(self, message: QueuedMessage) -> None:
        if self.in_flight.get(message.id):
            return  # the last job in flight finishes it
        if message.id not in self.messages:
            return
        del self.messages[message.id]
        notices = self._notices(message)
        if notices:
            await self._send_dsn(message, notices)
        await self._io(lambda: self.store.remove(message.id))

    async def _send_dsn(
        self,
        message: QueuedMessage,
        recipients: list[QueuedRecipient],
        retry_until: datetime | None = None,
    ) -> None:
        """Put a DSN about `recipients` in the local sender's mailbox; a failure is logged (the
        message's own fate does not depend on it)."""
        if self.local_deliver is None:  # callers checked `_reports_to_sender`
            return
        try:
            original = await self._io(lambda: self.store.body(message.id))
            dsn = build_dsn(message, original, recipients, self.hostname, retry_until=retry_until)
            await self.local_deliver(message.bounce_to, dsn)
            QUEUE_DSNS.inc()
            log.info(
                "dsn sent",
                extra={
                    "queue_id": message.id,
                    "recipient": message.bounce_to,
                    "action": "delayed" if retry_until else "final",
                },
            )
        except Exception:
            log.exception("queue: DSN not delivered", extra={"queue_id": message.id})
