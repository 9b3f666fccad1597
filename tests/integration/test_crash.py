"""kill -9 the whole mail pod during a stream of deliveries: every message that got a 250 is
stored exactly once and intact, and no half-written file is visible."""

from __future__ import annotations

import random
import signal
import smtplib
import threading
import time
from pathlib import Path

import pytest

from tests.integration.mailpod_harness import MailpodProcess

pytestmark = pytest.mark.integration

ROUNDS = 3
SENDERS = 8


def _stream(pod: MailpodProcess, accepted: list[str], stop: threading.Event, sender: int) -> None:
    n = 0
    while not stop.is_set():
        try:
            with smtplib.SMTP("127.0.0.1", pod.ports["smtp"], timeout=5) as client:
                while not stop.is_set():
                    n += 1
                    msg_id = f"s{sender}-n{n}-{time.monotonic_ns()}"
                    body = (
                        f"Subject: {msg_id}\r\n\r\n"
                        + ("payload " * 12 + "\r\n") * 100
                        + f"END {msg_id}\r\n"
                    )
                    refused = client.sendmail(
                        "c@remote.test", ["alice@example.com", "team@example.com"], body.encode()
                    )
                    if not refused:
                        accepted.append(msg_id)  # only after the 250
        except (OSError, smtplib.SMTPException):
            time.sleep(0.01)


def test_kill_9_loses_no_accepted_message(tmp_path: Path) -> None:
    pod = MailpodProcess(tmp_path)
    config = pod.config()
    config["mailboxes"][1]["quota_bytes"] = 0  # bob must not fill up mid-test
    pod.write_config(config)
    accepted: list[str] = []
    for _ in range(ROUNDS):
        pod.start()
        stop = threading.Event()
        threads = [
            threading.Thread(target=_stream, args=(pod, accepted, stop, i)) for i in range(SENDERS)
        ]
        for thread in threads:
            thread.start()
        time.sleep(random.uniform(0.8, 2.0))
        pod.stop(signal.SIGKILL)  # parent and workers, mid-transaction
        stop.set()
        for thread in threads:
            thread.join()
    pod.start()  # recovery runs at start-up
    try:
        for mailbox in ("alice@example.com", "bob@example.com"):
            stored = pod.messages(mailbox)
            ids = [m.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0].decode() for m in stored]
            for message, msg_id in zip(stored, ids, strict=True):
                assert message.endswith(f"END {msg_id}\r\n".encode()), f"truncated {msg_id}"
            counts = {msg_id: ids.count(msg_id) for msg_id in set(ids)}
            missing = [msg_id for msg_id in accepted if msg_id not in counts]
            assert not missing, f"{len(missing)} accepted messages lost in {mailbox}"
            # alice gets one copy even though she is named twice (directly and via team@).
            assert all(count == 1 for count in counts.values())
            assert not list((pod.maildir(mailbox) / "tmp").iterdir())
        print(f"\n{len(accepted)} accepted messages over {ROUNDS} kill -9 rounds, none lost")
        assert len(accepted) > 50
    finally:
        pod.stop()
