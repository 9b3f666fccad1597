"""The outbound queue inside a running `mailpod run` (2 workers): submission and alias forwarding
into the queue, delivery to smtp-sink through PowerDNS, DSNs into the sender's Maildir, the
`mailpod queue` CLI, and kill -9 in the middle of a delivery burst."""

from __future__ import annotations

import json
import os
import signal
import smtplib
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mailpod.queue.store import QueueStore, RcptStatus
from tests.conftest import REPO
from tests.harness.powerdns import PowerDns
from tests.integration.mailpod_harness import PASSWORDS, MailpodProcess
from tests.integration.test_outbound import SINK_PORT, SmtpSink

pytestmark = pytest.mark.integration

ZONE = "queuepod.test"
FAR, SOFT, BURST = f"far.{ZONE}", f"soft.{ZONE}", f"burst.{ZONE}"
ADDRESSES = {FAR: "127.0.0.60", SOFT: "127.0.0.61", BURST: "127.0.0.62"}
ALICE = "alice@example.com"


@pytest.fixture(scope="module")
def zone(powerdns: PowerDns) -> PowerDns:
    rrsets: list[tuple[str, str, int, list[str]]] = []
    for domain, address in ADDRESSES.items():
        rrsets.append((domain, "MX", 60, [f"10 mx.{domain}."]))
        rrsets.append((f"mx.{domain}", "A", 60, [address]))
    powerdns.create_zone(ZONE, rrsets)
    return powerdns


def _pod(root: Path, powerdns: PowerDns, **outbound: object) -> MailpodProcess:
    secret = root / "srs-key"
    root.mkdir(parents=True, exist_ok=True)
    secret.write_text("srs-test-key-0123456789\n")
    pod = MailpodProcess(root)
    config = pod.config()
    config["resolver"] = {"nameservers": [powerdns.nameserver], "timeout_seconds": 2.0}
    config["outbound"] = {
        "smtp_port": SINK_PORT,
        "retry_initial_seconds": 30.0,
        "connect_timeout_seconds": 2.0,
        "command_timeout_seconds": 10.0,
        "srs_domain": "example.com",
        "srs_secret_files": [str(secret)],
        **outbound,
    }
    config["aliases"].append(
        {"address": "fwd@example.com", "destinations": [f"friend@{FAR}", "bob@example.com"]}
    )
    pod.overrides = config
    pod.write_config()
    return pod


@pytest.fixture(scope="module")
def pod(zone: PowerDns, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MailpodProcess]:
    server = _pod(Path(tmp_path_factory.mktemp("queuepod")), zone).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def far() -> Iterator[SmtpSink]:
    with SmtpSink(ADDRESSES[FAR]) as sink:
        yield sink


def _submission(pod: MailpodProcess) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", pod.ports["submission"], timeout=10)
    client.starttls(context=pod.client_context())
    client.login(ALICE, PASSWORDS[ALICE])
    return client


def _wait(condition: Callable[[], object], seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def _cli(pod: MailpodProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mailpod", "queue", "--config", str(pod.config_file), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": f"{REPO / 'operator'}:{REPO}"},
        check=False,
    )


def _written(sink: SmtpSink) -> bool:
    """smtp-sink creates a dump file before it writes it: a dump counts once its envelope is in
    (it is written in one go with the data, after the end of data)."""
    dumps = sink.dumps()
    return bool(dumps) and all(d.rcpts for d in dumps)


def _queue_empty(pod: MailpodProcess) -> bool:
    return QueueStore(pod.root / "queue").ids() == []


def test_submitted_mail_for_a_remote_domain_is_queued_and_delivered(
    pod: MailpodProcess, far: SmtpSink
) -> None:
    client = _submission(pod)
    client.sendmail(
        ALICE,
        [f"friend@{FAR}", "bob@example.com"],
        b"From: Alice <alice@example.com>\r\nSubject: out\r\n\r\nhello\r\n",
    )
    client.quit()
    _wait(lambda: _written(far))
    [dump] = far.dumps()
    assert dump.mail_from == ALICE
    assert dump.rcpts == [f"friend@{FAR}"]
    assert b"Subject: out" in dump.data
    assert b"by mail.example.com (mailpod)" in dump.data  # our Received header
    assert any(b"Subject: out" in m for m in pod.messages("bob@example.com"))  # local copy too
    _wait(lambda: _queue_empty(pod))


