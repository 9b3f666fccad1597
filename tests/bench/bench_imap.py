"""IMAP throughput against a real `mailpod run`: bulk FETCH/SEARCH/STORE timings on one
folder, then N concurrent clients running a mixed workload (ops/s and p99 latency).

    .venv/bin/python tests/bench/bench_imap.py [--messages 1000] [--clients 10 50]
        [--seconds 10] [--workers 2] [--dir DIR]

Point --dir at the volume you care about (fsync on tmpfs is free). Prints figures; asserts
nothing. Clients are Python imaplib threads, so at high counts the client side may be the
bottleneck: compare runs, not absolute numbers.
"""

from __future__ import annotations

import argparse
import imaplib
import random
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from tests.integration.mailpod_harness import PASSWORDS, MailpodProcess

USER = "alice@example.com"


def message(n: int) -> bytes:
    body = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 30).encode()
    return (
        (
            f"From: Sender {n} <sender{n}@remote.test>\r\nTo: {USER}\r\n"
            f"Subject: benchmark message {n}\r\nDate: Mon, 01 Jan 2024 10:00:00 +0000\r\n"
            f"Message-ID: <{n}@bench>\r\n\r\n"
        ).encode()
        + body
        + (b"needle\r\n" if n % 100 == 0 else b"\r\n")
    )


def connect(pod: MailpodProcess) -> imaplib.IMAP4_SSL:
    client = imaplib.IMAP4_SSL("127.0.0.1", pod.ports["imaps"], ssl_context=pod.client_context())
    client.login(USER, PASSWORDS[USER])
    return client


def timed(label: str, work: Callable[[], object], count: int) -> None:
    started = time.perf_counter()
    work()
    elapsed = time.perf_counter() - started
    print(f"  {label:<48} {elapsed * 1000:8.1f} ms  ({count / elapsed:9.0f} msgs/s)")


def bulk(pod: MailpodProcess, messages: int) -> None:
    client = connect(pod)
    started = time.perf_counter()
    for n in range(messages):
        client.append("INBOX", None, None, message(n))
    elapsed = time.perf_counter() - started
    print(f"APPEND {messages} messages: {elapsed:.2f} s ({messages / elapsed:.0f}/s, one client)")
    started = time.perf_counter()
    client.select("INBOX")
    print(f"SELECT of {messages} messages: {(time.perf_counter() - started) * 1000:.1f} ms")
    print(f"bulk operations on {messages} messages:")
    timed("UID FETCH 1:* (FLAGS)", lambda: client.uid("FETCH", "1:*", "(FLAGS)"), messages)
    timed(
        "FETCH 1:* (BODY.PEEK[HEADER.FIELDS (FROM SUBJECT)])",
        lambda: client.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (FROM SUBJECT DATE)])"),
        messages,
    )
    timed(
        "FETCH 1:* (ENVELOPE BODYSTRUCTURE)",
        lambda: client.fetch("1:*", "(ENVELOPE BODYSTRUCTURE)"),
        messages,
    )
    timed("FETCH 1:* (BODY.PEEK[])", lambda: client.fetch("1:*", "(BODY.PEEK[])"), messages)
    timed("SEARCH FLAGGED (index only)", lambda: client.search(None, "FLAGGED"), messages)
    timed(
        "SEARCH BODY needle (reads every message)",
        lambda: client.search(None, "BODY", "needle"),
        messages,
    )
    timed(
        "STORE 1:* +FLAGS.SILENT (\\Seen)",
        lambda: client.store("1:*", "+FLAGS.SILENT", "(\\Seen)"),
        messages,
    )
    timed(
        "STORE 1:* -FLAGS.SILENT (\\Seen)",
        lambda: client.store("1:*", "-FLAGS.SILENT", "(\\Seen)"),
        messages,
    )
    client.logout()


def mixed(pod: MailpodProcess, clients: int, seconds: float, messages: int) -> None:
    latencies: list[float] = []
    operations = 0
    errors = 0
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker(seed: int) -> None:
        nonlocal operations, errors
        rng = random.Random(seed)
        mine: list[float] = []
        failures = 0
        while time.monotonic() < stop:
            steps: list[Callable[[imaplib.IMAP4_SSL], object]] = [
                lambda c: c.select("INBOX"),
                lambda c: c.fetch(
                    f"{(k := rng.randint(1, messages - 20))}:{k + 19}",
                    "(FLAGS BODY.PEEK[HEADER.FIELDS (FROM SUBJECT)])",
                ),
                lambda c: c.fetch(str(rng.randint(1, messages)), "(BODY.PEEK[])"),
                lambda c: c.store(str(rng.randint(1, messages)), "+FLAGS", "(\\Flagged)"),
                lambda c: c.search(None, "UNSEEN", "FROM", f"sender{rng.randint(1, 999)}"),
                lambda c: c.append("Drafts", None, None, message(rng.randint(1, 999))),
            ]
            try:
                started = time.perf_counter()
                client = connect(pod)
                mine.append(time.perf_counter() - started)
                for step in steps:
                    started = time.perf_counter()
                    step(client)
                    mine.append(time.perf_counter() - started)
                started = time.perf_counter()
                client.logout()
                mine.append(time.perf_counter() - started)
            except (imaplib.IMAP4.error, OSError):
                failures += 1
        with lock:
            latencies.extend(mine)
            operations += len(mine)
            errors += failures

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99)] if latencies else 0.0
    median = statistics.median(latencies) if latencies else 0.0
    print(
        f"{clients:3d} clients: {operations / elapsed:8.0f} ops/s, p50 {median * 1000:6.1f} ms,"
        f" p99 {p99 * 1000:7.1f} ms, {errors} errors"
        " (LOGIN SELECT FETCH-headers FETCH-body STORE SEARCH APPEND LOGOUT)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-imap-", dir=args.dir))
    pod = MailpodProcess(root, workers=args.workers).start()
    try:
        bulk(pod, args.messages)
        for clients in args.clients:
            mixed(pod, clients, args.seconds, args.messages)
    finally:
        pod.stop()


if __name__ == "__main__":
    main()
