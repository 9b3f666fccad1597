"""The outbound queue delivering to real peers: Postfix's smtp-sink as the remote MXs (scripted
4xx/5xx, disconnects), PowerDNS serving MX/A/TXT, and bounces into real Maildirs.

Every test domain's MX points at its own loopback address (127.0.0.N) where its smtp-sink
listens; all of them share one port, which OutboundConfig.smtp_port points the client at.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mailpod.config import OutboundConfig, ResolverConfig
from mailpod.dns import CachingResolver
from mailpod.metrics import REGISTRY, AttemptResult
from mailpod.outbound.deliver import Connector, Route
from mailpod.outbound.smtp import SmtpClient
from mailpod.queue.scheduler import QueueRunner
from mailpod.queue.store import QueuedMessage, QueuedRecipient, QueueStore, RcptStatus, new_id
from tests.harness.ports import free_port
from tests.harness.powerdns import PowerDns

pytestmark = pytest.mark.integration

ZONE = "outbound.test"
SINK_PORT = free_port()


@dataclass
class Dump:
    mail_from: str
    rcpts: list[str]
    data: bytes


_ENVELOPE_LINES = (b"X-Client-", b"X-Helo-Args:", b"X-Mail-Args:", b"X-Rcpt-Args:")


@dataclass
class SmtpSink:
    """Postfix's smtp-sink on `host`:`port`, dumping each transaction to a file."""

    host: str
    port: int = SINK_PORT
    options: tuple[str, ...] = ()
    dump: bool = True
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="sink-")))
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> SmtpSink:
        # smtp-sink drops root privileges (-u): the dump directory must be writable by nobody.
        os.chmod(self.workdir, 0o777)
        argv = [
            "smtp-sink",
            *(["-d", f"{self.workdir}/m%H%M%S."] if self.dump else []),
            *self.options,
        ]
        if os.geteuid() == 0:
            argv += ["-u", "nobody"]
        host = f"[{self.host}]" if ":" in self.host else self.host
        argv += [f"{host}:{self.port}", "256"]
        self.proc = subprocess.Popen(argv, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), 1):
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"smtp-sink exited: {self.proc.stderr.read()!r}")  # type: ignore[union-attr]
            time.sleep(0.02)
        raise RuntimeError("smtp-sink did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def dumps(self) -> list[Dump]:
        found = []
        for path in sorted(self.workdir.iterdir()):
            lines = path.read_bytes().replace(b"\r\n", b"\n").split(b"\n")
            mail_from, rcpts = "", []
            # The envelope comes first as X- lines (X-Client-Addr, X-Mail-Args, X-Rcpt-Args...).
            while lines and lines[0].startswith(_ENVELOPE_LINES):
                line = lines.pop(0).decode()
                if line.startswith("X-Mail-Args: "):
                    mail_from = line[13:].split(" ")[0].strip("<>")
                elif line.startswith("X-Rcpt-Args: "):
                    rcpts.append(line[13:].split(" ")[0].strip("<>"))
            found.append(Dump(mail_from, rcpts, b"\n".join(lines)))
        return found

    def __enter__(self) -> SmtpSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


def sink_domains(count: int) -> list[tuple[str, str]]:
    """(domain, loopback address) pairs for the module's zone."""
    return [(f"d{i}.{ZONE}", f"127.0.0.{10 + i}") for i in range(count)]


DOMAINS = dict(sink_domains(12))
OK, SOFT, HARD, DROP, SLOW, PREF, IMPLICIT, NULLMX, V6 = (f"d{i}.{ZONE}" for i in range(9))
DOMAINS[V6] = "::1"


@pytest.fixture(scope="module")
def zone(powerdns: PowerDns) -> PowerDns:
    rrsets: list[tuple[str, str, int, list[str]]] = []
    for domain, address in DOMAINS.items():
        if domain in (IMPLICIT, NULLMX, PREF, V6):
            continue
        rrsets.append((domain, "MX", 60, [f"10 mx.{domain}."]))
        rrsets.append((f"mx.{domain}", "A", 60, [address]))
    # PREF: the preferred MX refuses connections (nothing listens there), the backup works.
    rrsets.append((PREF, "MX", 60, [f"10 mx1.{PREF}.", f"20 mx2.{PREF}."]))
    rrsets.append((f"mx1.{PREF}", "A", 60, ["127.0.0.99"]))
    rrsets.append((f"mx2.{PREF}", "A", 60, [DOMAINS[PREF]]))
    rrsets.append((IMPLICIT, "A", 60, [DOMAINS[IMPLICIT]]))  # no MX: the implicit MX
    rrsets.append((NULLMX, "MX", 60, ["0 ."]))
    rrsets.append((V6, "MX", 60, [f"10 mx.{V6}."]))
    rrsets.append((f"mx.{V6}", "AAAA", 60, ["::1"]))  # IPv6 only
    powerdns.create_zone(ZONE, rrsets)
    return powerdns


def outbound_config(**changes: object) -> OutboundConfig:
    settings: dict[str, object] = {
        "smtp_port": SINK_PORT,
        "retry_initial_seconds": 60.0,
        "connect_timeout_seconds": 3.0,
        "command_timeout_seconds": 5.0,
    }
    settings.update(changes)
    return OutboundConfig.model_validate(settings)


class CountingConnector(Connector):
    """The real connector, counting the sessions it opens (connection reuse)."""

    opened = 0

    async def open(self, route: Route) -> SmtpClient:
        client = await super().open(route)
        self.opened += 1
        return client


@dataclass
class Harness:
    store: QueueStore
    runner: QueueRunner
    connector: CountingConnector
    bounces: list[tuple[str, bytes]]
    config: OutboundConfig

    def enqueue(
        self,
        recipients: list[str],
        *,
        sender: str = "alice@example.com",
        bounce_to: str | None = None,
        subject: str = "hello",
        notify: tuple[str, ...] = (),
        size: int = 0,
    ) -> str:
        message = QueuedMessage(
            id=new_id(),
            sender=sender,
            created=time.time(),
            recipients=[QueuedRecipient(r, r, notify) for r in recipients],
            bounce_to=sender if bounce_to is None else bounce_to,
            received_from="dns; client.example [192.0.2.7]",
        )
        body = (
            f"From: <{sender}>\r\nTo: {', '.join(recipients)}\r\nSubject: {subject}\r\n"
            f"Message-ID: <{message.id}@example.com>\r\n\r\n"
            + ("x" * 70 + "\r\n") * max(1, size // 72)
            + ".leading dot\r\n"
        ).encode()
        self.store.enqueue(message, [body])
        self.runner.wake()
        return message.id


@pytest.fixture
async def harness(zone: PowerDns, tmp_path: Path) -> AsyncIterator[Harness]:
    config = outbound_config()
    resolver = CachingResolver(ResolverConfig(nameservers=(zone.nameserver,), cache_entries=0))
    connector = CountingConnector(config, resolver, "mail.example.com")
    store = QueueStore(tmp_path / "queue")
    bounces: list[tuple[str, bytes]] = []

    async def deliver_local(address: str, data: bytes) -> None:
        bounces.append((address, data))

    holder: dict[str, OutboundConfig] = {"config": config}
    runner = QueueRunner(
        store,
        connector,
        lambda: holder["config"],
        hostname="mail.example.com",
        local_deliver=deliver_local,
    )
    harness = Harness(store, runner, connector, bounces, config)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:
        yield harness
    finally:
        stop.set()
        await task


@pytest.fixture
def sinks() -> Iterator[dict[str, SmtpSink]]:
    started: dict[str, SmtpSink] = {}
    yield started
    for sink in started.values():
        sink.__exit__()


def start_sink(sinks: dict[str, SmtpSink], domain: str, *options: str) -> SmtpSink:
    sink = SmtpSink(DOMAINS[domain], options=options).start()
    sinks[domain] = sink
    return sink


async def settle(harness: Harness, seconds: float = 15.0) -> None:
    assert await harness.runner.drain(seconds), "queue did not settle"


# --- delivery -------------------------------------------------------------------------------------


async def test_delivers_each_recipient_once_and_removes_the_message(
    harness: Harness, sinks: dict[str, SmtpSink]
) -> None:
    sink = start_sink(sinks, OK)
    queue_id = harness.enqueue([f"a@{OK}", f"b@{OK}"])
    await settle(harness)
    dumps = sink.dumps()
    assert len(dumps) == 1
    assert dumps[0].mail_from == "alice@example.com"
    assert sorted(dumps[0].rcpts) == [f"a@{OK}", f"b@{OK}"]
    assert b"Subject: hello" in dumps[0].data
    assert b"\n.leading dot" in dumps[0].data  # dot-stuffed on the wire, unstuffed by the sink
    assert harness.store.ids() == []
    assert not harness.store.path(queue_id, "msg").exists()
    assert harness.bounces == []  # NOTIFY default: no success notices


async def test_reuses_one_connection_for_messages_to_the_same_destination(
    harness: Harness, sinks: dict[str, SmtpSink]
) -> None:
    sink = start_sink(sinks, OK)
    harness.runner.config = lambda: outbound_config(max_connections_per_destination=1)
    for n in range(8):
        harness.enqueue([f"r{n}@{OK}"], subject=f"m{n}")
    await settle(harness)
    assert len(sink.dumps()) == 8
    assert harness.connector.opened == 1


async def test_a_temporary_rejection_is_retried_with_back_off_then_delivered(
    harness: Harness, sinks: dict[str, SmtpSink]
) -> None:
    start_sink(sinks, SOFT, "-r", "rcpt")  # every RCPT gets 450
    queue_id = harness.enqueue([f"x@{SOFT}"])
    await settle(harness)
    message = harness.store.load(queue_id)
    assert message is not None
    recipient = message.recipients[0]
    assert recipient.status is RcptStatus.DEFERRED
    assert recipient.attempts == 1
    assert recipient.reply.startswith("45")
    # 60 s initial back-off with ±25 % jitter.
    assert 45 <= recipient.next_attempt - time.time() <= 76
    sinks.pop(SOFT).__exit__()
    good = start_sink(sinks, SOFT)
    assert harness.store.request(queue_id, "retry")  # `mailpod queue retry`, as the CLI does
    harness.runner.wake()
    await asyncio.sleep(0.3)
    await settle(harness)
    assert [d.rcpts for d in good.dumps()] == [[f"x@{SOFT}"]]
    assert harness.store.ids() == []


async def test_a_permanent_rejection_bounces_to_the_local_sender_with_the_headers(
    harness: Harness, sinks: dict[str, SmtpSink]
) -> None:
    sink = start_sink(
        sinks, HARD, "-f", "rcpt", "-B", "550 5.1.1 No such user"
    )  # every RCPT gets 550
    harness.enqueue([f"gone@{HARD}"], subject="doomed")
    await settle(harness)
    assert sink.dumps() == []
    [(address, dsn)] = harness.bounces
    assert address == "alice@example.com"
    report = email.message_from_bytes(dsn)
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    parts = list(report.walk())
    status = next(p for p in parts if p.get_content_type() == "message/delivery-status")
    text = status.as_string()
    assert f"Final-Recipient: rfc822; gone@{HARD}" in text
    assert "Action: failed" in text
    assert "Status: 5." in text
    assert "Diagnostic-Code: smtp; 550 5.1.1 No such user" in text
    assert "Status: 5.1.1" in text
    assert "Subject: doomed" in dsn.decode()  # the original headers come back


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_metrics_count_each_outcome_and_show_what_waits(
    harness: Harness, sinks: dict[str, SmtpSink]
) -> None:
    attempts = "mailpod_queue_delivery_attempts_total"
    before = {result: _sample(attempts, result=result) for result in AttemptResult}
    dsns = _sample("mailpod_queue_dsns_total")
    start_sink(sinks, OK)
    start_sink(sinks, SOFT, "-r", "rcpt")  # 450: stays queued
    start_sink(sinks, HARD, "-f", "rcpt", "-B", "550 5.1.1 No such user")
    harness.enqueue([f"a@{OK}", f"b@{OK}"])
    harness.enqueue([f"gone@{HARD}"])
    waiting = harness.enqueue([f"x@{SOFT}"])
    await settle(harness)
    counted = {result: _sample(attempts, result=result) - before[result] for result in before}
    assert counted == {"delivered": 2, "deferred": 1, "failed": 1, "expired": 0}
    assert _sample("mailpod_queue_dsns_total") == dsns + 1  # the bounce to alice
    # The gauges follow within a second.
    queued = harness.store.load(waiting)
    assert queued is not None
    deadline = time.monotonic() + 5
    while _sample("mailpod_queue_messages") != 1 and time.monotonic() < deadline:
        harness.runner.wake()
        await asyncio.sleep(0.1)
    assert _sample("mailpod_queue_messages") == 1
    assert _sample("mailpod_queue_oldest_message_timestamp_seconds") == queued.created


async def test_no_bounce_for_an_external_sender_and_none_when_notify_never(
    harness: Harness, sinks: dict[str, SmtpSink]
) -> None:
    start_sink(sinks, HARD, "-f", "rcpt", "-B", "550 5.1.1 No such user")
    harness.enqueue([f"gone@{HARD}"], sender="someone@elsewhere.example", bounce_to="")
    harness.enqueue([f"gone@{HARD}"], notify=("NEVER",))
    await settle(harness)
    assert harness.bounces == []
    assert harness.store.ids() == []


async def test_notify_success_reports_the_delivery(
    harness: Harness, sinks: dict[str, SmtpSink]
) -> None:
    start_sink(sinks, OK)
    harness.enqueue([f"a@{OK}"], notify=("SUCCESS",))
    await settle(harness)
    [(_, dsn)] = harness.bounces
    assert b"Action: delivered" in dsn


async def test_a_disconnect_after_data_defers(harness: Harness, sinks: dict[str, SmtpSink]) -> None:
    start_sink(sinks, DROP, "-q", "data")  # hangs up on DATA
    queue_id = harness.enqueue([f"x@{DROP}"])
    await settle(harness)
    message = harness.store.load(queue_id)
    assert message is not None
    assert message.recipients[0].status is RcptStatus.DEFERRED


async def test_expiry_turns_a_deferral_into_a_bounce(
    harness: Harness, sinks: dict[str, SmtpSink]
) -> None:
    start_sink(sinks, SOFT, "-r", "rcpt")
    harness.runner.config = lambda: outbound_config(
        lifetime_seconds=1.0, retry_initial_seconds=0.3, retry_max_seconds=0.3
    )
    harness.enqueue([f"late@{SOFT}"])
    deadline = time.monotonic() + 15
    while not harness.bounces and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.1)
    [(_, dsn)] = harness.bounces
    assert b"Status: 4.4.7" in dsn
    assert b"Action: failed" in dsn


async def test_a_message_still_deferred_after_the_warning_time_tells_the_sender_once(
    harness: Harness, sinks: dict[str, SmtpSink]
) -> None:
    start_sink(sinks, SOFT, "-r", "rcpt")  # every RCPT gets 450
    harness.runner.config = lambda: outbound_config(
        delay_warning_seconds=0.5, retry_initial_seconds=0.3, retry_max_seconds=0.3
    )
    slow = harness.enqueue([f"slow@{SOFT}"], subject="slow one")
    quiet = harness.enqueue([f"quiet@{SOFT}"], notify=("FAILURE",))  # asked for no warning
    external = harness.enqueue([f"fwd@{SOFT}"], bounce_to="")  # forwarded: never backscatter

    def attempts(queue_id: str) -> int:
        message = harness.store.load(queue_id)
        return 0 if message is None else message.recipients[0].attempts

    deadline = time.monotonic() + 20
    # Several deferrals past the warning time for every message.
    while min(attempts(q) for q in (slow, quiet, external)) < 5:
        assert time.monotonic() < deadline, [attempts(q) for q in (slow, quiet, external)]
        await asyncio.sleep(0.1)
    [(address, dsn)] = harness.bounces
    assert address == "alice@example.com"
    text = dsn.decode()
    assert "Subject: Delayed Mail (still being retried)" in text
    assert f"Final-Recipient: rfc822; slow@{SOFT}" in text
    assert "Action: delayed" in text
    assert "Status: 4." in text
    assert "Will-Retry-Until: " in text
    assert "Subject: slow one" in text
    message = harness.store.load(slow)
    assert message is not None
    assert message.recipients[0].status is RcptStatus.DEFERRED  # still being retried
    assert message.recipients[0].delay_notified


async def test_falls_back_to_the_next_mx_and_to_the_implicit_mx(
    harness: Harness, sinks: dict[str, SmtpSink]
) -> None:
    backup = start_sink(sinks, PREF)
    implicit = start_sink(sinks, IMPLICIT)
    harness.enqueue([f"p@{PREF}"])
    harness.enqueue([f"i@{IMPLICIT}"])
    await settle(harness)
    assert [d.rcpts for d in backup.dumps()] == [[f"p@{PREF}"]]
    assert [d.rcpts for d in implicit.dumps()] == [[f"i@{IMPLICIT}"]]


async def test_null_mx_and_nonexistent_domains_fail_permanently(harness: Harness) -> None:
    null = harness.enqueue([f"n@{NULLMX}"])
    missing = harness.enqueue([f"n@nowhere.{ZONE}"])
    await settle(harness)
    replies = sorted(dsn.decode() for _, dsn in harness.bounces)
    assert len(replies) == 2
    assert any("Status: 5.1.10" in r for r in replies)
    assert any("Status: 5.1.2" in r for r in replies)
    assert harness.store.load(null) is None
    assert harness.store.load(missing) is None


async def test_a_restart_never_resends_to_recipients_already_delivered(
    harness: Harness, sinks: dict[str, SmtpSink], tmp_path: Path
) -> None:
    """The journal is the truth: a recipient recorded delivered is not sent again after a
    restart, the others are."""
    sink = start_sink(sinks, OK)
    queue_id = new_id()
    message = QueuedMessage(
        queue_id,
        "alice@example.com",
        time.time(),
        [QueuedRecipient(f"done@{OK}"), QueuedRecipient(f"todo@{OK}")],
    )
    store = QueueStore(tmp_path / "second")
    store.enqueue(message, [b"Subject: resume\r\n\r\nbody\r\n"])
    message.recipients[0].status = RcptStatus.DELIVERED
    store.record_many(message, [0], durable=True)
    runner = QueueRunner(store, harness.connector, lambda: harness.config, hostname="h.example")
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    assert await runner.drain(15)
    await asyncio.sleep(0.2)
    assert await runner.drain(15)
    stop.set()
    await task
    assert [d.rcpts for d in sink.dumps()] == [[f"todo@{OK}"]]


async def test_an_ipv6_only_mx(harness: Harness, sinks: dict[str, SmtpSink]) -> None:
    sink = start_sink(sinks, V6)
    harness.enqueue([f"six@{V6}"])
    await settle(harness)
    [dump] = sink.dumps()
    assert dump.rcpts == [f"six@{V6}"]


async def test_the_per_destination_rate_limit_spaces_transactions(
    harness: Harness, sinks: dict[str, SmtpSink]
) -> None:
    sink = start_sink(sinks, OK)
    harness.runner.config = lambda: outbound_config(max_messages_per_second_per_destination=10)
    started = time.monotonic()
    for n in range(6):
        harness.enqueue([f"r{n}@{OK}"])
    await settle(harness)
    assert len(sink.dumps()) == 6
    assert time.monotonic() - started >= 0.45  # 5 gaps of 0.1 s after the first