def test_port_25_never_relays(pod: MailpodProcess) -> None:
    client = smtplib.SMTP("127.0.0.1", pod.ports["smtp"], timeout=10)
    client.ehlo("client.example")
    client.mail("someone@elsewhere.example")
    code, text = client.rcpt(f"friend@{FAR}")
    client.quit()
    assert (code, text[:5]) == (550, b"5.7.1")


def test_an_alias_forwards_outside_with_srs_and_never_bounces_to_the_external_sender(
    pod: MailpodProcess, far: SmtpSink
) -> None:
    client = smtplib.SMTP("127.0.0.1", pod.ports["smtp"], timeout=10)
    client.sendmail(
        "someone@elsewhere.example",
        ["fwd@example.com"],
        b"From: <someone@elsewhere.example>\r\nSubject: forwarded\r\n\r\nhi\r\n",
    )
    client.quit()
    _wait(lambda: _written(far))
    [dump] = far.dumps()
    assert dump.rcpts == [f"friend@{FAR}"]
    assert dump.mail_from.startswith("SRS0=")
    assert dump.mail_from.endswith("@example.com")
    assert any(b"Subject: forwarded" in m for m in pod.messages("bob@example.com"))


def test_a_bounce_to_an_srs_address_goes_back_to_the_original_sender(
    pod: MailpodProcess, far: SmtpSink
) -> None:
    origin = f"origin@{FAR}"
    client = smtplib.SMTP("127.0.0.1", pod.ports["smtp"], timeout=10)
    client.sendmail(origin, ["fwd@example.com"], b"From: <x>\r\nSubject: bounce me\r\n\r\nhi\r\n")
    client.quit()
    _wait(lambda: _written(far))
    [forwarded] = far.dumps()
    srs = forwarded.mail_from
    assert srs.startswith("SRS0=") and srs.endswith("@example.com")
    # The next hop cannot deliver it and bounces to the SRS address, as a real MTA would.
    client = smtplib.SMTP("127.0.0.1", pod.ports["smtp"], timeout=10)
    client.ehlo("mx.far.queuepod.test")
    client.mail("")
    forged = srs.replace("SRS0=", "SRS0=x", 1)  # a hash we did not make
    assert client.rcpt(forged)[0] == 550
    assert client.rcpt(srs)[0] == 250
    client.data(b"From: MAILER-DAEMON\r\nSubject: Undelivered Mail\r\n\r\nbounced\r\n")
    client.quit()
    _wait(lambda: len(far.dumps()) == 2 and _written(far))
    [bounce] = [d for d in far.dumps() if d.rcpts == [origin]]
    assert bounce.mail_from == ""  # still a bounce: no loops
    assert b"Subject: Undelivered Mail" in bounce.data


def test_notify_success_on_submission_puts_a_dsn_in_the_senders_inbox(
    pod: MailpodProcess, far: SmtpSink
) -> None:
    before = len(pod.messages(ALICE))
    client = _submission(pod)
    assert client.has_extn("dsn")
    client.sendmail(
        ALICE,
        [f"notify@{FAR}"],
        b"From: <alice@example.com>\r\nSubject: tell me\r\n\r\nx\r\n",
        mail_options=["RET=HDRS", "ENVID=track-1"],
        rcpt_options=["NOTIFY=SUCCESS,FAILURE"],
    )
    client.quit()
    _wait(lambda: len(pod.messages(ALICE)) > before)
    dsn = pod.messages(ALICE)[-1]
    assert b"multipart/report" in dsn
    assert b"Action: delivered" in dsn
    assert f"Final-Recipient: rfc822; notify@{FAR}".encode() in dsn
    assert b"Subject: tell me" in dsn


def test_queue_cli_lists_shows_retries_and_drops(pod: MailpodProcess) -> None:
    with SmtpSink(ADDRESSES[SOFT], options=("-r", "rcpt")):
        client = _submission(pod)
        client.sendmail(
            ALICE, [f"later@{SOFT}"], b"From: <alice@example.com>\r\nSubject: q\r\n\r\n"
        )
        client.quit()
        store = QueueStore(pod.root / "queue")

        def deferred() -> bool:
            messages = [store.load(i) for i in store.ids()]
            return any(
                m is not None and m.recipients[0].status is RcptStatus.DEFERRED for m in messages
            )

        _wait(deferred)
    listing = json.loads(_cli(pod, "list", "--json").stdout)
    [entry] = [e for e in listing if e["pending"]]
    shown = json.loads(_cli(pod, "show", entry["id"], "--json").stdout)
    [recipient] = shown["recipient_status"]
    assert recipient["address"] == f"later@{SOFT}"
    assert recipient["status"] == "deferred"
    assert recipient["reply"].startswith("45")
    assert "Subject: q" in shown["headers"]
    with SmtpSink(ADDRESSES[SOFT]) as good:
        assert _cli(pod, "retry", entry["id"]).returncode == 0
        _wait(lambda: _written(good))
        # The sink writes its dump before it answers 250: it stays up until the pod has the
        # answer, or the delivery would be cut short and deferred again.
        _wait(lambda: _queue_empty(pod))
    assert _cli(pod, "show", entry["id"]).returncode == 1
    # drop: a message that cannot be delivered goes away without a bounce
    client = _submission(pod)
    client.sendmail(ALICE, [f"never@{SOFT}"], b"From: <alice@example.com>\r\nSubject: d\r\n\r\n")
    client.quit()
    _wait(lambda: store.ids() and all(
        (m := store.load(i)) is not None and m.recipients[0].attempts for i in store.ids()
    ))  # fmt: skip
    before = len(pod.messages(ALICE))
    [queue_id] = store.ids()
    result = _cli(pod, "drop", queue_id)
    assert result.returncode == 0, result.stderr
    _wait(lambda: _queue_empty(pod))
    assert len(pod.messages(ALICE)) == before


def test_kill_9_during_a_delivery_burst_loses_nothing_and_repeats_no_recorded_delivery(
    zone: PowerDns, tmp_path: Path
) -> None:
    """300 messages, 2 recipients each, queued while the MX is down; the MX comes up, the burst
    starts, the pod is killed with SIGKILL mid-way and restarted. Every recipient gets every
    message; one recorded as delivered before the kill is never sent again; only transactions
    in flight at the kill (at most one per connection) may be repeated."""
    connections = 4
    pod = _pod(
        tmp_path / "pod",
        zone,
        max_connections_per_destination=connections,
        # About 3 s for the burst: without a limit it can finish (~800 msg/s) between the
        # moment the test sees it started and the kill.
        max_messages_per_second_per_destination=100.0,
        retry_initial_seconds=3600.0,
    ).start()
    count = 300
    try:
        client = _submission(pod)
        for n in range(count):
            client.sendmail(
                ALICE,
                [f"a@{BURST}", f"b@{BURST}"],
                f"From: <alice@example.com>\r\nSubject: burst {n}\r\n\r\nbody {n}\r\n".encode(),
            )
        client.quit()
        store = QueueStore(pod.root / "queue")
        _wait(lambda: len(store.ids()) == count)
        with SmtpSink(ADDRESSES[BURST]) as sink:
            assert _cli(pod, "retry", "--all").returncode == 0
            _wait(lambda: len(list(sink.workdir.iterdir())) >= 20, 30)
            assert pod.proc is not None
            os.killpg(pod.proc.pid, signal.SIGKILL)
            pod.proc.wait()
            # What the journals say was delivered before the kill.
            # A message no longer queued had every recipient recorded as delivered.
            recorded = {(f"burst {n}", f"{who}@{BURST}") for n in range(count) for who in "ab"}
            for queue_id in store.ids():
                message = store.load(queue_id)
                assert message is not None
                subject = _subject(store.body(queue_id))
                for r in message.recipients:
                    if r.status is not RcptStatus.DELIVERED:
                        recorded.discard((subject, r.address))
            left = len(store.ids())
            assert 0 < left < count, "the kill did not land mid-burst"
            pod.start()
            assert _cli(pod, "retry", "--all").returncode == 0  # deferred by the kill? now
            _wait(lambda: _queue_empty(pod), 60)
            copies: Counter[tuple[str, str]] = Counter()
            for dump in sink.dumps():
                subject = _subject(dump.data)
                for rcpt in dump.rcpts:
                    copies[(subject, rcpt)] += 1
    finally:
        pod.stop()
    expected = {(f"burst {n}", f"{who}@{BURST}") for n in range(count) for who in "ab"}
    assert set(copies) == expected  # nothing lost
    assert all(copies[key] == 1 for key in recorded)  # no recorded delivery repeated
    repeated = [key for key, n in copies.items() if n > 1]
    print(f"killed with {left}/{count} messages queued; {len(repeated)} deliveries repeated")
    assert len(repeated) <= 2 * connections, repeated  # in flight at the kill only


def _subject(data: bytes) -> str:
    for line in data.replace(b"\r\n", b"\n").split(b"\n"):
        if line.startswith(b"Subject: "):
            return line[9:].decode()
    return ""
